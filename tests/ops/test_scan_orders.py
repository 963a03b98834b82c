"""Scan orders against the official code's indices (golden) and their defining properties."""
import numpy as np
import pytest

from localmamba_jax.ops import scan_orders as so

GOLDEN_GRIDS = [(7, 7), (4, 4), (7, 9), (9, 7), (14, 14)]


@pytest.mark.parametrize("height,width", GOLDEN_GRIDS)
@pytest.mark.parametrize("direction", so.ALL_CHOICES)
def test_matches_official_indices(golden_npz, height, width, direction):
  golden = golden_npz("local_scan_indices.npz")
  order = so.scan_order(height, width, direction)
  key = f"H{height}_W{width}_{direction}"
  np.testing.assert_array_equal(order.gather, golden[key + "_scan"])
  np.testing.assert_array_equal(order.merge, golden[key + "_reverse"])


def test_golden_covers_every_direction_and_grid(golden_npz):
  keys = set(golden_npz("local_scan_indices.npz"))
  expected = {f"H{h}_W{w}_{d}_{kind}" for h, w in GOLDEN_GRIDS for d in so.ALL_CHOICES
              for kind in ("scan", "reverse")}
  assert keys == expected


def test_reference_doc_examples():
  np.testing.assert_array_equal(so.scan_order(4, 4, "w2").gather,
                                [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
  w2 = so.scan_order(7, 7, "w2")
  assert w2.length == 64 and w2.num_pad == 15
  assert list(np.nonzero(w2.gather == so.PAD)[0][:8]) == [13, 15, 29, 31, 45, 47, 50, 51]
  np.testing.assert_array_equal(so.scan_order(7, 7, "w2_flip").gather[:8],
                                [-1, -1, -1, 48, -1, -1, 47, 46])


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (5, 3), (6, 6), (10, 4), (13, 17)])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 7, 14])
@pytest.mark.parametrize("flip", [False, True])
def test_any_window_size_is_a_padded_permutation(height, width, window, flip):
  name = f"w{window}" + ("_flip" if flip else "")
  order = so.scan_order(height, width, name)
  padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
  assert order.length == padded_h * padded_w
  real = order.gather[order.gather != so.PAD]
  np.testing.assert_array_equal(np.sort(real), np.arange(height * width))
  assert order.merge_is_exact_inverse
  # windows are contiguous runs of window**2 positions covering a window x window block
  unflipped = order.gather[::-1] if flip else order.gather
  for start in range(0, order.length, window * window):
    tokens = unflipped[start:start + window * window]
    tokens = tokens[tokens != so.PAD]
    if tokens.size:
      rows, cols = tokens // width, tokens % width
      assert rows.max() - rows.min() < window and cols.max() - cols.min() < window
  # w1 is the row-major order
  if window == 1:
    np.testing.assert_array_equal(unflipped, np.arange(height * width))


@pytest.mark.parametrize("height,width", [(4, 6), (6, 4), (5, 9), (7, 7)])
@pytest.mark.parametrize("direction", ["v", "v_flip"])
def test_official_v_merge_quirk_and_exact_option(height, width, direction):
  official = so.scan_order(height, width, direction)
  exact = so.scan_order(height, width, direction, exact_inverse=True)
  np.testing.assert_array_equal(official.gather, exact.gather)
  identity = np.arange(height * width)
  np.testing.assert_array_equal(exact.gather[exact.merge], identity)
  # the official merge repeats the forward transpose: the inverse only for square grids
  assert official.merge_is_exact_inverse == (height == width)


def test_stacked_orders_pad_at_the_end():
  stacked = so.stacked_scan_orders(7, 7, ["h", "w2_flip", "v"])
  assert stacked.max_length == 64 and stacked.lengths == (49, 64, 49)
  np.testing.assert_array_equal(stacked.gather[0, :49], np.arange(49))
  assert np.all(stacked.gather[0, 49:] == so.PAD) and np.all(stacked.gather[2, 49:] == so.PAD)
  np.testing.assert_array_equal(stacked.gather[1], so.scan_order(7, 7, "w2_flip").gather)
  assert stacked.merge.shape == (3, 49)


def test_indices_are_cached_and_read_only():
  assert so.scan_order(14, 14, "w7") is so.scan_order(14, 14, "w7")
  with pytest.raises(ValueError):
    so.scan_order(14, 14, "w7").gather[0] = 3


def test_canonical_order_extends_the_official_one():
  shuffled = ["w7_flip", "v", "w14", "h_flip", "w2", "w3_flip", "h", "v_flip", "w2_flip", "w7"]
  assert sorted(shuffled, key=so.canonical_sort_key) == [
      "h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w3_flip", "w7", "w7_flip", "w14"]
  assert sorted(so.ALL_CHOICES, key=so.canonical_sort_key) == list(so.ALL_CHOICES)


@pytest.mark.parametrize("bad,fragment", [
    ("x", "Unknown scan direction 'x'"), ("w0", "window size"), ("w07", "window size"),
    ("w", "Unknown scan direction"), ("h_flip_flip", "Unknown"), ("W2", "Unknown"), (3, "string")])
def test_bad_direction_names(bad, fragment):
  with pytest.raises(ValueError, match=fragment):
    so.scan_order(4, 4, bad)


@pytest.mark.parametrize("height,width", [(0, 4), (4, -1), (2.5, 4), (True, 3)])
def test_bad_grid(height, width):
  with pytest.raises(ValueError, match="Token grid"):
    so.scan_order(height, width, "h")


@pytest.mark.parametrize("bad", [[], "h", None])
def test_bad_direction_list(bad):
  with pytest.raises(ValueError, match="directions must be a non-empty list"):
    so.stacked_scan_orders(4, 4, bad)

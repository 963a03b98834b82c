"""The multi-direction op: K gathers + one grouped scan + K merges == K separate scans.

Checked against a float64 numpy loop that scans each direction on its own (gathering
with the official indices, pads as zero tokens) and merges it back. Tolerances as in
test_selective_scan: values 2e-5, gradients 1e-4 relative to the largest reference value.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localmamba_jax.ops import gather_tokens, merge_tokens, multi_direction_selective_scan, scan_order
from tests.ops.reference_numpy import selective_scan_float64
from tests.ops.test_selective_scan import GRAD_RTOL, VALUE_RTOL, assert_close


def random_inputs(seed, batch, height, width, num_dirs, channels, state, shared_u=True):
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)
  tokens = height * width
  return dict(
      u=normal(batch, tokens, channels) if shared_u else normal(batch, tokens, num_dirs, channels),
      delta=normal(batch, tokens, num_dirs, channels, scale=0.5),
      A=-np.exp(normal(num_dirs, channels, state, scale=0.5)),
      B=normal(batch, tokens, num_dirs, state), C=normal(batch, tokens, num_dirs, state),
      D=normal(num_dirs, channels), delta_bias=normal(num_dirs, channels, scale=0.5),
      z=normal(batch, tokens, num_dirs, channels))


def loop_reference(inputs, height, width, directions, exact_inverse=False):
  outs = []
  for k, name in enumerate(directions):
    order = scan_order(height, width, name, exact_inverse)

    def take(x):
      x = np.asarray(x)
      x = x[:, :, k] if x.ndim == 4 else x
      gathered = x[:, np.maximum(order.gather, 0)]
      gathered[:, order.gather < 0] = 0.0                       # pads are zero tokens
      return gathered

    y, _ = selective_scan_float64(
        take(inputs["u"]), take(inputs["delta"]), inputs["A"][k], take(inputs["B"])[:, :, None],
        take(inputs["C"])[:, :, None], inputs["D"][k], take(inputs["z"]),
        inputs["delta_bias"][k], delta_softplus=True)
    outs.append(y[:, order.merge])
  return np.stack(outs, axis=2)


@pytest.mark.parametrize("height,width,directions", [
    (7, 7, ["h", "h_flip", "w2", "w2_flip"]),              # w2 pads inside a 7x7 grid
    (4, 6, ["v", "v_flip", "w7", "w3_flip"]),              # non-square: the official v merge
    (5, 3, ["h", "v", "w2_flip", "w7_flip", "h_flip", "v_flip", "w2", "w7"]),
])
@pytest.mark.parametrize("shared_u", [True, False])
def test_matches_separate_scans(height, width, directions, shared_u):
  inputs = random_inputs(height * width, 2, height, width, len(directions), 6, 4, shared_u)
  out = multi_direction_selective_scan(**inputs, grid_hw=(height, width), directions=directions,
                                       chunk_size=16)
  assert out.shape == (2, height * width, len(directions), 6)
  assert_close(out, loop_reference(inputs, height, width, directions), VALUE_RTOL)


def test_exact_inverse_option_differs_only_for_non_square_v():
  inputs = random_inputs(0, 1, 4, 6, 2, 4, 4)
  kwargs = dict(grid_hw=(4, 6), directions=["v", "h"])
  official = multi_direction_selective_scan(**inputs, **kwargs)
  exact = multi_direction_selective_scan(**inputs, **kwargs, exact_inverse=True)
  assert_close(exact, loop_reference(inputs, 4, 6, ["v", "h"], exact_inverse=True), VALUE_RTOL)
  assert not np.allclose(official[:, :, 0], exact[:, :, 0])
  np.testing.assert_array_equal(official[:, :, 1], exact[:, :, 1])


def test_gradients_against_float64():
  directions, (height, width) = ["h_flip", "v", "w2", "w2_flip"], (5, 5)
  inputs = random_inputs(1, 2, height, width, 4, 4, 4, shared_u=True)
  cotangent = np.random.default_rng(2).standard_normal((2, height * width, 4, 4))
  names = list(inputs)

  def grads(values, impl):
    fn = lambda *args: multi_direction_selective_scan(
        **dict(zip(names, args)), grid_hw=(height, width), directions=directions, impl=impl,
        chunk_size=8)
    out, vjp = jax.vjp(fn, *[jnp.asarray(values[k]) for k in names])
    return dict(zip(names, vjp(jnp.asarray(cotangent, out.dtype))))

  with jax.enable_x64(True):
    expected = {k: np.asarray(v) for k, v in
                grads({k: v.astype(np.float64) for k, v in inputs.items()}, "reference").items()}
  for name, grad in grads(inputs, "associative").items():
    assert_close(grad, expected[name], GRAD_RTOL, f"grad_{name}")


def test_gather_and_merge_round_trip():
  x = jnp.arange(2 * 12 * 3, dtype=jnp.float32).reshape(2, 12, 3)
  for name in ("h", "v_flip", "w2", "w5_flip"):
    order = scan_order(3, 4, name, exact_inverse=True)
    seq = gather_tokens(x, order.gather[None])
    assert seq.shape == (2, order.length, 1, 3)
    np.testing.assert_array_equal(seq[:, order.gather < 0], 0.0)
    np.testing.assert_array_equal(merge_tokens(seq, order.merge[None])[:, :, 0], x)


@pytest.mark.parametrize("change,fragment", [
    (dict(A=np.zeros((3, 4, 4))), "A must have shape"),
    (dict(delta=np.zeros((1, 16, 2, 5))), "delta must have shape"),
    (dict(B=np.zeros((1, 15, 2, 4))), "B must have shape"),
    (dict(u=np.zeros((1, 16, 3, 4))), "u must have shape"),
    (dict(D=np.zeros((4,))), "D must have shape"),
])
def test_bad_input(change, fragment):
  inputs = random_inputs(0, 1, 4, 4, 2, 4, 4)
  with pytest.raises(ValueError, match=fragment):
    multi_direction_selective_scan(**dict(inputs, **change), grid_hw=(4, 4), directions=["h", "v"])
  with pytest.raises(ValueError, match="Unknown scan direction"):
    multi_direction_selective_scan(**inputs, grid_hw=(4, 4), directions=["h", "diag"])

"""Scan orders of LocalMamba: which token each position of a scanned sequence holds.

A token grid of H x W tokens is stored row-major (token t = h * W + w), the order the
patch embedding produces. A *direction* turns it into a 1-D sequence for the selective
scan, and a *merge* brings that sequence's outputs back to row-major order.

Directions (paper Sec. 3.2, reference doc Sec. 2):
  h        row-major;                      h_flip  its reverse
  v        column-major;                   v_flip  its reverse
  wK       K x K windows, windows row-major, tokens row-major inside a window
           (the grid is zero-padded at the bottom/right to multiples of K and the pad
           tokens stay *inside* the sequence, as the official `local_scan` does);
  wK_flip  the reverse of the whole padded wK sequence (pads then lead).
The official code has only w2 and w7; any K >= 1 is accepted here.

Merge: the official `reverse` undoes every order exactly, except `v`/`v_flip`, which it
"reverses" with the forward transpose again (`(h w) -> (w h)` with h=H, w=W). That is
the inverse only when H == W; for non-square grids the official model merges those two
branches with scrambled positions. We reproduce it by default so converted checkpoints
behave identically (segmentation/detection inputs are non-square); pass
``exact_inverse=True`` for the true inverse.

All indices are numpy arrays computed once per (H, W, direction, exact_inverse).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import numpy as np

# The official candidate set, in the official order: search weights are indexed in this
# order and exported direction lists are sorted by it (reference doc Sec. 2 and Sec. 5).
ALL_CHOICES: tuple[str, ...] = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")

PAD = -1  # gather-index value of a zero pad token
_DIRECTION_RE = re.compile(r"^(h|v|w(\d+))(_flip)?$")


@dataclasses.dataclass(frozen=True)
class Direction:
  """A parsed direction name: kind 'h', 'v' or 'w' (window of size `window`), maybe flipped."""

  kind: str
  window: int
  flip: bool

  @property
  def name(self) -> str:
    base = f"w{self.window}" if self.kind == "w" else self.kind
    return base + ("_flip" if self.flip else "")


def parse_direction(name: str) -> Direction:
  """Parses 'h', 'h_flip', 'v', 'v_flip', 'wK' or 'wK_flip' (K >= 1)."""
  if not isinstance(name, str):
    raise ValueError(
        f"direction must be a string such as 'h', 'v_flip' or 'w7', got {name!r} "
        f"of type {type(name).__name__}.")
  match = _DIRECTION_RE.match(name)
  if match is None:
    raise ValueError(
        f"Unknown scan direction {name!r}. Allowed: 'h', 'h_flip', 'v', 'v_flip', 'wK' and "
        f"'wK_flip' for a window size K >= 1 (the paper uses {', '.join(ALL_CHOICES)}).")
  flip = match.group(3) is not None
  if match.group(2) is None:
    return Direction(kind=match.group(1), window=0, flip=flip)
  window = int(match.group(2))
  if window < 1 or match.group(2) != str(window):
    raise ValueError(
        f"Scan direction {name!r} has window size {match.group(2)!r}; the window size must be "
        f"an integer >= 1 written without leading zeros, e.g. 'w2' or 'w7_flip'.")
  return Direction(kind="w", window=window, flip=flip)


def canonical_sort_key(name: str) -> tuple:
  """Orders directions as ALL_CHOICES does (h, v, then windows by size; plain before flip).

  Extends the official order to any window size, so exported search results stay
  sorted the way the reference prints them.
  """
  d = parse_direction(name)
  return ({"h": 0, "v": 1, "w": 2}[d.kind], d.window, d.flip)


def _check_grid(height, width) -> tuple[int, int]:
  for arg, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"Token grid {arg} must be an integer >= 1, got {value!r}.")
  return int(height), int(width)


@dataclasses.dataclass(frozen=True, eq=False)
class ScanOrder:
  """Gather and merge indices of one direction on one token grid.

  gather: int32 [L'] -- the row-major token index at each sequence position, PAD (-1)
          for a zero pad token. L' = H*W except for padded window scans.
  merge:  int32 [H*W] -- the sequence position whose output goes to each row-major
          token (the official merge, see module docstring).
  """

  direction: str
  height: int
  width: int
  gather: np.ndarray
  merge: np.ndarray

  @property
  def length(self) -> int:
    return int(self.gather.shape[0])

  @property
  def num_pad(self) -> int:
    return int(np.sum(self.gather == PAD))

  @property
  def merge_is_exact_inverse(self) -> bool:
    return bool(np.array_equal(self.gather[self.merge], np.arange(self.height * self.width)))


def _unflipped_gather(d: Direction, height: int, width: int) -> np.ndarray:
  tokens = np.arange(height * width, dtype=np.int32).reshape(height, width)
  if d.kind == "h":
    return tokens.ravel()
  if d.kind == "v":
    return tokens.T.ravel()
  k = d.window
  padded_h, padded_w = -(-height // k) * k, -(-width // k) * k
  grid = np.full((padded_h, padded_w), PAD, dtype=np.int32)
  grid[:height, :width] = tokens
  # windows row-major (window row outermost), then tokens row-major inside each window
  return grid.reshape(padded_h // k, k, padded_w // k, k).transpose(0, 2, 1, 3).ravel()


@functools.lru_cache(maxsize=None)
def scan_order(height: int, width: int, direction: str, exact_inverse: bool = False) -> ScanOrder:
  """The gather/merge indices of `direction` on a `height` x `width` token grid (cached)."""
  height, width = _check_grid(height, width)
  d = parse_direction(direction)
  gather = _unflipped_gather(d, height, width)
  if d.flip:
    gather = gather[::-1].copy()
  length = gather.shape[0]
  position_of = np.empty(height * width, dtype=np.int32)
  real = gather != PAD
  position_of[gather[real]] = np.nonzero(real)[0]
  if d.kind == "v" and not exact_inverse:
    # The official reverse repeats the forward transpose, (h w) -> (w h) with h=H, w=W,
    # on the un-flipped sequence: out[p] = seq[T[p]] with T = arange(HW).reshape(H, W).T.
    # It is the true inverse only if H == W; kept for checkpoint parity (reference Sec. 2).
    transpose_again = np.arange(height * width, dtype=np.int32).reshape(height, width).T.ravel()
    merge = (length - 1 - transpose_again) if d.flip else transpose_again
  else:
    merge = position_of
  merge = np.ascontiguousarray(merge, dtype=np.int32)
  gather = np.ascontiguousarray(gather, dtype=np.int32)
  gather.setflags(write=False)
  merge.setflags(write=False)
  return ScanOrder(direction=d.name, height=height, width=width, gather=gather, merge=merge)


@dataclasses.dataclass(frozen=True, eq=False)
class StackedScanOrders:
  """Indices of K directions on one grid, padded at the end to the longest sequence.

  gather: int32 [K, Lmax] (PAD for interior window pads and for the trailing pads that
          equalise lengths; trailing pads come after every real token, so a causal scan's
          outputs at real positions do not see them).
  merge:  int32 [K, H*W].
  """

  directions: tuple[str, ...]
  height: int
  width: int
  gather: np.ndarray
  merge: np.ndarray
  lengths: tuple[int, ...]

  @property
  def max_length(self) -> int:
    return int(self.gather.shape[1])

  @property
  def merge_inverts_gather(self) -> bool:
    """merge_is_inverse(gather, merge): false only for the official v/v_flip merge on
    non-square grids."""
    return merge_is_inverse(self.gather, self.merge)

  def table_layout(self) -> tuple:
    """What a program built for these tables fixes statically: the table shapes and whether
    the merge inverts the gather. Direction lists with equal layouts can share one program,
    their tables passed as data (`multi_direction_selective_scan(tables=...)`)."""
    return (self.gather.shape, self.merge.shape, self.merge_inverts_gather)


def merge_is_inverse(gather: np.ndarray, merge: np.ndarray) -> bool:
  """True when every direction's merge reads back exactly the position its token was read at."""
  gather, merge = np.asarray(gather), np.asarray(merge)
  tokens = np.arange(merge.shape[1])
  return all(np.array_equal(g[m], tokens) for g, m in zip(gather, merge))


@functools.lru_cache(maxsize=None)
def _stacked(height: int, width: int, directions: tuple[str, ...],
             exact_inverse: bool) -> StackedScanOrders:
  orders = [scan_order(height, width, name, exact_inverse) for name in directions]
  max_length = max(o.length for o in orders)
  gather = np.full((len(orders), max_length), PAD, dtype=np.int32)
  for k, o in enumerate(orders):
    gather[k, :o.length] = o.gather
  merge = np.stack([o.merge for o in orders]).astype(np.int32)
  gather.setflags(write=False)
  merge.setflags(write=False)
  return StackedScanOrders(tuple(o.direction for o in orders), height, width, gather, merge,
                           tuple(o.length for o in orders))


def stacked_scan_orders(height: int, width: int, directions: Sequence[str],
                        exact_inverse: bool = False) -> StackedScanOrders:
  """Gather/merge indices for several directions at once (cached per grid and list)."""
  if isinstance(directions, str) or not isinstance(directions, Sequence) or not directions:
    raise ValueError(
        f"directions must be a non-empty list of direction names such as ['h', 'v_flip'], "
        f"got {directions!r}.")
  height, width = _check_grid(height, width)
  return _stacked(height, width, tuple(directions), bool(exact_inverse))

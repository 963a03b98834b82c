"""Position encodings of LocalVim: 2-D RoPE tables and the official resize of position tables.

RoPE is EVA-02's `VisionRotaryEmbeddingFast(dim=D/2, pt_seq_len=14, ft_seq_len=img/16)` as the
official `local_vim.py` builds it (reference doc Sec. 3.3):
  theta_i = 10000^(-2i / (D/2)) for i < D/4, positions p = arange(ft) / ft * pt;
  channels [0, D/2) rotate with the row index, [D/2, D) with the column index;
  each frequency serves an adjacent channel pair (2i, 2i+1):
    out[2i]   = x[2i] cos - x[2i+1] sin,     out[2i+1] = x[2i+1] cos + x[2i] sin.
The official model stores the tables as buffers `rope.freqs_cos/sin` [ft*ft, D]; here they are
recomputed (deterministic numpy, float32, the same operation order), and the checkpoint
converter only checks the stored ones against them.

Other token grids: the official `forward_features` resizes pos_embed *and* the RoPE tables with
mmseg's `resize` = `F.interpolate(mode='bicubic', align_corners=False)` (no antialias,
cubic coefficient A = -0.75, border-clamped taps). `jax.image.resize` uses A = -0.5 and
antialiases when downsampling, so it would not match; `bicubic_resize_matrix` reproduces
PyTorch's weights exactly and the resize is two small matrix products.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

ROPE_THETA = 10000.0
PRETRAIN_SEQ_LEN = 14  # `pt_hw_seq_len` default of the official VisionMamba
_TORCH_CUBIC_A = -0.75  # PyTorch's upsample_bicubic2d coefficient


@functools.lru_cache(maxsize=None)
def rope_tables(embed_dim: int, grid_size: int,
                pretrain_seq_len: int = PRETRAIN_SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each float32 [grid_size**2, embed_dim], row-major tokens: the official buffers."""
  if embed_dim % 4:
    raise ValueError(f"RoPE needs embed_dim divisible by 4 (two axes x channel pairs), got "
                     f"{embed_dim}; use e.g. {embed_dim + (-embed_dim) % 4} or rope=False.")
  half = embed_dim // 2
  exponents = np.arange(0, half, 2, dtype=np.float32)[:half // 2] / np.float32(half)
  inv_freq = np.float32(1.0) / (np.float32(ROPE_THETA) ** exponents)
  # torch: arange(ft) / ft * pt, true division in float32
  positions = (np.arange(grid_size, dtype=np.float32) / np.float32(grid_size)
               * np.float32(pretrain_seq_len))
  angles = np.repeat(positions[:, None] * inv_freq[None, :], 2, axis=-1)  # [ft, D/2], pairs
  rows = np.broadcast_to(angles[:, None, :], (grid_size, grid_size, half))
  cols = np.broadcast_to(angles[None, :, :], (grid_size, grid_size, half))
  table = np.concatenate([rows, cols], axis=-1).reshape(grid_size * grid_size, embed_dim)
  cos, sin = np.cos(table).astype(np.float32), np.sin(table).astype(np.float32)
  cos.setflags(write=False)
  sin.setflags(write=False)
  return cos, sin


@functools.lru_cache(maxsize=None)
def rope_tables_for_grid(embed_dim: int, table_grid: int, grid_hw: tuple[int, int],
                         pretrain_seq_len: int = PRETRAIN_SEQ_LEN):
  """The tables used on a `grid_hw` token grid: the buffers, bicubically resized if needed.

  This is what the official forward does for inputs whose token grid differs from the
  constructor's `img_size // patch_size` (detection/segmentation sizes).
  """
  cos, sin = rope_tables(embed_dim, table_grid, pretrain_seq_len)
  if tuple(grid_hw) == (table_grid, table_grid):
    return cos, sin
  # numpy, not jnp: the tables are trace-time constants (this runs inside jit)
  rows = bicubic_resize_matrix(table_grid, grid_hw[0]).astype(np.float64)
  cols = bicubic_resize_matrix(table_grid, grid_hw[1]).astype(np.float64)
  resize = lambda t: np.einsum("oh,pw,hwc->opc", rows, cols, t.reshape(
      table_grid, table_grid, -1)).reshape(grid_hw[0] * grid_hw[1], -1).astype(np.float32)
  return resize(cos), resize(sin)


def rotate_pairs(x):
  """EVA's rotate_half: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
  pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1)
  return rotated.reshape(x.shape)


def apply_rope(x, cos, sin):
  """x * cos + rotate_pairs(x) * sin, in float32 (x [batch, L, D], tables [L, D]).

  Float32 because the official tables are fp32 buffers: under autocast the product promotes
  the (bf16) hidden states to fp32 too.
  """
  x = x.astype(jnp.float32)
  return x * cos + rotate_pairs(x) * sin


@functools.lru_cache(maxsize=None)
def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1-D bicubic interpolation, align_corners=False.

  src = (dst + 0.5) * in/out - 0.5 (not clamped at 0 for cubic, as in PyTorch), taps at
  floor(src) - 1 .. floor(src) + 2 clamped to the border, Keys kernel with A = -0.75.
  """
  a = _TORCH_CUBIC_A
  scale = in_size / out_size
  weights = np.zeros((out_size, in_size), dtype=np.float64)
  for dst in range(out_size):
    src = (dst + 0.5) * scale - 0.5
    base = int(np.floor(src))
    t = src - base
    # Keys cubic convolution for the 4 taps at distances 1+t, t, 1-t, 2-t
    dist = np.array([1.0 + t, t, 1.0 - t, 2.0 - t])
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1           # |d| <= 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a       # 1 < |d| < 2
    coeffs = np.where(dist <= 1.0, near, far)
    for tap, coeff in zip(range(base - 1, base + 3), coeffs):
      weights[dst, min(max(tap, 0), in_size - 1)] += coeff
  return weights.astype(np.float32)


def resize_token_grid(tokens, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
  """Bicubic resize of [batch, Hs*Ws, C] row-major tokens to [batch, Hd*Wd, C] (PyTorch weights).

  Separable: rows then columns, the same two 1-D passes PyTorch applies (fp32 accumulation;
  it may differ from PyTorch by rounding only).
  """
  (src_h, src_w), (dst_h, dst_w) = src_hw, dst_hw
  if tokens.shape[1] != src_h * src_w:
    raise ValueError(f"resize_token_grid: {tokens.shape[1]} tokens do not form the source grid "
                     f"{src_h}x{src_w}.")
  grid = tokens.reshape(tokens.shape[0], src_h, src_w, tokens.shape[-1])
  rows = jnp.asarray(bicubic_resize_matrix(src_h, dst_h))
  cols = jnp.asarray(bicubic_resize_matrix(src_w, dst_w))
  grid = jnp.einsum("oh,bhwc->bowc", rows, grid)
  grid = jnp.einsum("pw,bowc->bopc", cols, grid)
  return grid.reshape(tokens.shape[0], dst_h * dst_w, tokens.shape[-1])

"""Pallas GPU kernel: the backward of a depthwise 2-D conv ('same' zero padding, stride 1) in one
pass over its input and output gradient.

LocalVMamba's mixer runs a depthwise k x k conv on every block (official `SS2D.conv2d`). Written
as shifted multiply-adds (ops/depthwise_conv.py) it needs no cuDNN algorithm to be autotuned
when the step compiles (14 s of LocalVMamba-T's and -S's cold compile, BENCHMARKS.md session
23), but XLA runs its weight gradient as one tree reduction that reads each input element once
per tap through the caches: 0.99 ms at stage 1 of T where cuDNN takes 0.15 ms, a train step
5.7% slower. This kernel computes all three gradients of the conv

    out[h, w] = bias + sum_{i, j} x[h + i - p_h, w + j - p_w] * k[i, j]     (per channel)

from one read of x and of g = d out, with the taps' partial sums kept in registers:

    G_ij[h, w] = g[h - (i - p_h), w - (j - p_w)]       (zero outside the grid)
    dx[h, w]   = sum_{i, j} G_ij[h, w] * k[i, j]
    dk[i, j]   = sum_{h, w} x[h, w] * G_ij[h, w]
    d bias     = sum_{h, w} g[h, w]

Each program holds c_block channels (two per thread) of one image and walks its rows; a row
goes in chunks of w_chunk positions. For a chunk it loads g's k_h rows at the w_chunk + k_w - 1
columns the chunk needs (each once) and x at the chunk's positions, then forms every tap of
every position from registers: dx is written, and the k*k + 1 sums over positions stay in each
thread's registers for the whole program, so no sum is ever reduced across threads. Each g
element is read k_h (+ a chunk's k_w - 1 halo) times through the caches and once from memory;
x once. Each program writes its partial d kernel and d bias; XLA adds them. Where the rows or
the chunk do not divide H or W (e.g. a 13 x 13 grid, from a 416^2 input), the last part runs
past the grid and is masked, so a prime grid side does not force parts of one row or position.

Why this form (BENCHMARKS.md, session 24, H200): a first version held a [W rounded up to 2^n,
c_block] tile per row and reduced the nine products across threads every row: up to 2x
cuDNN's time. One position at a time with the sums in registers is faster than cuDNN, but with
a whole row unrolled Triton took up to 33 s to compile it (W = 56), hence the chunks: this
form runs in 0.58-0.85x cuDNN's time at LocalVMamba's four stage shapes (2.5-5x its floor).
Positions off the grid are read at clipped indices and zeroed (Pallas' interpret mode, the CPU
tests, clamps a slice that starts before 0, so nothing is read there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from localmamba_jax.ops.kernels.common import largest_pow2_divisor, on_gpu, shard_over_batch

try:  # pragma: no cover - availability depends on the installed jax
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plt
  _HAVE_PALLAS_TRITON = True
except ImportError:  # pragma: no cover
  pl = plt = None
  _HAVE_PALLAS_TRITON = False

MAX_W_CHUNK = 8          # positions of a row unrolled per loop step (Triton compile time)
MAX_ROWS = 8             # rows per program (more programs; partial sums stay small)
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _default_extent(n: int, cap: int) -> int:
  """The largest divisor of n up to cap when it is at least cap / 2 (or n itself), else cap: a
  part that does not divide n leaves a last part that is partly off the grid, masked."""
  divisor = max(d for d in range(1, min(n, cap) + 1) if n % d == 0)
  return divisor if divisor == n or 2 * divisor >= cap else cap


def tiling(batch: int, height: int, width: int, channels: int, *,
           rows_per_program: int | None = None, c_block: int | None = None,
           w_chunk: int | None = None, num_warps: int | None = None) -> dict:
  """c_block (channels per program), rows_per_program, w_chunk and num_warps for an x of
  [b, H, W, C]; None = the default choice, the fastest of those timed on an H200 (BENCHMARKS.md,
  session 24; benchmarks/bench_depthwise_conv_grad.py). Rows and chunks need not divide H and
  W: the last ones are masked (a prime width would otherwise force chunks of one position)."""
  del batch
  if c_block is None:
    c_block = largest_pow2_divisor(channels, 128)
  elif c_block < 1 or c_block & (c_block - 1) or channels % c_block:
    raise ValueError(f"depthwise_conv2d_grad: c_block must be a power of two that divides the "
                     f"{channels} channels, got {c_block}.")
  if rows_per_program is None:
    rows_per_program = _default_extent(height, MAX_ROWS)
  if w_chunk is None:
    w_chunk = _default_extent(width, MAX_W_CHUNK)
  for name, value, extent in (("rows_per_program", rows_per_program, height),
                              ("w_chunk", w_chunk, width)):
    if not 1 <= value <= extent:
      raise ValueError(f"depthwise_conv2d_grad: {name} must be between 1 and {extent}, got "
                       f"{value}.")
  if num_warps is None:         # c_block / 64: two channels per thread (the fastest measured)
    num_warps = max(1, min(8, c_block // 64))
  return dict(c_block=c_block, rows_per_program=rows_per_program, w_chunk=w_chunk,
              num_warps=num_warps)


def is_supported(x_shape, kernel_shape, dtype) -> bool:
  """Whether the kernel covers this conv: rank-4 x of float32/bf16/f16, odd kernel sizes."""
  if not _HAVE_PALLAS_TRITON or len(x_shape) != 4 or len(kernel_shape) != 4:
    return False
  return (jnp.dtype(dtype) in map(jnp.dtype, _DTYPES)
          and kernel_shape[0] % 2 == 1 and kernel_shape[1] % 2 == 1)


def _grad_kernel(x_ref, g_ref, k_ref, dx_ref, dk_ref, db_ref, *, height, width, k_h, k_w,
                 c_block, rows_per_program, w_chunk):
  b, cb, part = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  p_h, p_w = (k_h - 1) // 2, (k_w - 1) // 2
  taps = [(i, j) for i in range(k_h) for j in range(k_w)]
  channels = pl.ds(cb * c_block, c_block)
  weights = [k_ref[i, j, channels].astype(jnp.float32) for i, j in taps]

  # A last row part or chunk that runs past the grid (H or W not a multiple) is masked: its
  # positions read x as zero (no weight-gradient term) and write no dx. Static: where the
  # parts divide the grid (LocalVMamba's shapes) the kernel has no masks at all.
  rows_tail, chunk_tail = height % rows_per_program != 0, width % w_chunk != 0

  def chunk(h, h_ok, q, sums):
    """Positions w0 .. w0 + w_chunk - 1 of row h: g's k_h rows at the w_chunk + k_w - 1
    columns they need, each loaded once, then every tap of every position from registers."""
    w0 = q * w_chunk
    if chunk_tail:                # the masked store's indices: int32 under jax_enable_x64 too
      w0 = w0.astype(jnp.int32)
    g = []                        # g[i][m] = g[h - (i - p_h), w0 - p_w + m], zero off the grid
    for i in range(k_h):
      row = h - (i - p_h)
      row_ok = (row >= 0) & (row < height)
      row = jnp.clip(row, 0, height - 1)
      g.append([])
      for m in range(w_chunk + k_w - 1):
        column = w0 - p_w + m
        ok = row_ok & (column >= 0) & (column < width)
        value = g_ref[b, row, jnp.clip(column, 0, width - 1), channels]
        g[i].append(jnp.where(ok, value.astype(jnp.float32), 0.0))
    sums = list(sums)
    for m in range(w_chunk):
      w, position_ok = w0 + m, h_ok
      if chunk_tail:
        position_ok = w < width if h_ok is None else h_ok & (w < width)
        w = jnp.minimum(w, width - 1)
      x = x_ref[b, h, w, channels].astype(jnp.float32)
      if position_ok is not None:
        x = jnp.where(position_ok, x, 0.0)
      dx = jnp.zeros((c_block,), jnp.float32)
      for t, (i, j) in enumerate(taps):
        tile = g[i][m + 2 * p_w - j]            # G_ij[h, w0 + m] = g[h - i + p_h, w0 + m - j + p_w]
        dx = dx + tile * weights[t]
        sums[t] = sums[t] + x * tile
      bias_term = g[p_h][m + p_w]               # g[h, w0 + m]: zero past W, masked past H
      sums[-1] = sums[-1] + (bias_term if h_ok is None else jnp.where(h_ok, bias_term, 0.0))
      if position_ok is None:
        dx_ref[b, h, w, channels] = dx.astype(dx_ref.dtype)
      else:
        plt.store(dx_ref.at[b, h, w, channels], dx.astype(dx_ref.dtype),
                  mask=jnp.broadcast_to(position_ok, (c_block,)))
    return tuple(sums)

  def row(r, sums):
    h = part * rows_per_program + r
    h_ok = None
    if rows_tail:
      h_ok = h < height
      h = jnp.minimum(h, height - 1).astype(jnp.int32)
    return jax.lax.fori_loop(0, pl.cdiv(width, w_chunk),
                             lambda q, s: chunk(h, h_ok, q, s), sums)

  zeros = tuple(jnp.zeros((c_block,), jnp.float32) for _ in range(len(taps) + 1))
  sums = jax.lax.fori_loop(0, rows_per_program, row, zeros)
  for t in range(len(taps)):
    dk_ref[b, part, t, channels] = sums[t]
  db_ref[b, part, channels] = sums[-1]


@functools.partial(jax.jit, static_argnames=("c_block", "rows_per_program", "w_chunk",
                                             "num_warps", "interpret"))
def _grad_call(x, g, kernel, *, c_block, rows_per_program, w_chunk, num_warps, interpret):
  batch, height, width, channels = x.shape
  k_h, k_w = kernel.shape[:2]
  parts = pl.cdiv(height, rows_per_program)
  body = functools.partial(_grad_kernel, height=height, width=width, k_h=k_h, k_w=k_w,
                           c_block=c_block, rows_per_program=rows_per_program, w_chunk=w_chunk)
  return pl.pallas_call(
      body,
      out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype),
                 jax.ShapeDtypeStruct((batch, parts, k_h * k_w, channels), jnp.float32),
                 jax.ShapeDtypeStruct((batch, parts, channels), jnp.float32)),
      grid=(batch, channels // c_block, parts), interpret=interpret,
      name="depthwise_conv2d_grad",
      compiler_params=plt.CompilerParams(num_warps=num_warps, num_stages=1))(x, g, kernel)


def depthwise_conv2d_grad(x, grad, kernel, *, rows_per_program: int | None = None,
                          c_block: int | None = None, w_chunk: int | None = None,
                          num_warps: int | None = None, interpret: bool | None = None):
  """The gradients of out = depthwise_conv2d(x, kernel) + bias ('same', stride 1).

  x: [b, H, W, C]; grad (d out): [b, H, W, C]; kernel: [k_h, k_w, 1, C] (odd k_h, k_w).
  Returns (dx [b, H, W, C] in x's dtype, d kernel [k_h, k_w, 1, C] float32, d bias [C]
  float32), all sums in float32. The tiling arguments default to `tiling`'s choice.
  interpret: None = interpret mode unless on a GPU.
  """
  if x.ndim != 4 or grad.shape != x.shape:
    raise ValueError(f"depthwise_conv2d_grad: x and grad must both be [batch, height, width, "
                     f"channels], got shapes {tuple(x.shape)} and {tuple(grad.shape)}.")
  if not is_supported(x.shape, kernel.shape, x.dtype) or kernel.shape[2:] != (1, x.shape[3]):
    raise ValueError(f"depthwise_conv2d_grad: x {tuple(x.shape)} {x.dtype} with kernel "
                     f"{tuple(kernel.shape)} is not covered (x of float32, bfloat16 or float16; "
                     f"kernel [k_h, k_w, 1, channels] with odd k_h, k_w); use impl='shifted' "
                     f"or 'lax'.")
  tiles = tiling(*x.shape, rows_per_program=rows_per_program, c_block=c_block,
                 w_chunk=w_chunk, num_warps=num_warps)
  interpret = not on_gpu() if interpret is None else interpret
  call = functools.partial(_grad_call, interpret=interpret, **tiles)
  taps = kernel[:, :, 0, :]                                         # [k_h, k_w, C]
  dx, dk, db = shard_over_batch(call, x, grad, taps, batched=(True, True, False))
  return dx, dk.sum(axis=(0, 1)).reshape(kernel.shape), db.sum(axis=(0, 1))

"""Pallas GPU row kernels: the row-normalised statistics of LocalVMamba's scan output, and the
residual stream's LayerNorm backward.

SCAttn's channel gate (layers/scattn.py) needs, per branch, the mean over the L tokens of
LayerNorm(y) over E: the float32 scan output y [b, L, K, E] is the largest tensor of a block
(1.2 GB per stage-1 block of LocalVMamba-T at batch 128), and XLA passed over it once for the
rows' moments and once more for the mean of the normalised rows (it cannot put a reduction over
E and the reduction over L that consumes it into one kernel), and in the backward once for the
rows' dot products with the gradient and once more to write y's gradient. Each kernel here
does one such pair in one read of y, with the row held in registers:

  * `pooled_normalized_mean(y)`: mean_L((y - mu_row) * rstd_row) -> [b, K, E] float32, with
    both moments in two passes over the registers (PyTorch's two-pass variance, not a
    one-pass shortcut). Grid (b, K, parts of L); the parts' sums are added by XLA.
  * `gated_sum_norm_grad(y, d_out, gate, d_hat)`: the gradient w.r.t. y of
    out = sum_k y_k * gate_k (SCAttn's gate and the branch sum) plus that of the pooled
    LayerNorm for a cotangent d_hat that is the same for every row of a branch:
        d_y = d_out * gate_k + rstd * (d_hat_k - mean_E(d_hat_k) - y_hat * mean_E(d_hat_k y_hat))
    Grid (b, row blocks); each program does all K branches of its rows, so d_out [b, L, E]
    is read from memory once.
  * `layer_norm_grad(x, dy, mean, rstd, scale)`: a LayerNorm's backward over the last axis
    of x [b, L, C] in one read of x and dy: dx, and per-program partial sums of d_scale and
    d_bias. Why: XLA fused the LayerNorm backwards of LocalVMamba's residual stream with the
    residual adds (and with each other, recomputing instead of writing) into Triton fusions
    of 5-9 chained row reductions, tiled across the batch: 3.1 ms for one stage-1 fusion that
    moves ~0.9 GB (a 0.2 ms floor on an H200; BENCHMARKS.md, session 19).

Rows and columns are split into power-of-two blocks that divide L and E exactly (Triton
needs power-of-two shapes; LocalVMamba's E = 192 * 2^i gives 3 column blocks of 2^(6+i)), so
there is no masking. `is_supported(E)` says whether E splits into at most MAX_COLUMN_BLOCKS.
Interpret mode (CPU tests) runs the same kernels through Pallas' interpreter. Under a device
mesh both run once per batch shard (`kernels.common.shard_over_batch`), as the scan kernels.
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

MAX_COLUMN_WIDTH = 512    # widest power-of-two column block (floats held per row block)
MAX_COLUMN_BLOCKS = 8     # E must split into at most this many equal power-of-two blocks
MAX_BLOCK_ELEMENTS = 4096  # rows x E per register block: 32 floats per thread on 4 warps
MAX_ROWS = 16
ROWS_PER_PROGRAM = 64     # rows one program of the pooled mean sums (more programs than SMs)
LN_ROWS_PER_PROGRAM = 256  # rows one program of layer_norm_grad loops over (fewer partials)
NUM_WARPS = 4
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def column_blocks(features: int) -> tuple[int, int]:
  """(width, count): E as `count` blocks of a power-of-two `width` (widest that divides E)."""
  width = largest_pow2_divisor(features, MAX_COLUMN_WIDTH)
  return width, features // width


def on_kernel_path(scan_impl: str) -> bool:
  """Whether a model with this `scan_impl` runs the GPU kernels: 'pallas_gpu' (interpret mode
  off the GPU), or 'auto' on a GPU. The row kernels follow the scan there and only there."""
  return scan_impl == "pallas_gpu" or (scan_impl == "auto" and on_gpu())


def is_supported(features: int, dtype=jnp.float32) -> bool:
  """Whether the kernels cover rows of `features` values of this dtype."""
  return (_HAVE_PALLAS_TRITON and features >= 1
          and column_blocks(features)[1] <= MAX_COLUMN_BLOCKS
          and jnp.dtype(dtype) in map(jnp.dtype, _DTYPES))


def _rows_per_block(length: int, features: int) -> int:
  return largest_pow2_divisor(length, max(1, min(MAX_ROWS, MAX_BLOCK_ELEMENTS // features)))


def _blocks_per_program(num_blocks: int, rows: int, rows_per_program: int = ROWS_PER_PROGRAM
                        ) -> int:
  cap = max(1, rows_per_program // rows)
  return max(d for d in range(1, min(cap, num_blocks) + 1) if num_blocks % d == 0)


def _check(name, y, *, ndim, features=None):
  if getattr(y, "ndim", None) != ndim:
    raise ValueError(f"{name}: expected a rank-{ndim} array, got shape "
                     f"{getattr(y, 'shape', None)}.")
  if jnp.dtype(y.dtype) not in map(jnp.dtype, _DTYPES):
    raise ValueError(f"{name}: dtype {y.dtype} is not supported; the kernels read float32, "
                     f"bfloat16 or float16 (use the XLA path, layers.norms.pooled_layer_norm).")
  if features is not None and not is_supported(features):
    raise ValueError(f"{name}: E = {features} does not split into at most {MAX_COLUMN_BLOCKS} "
                     f"power-of-two column blocks (got {column_blocks(features)[1]} of "
                     f"{column_blocks(features)[0]}); use the XLA path for such rows.")


def _row_moments(blocks, features, epsilon):
  """Mean and 1/sqrt(var + eps) of each row of a row block given as column blocks [R, w]."""
  mean = sum(x.sum(axis=1) for x in blocks) / features
  centred = [x - mean[:, None] for x in blocks]
  var = sum((c * c).sum(axis=1) for c in centred) / features
  return centred, jax.lax.rsqrt(var + epsilon)


# ----------------------------------------------------------------------------- pooled mean

def _pooled_kernel(y_ref, out_ref, *, rows, blocks_per_program, width, count, epsilon):
  b, k, part = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  features = width * count

  def body(i, sums):
    r0 = (part * blocks_per_program + i) * rows
    blocks = [y_ref[b, pl.ds(r0, rows), k, pl.ds(j * width, width)].astype(jnp.float32)
              for j in range(count)]
    centred, rstd = _row_moments(blocks, features, epsilon)
    return tuple(s + (c * rstd[:, None]).sum(axis=0) for s, c in zip(sums, centred))

  zeros = tuple(jnp.zeros((width,), jnp.float32) for _ in range(count))
  sums = jax.lax.fori_loop(0, blocks_per_program, body, zeros)
  for j in range(count):
    out_ref[b, k, part, pl.ds(j * width, width)] = sums[j]


def pooled_normalized_mean(y, epsilon: float, *, interpret: bool | None = None):
  """mean over axis 1 of (y - mean_E(y)) / sqrt(var_E(y) + epsilon), no affine.

  y: [b, L, K, E] (float32, bfloat16 or float16; read as float32). Returns [b, K, E] float32.
  interpret: None = interpret mode unless the default backend is a GPU.
  """
  _check("pooled_normalized_mean", y, ndim=4, features=y.shape[-1] if y.ndim == 4 else None)
  _, length, _, features = y.shape
  width, count = column_blocks(features)
  rows = _rows_per_block(length, features)
  per_program = _blocks_per_program(length // rows, rows)
  interpret = not on_gpu() if interpret is None else interpret
  call = functools.partial(_pooled_call, rows=rows, blocks_per_program=per_program,
                           width=width, count=count, epsilon=float(epsilon),
                           interpret=interpret)
  return shard_over_batch(call, y, batched=(True,)).sum(axis=2) / length


# Jitted with the tiling static, as the scan kernels' calls (selective_scan_gpu): the kernel is
# traced and lowered to Triton IR once per distinct shape and tiling, not once per block.
@functools.partial(jax.jit, static_argnames=("rows", "blocks_per_program", "width", "count",
                                             "epsilon", "interpret"))
def _pooled_call(y, *, rows, blocks_per_program, width, count, epsilon, interpret):
  batch, length, branches, features = y.shape
  parts = length // (rows * blocks_per_program)
  kernel = functools.partial(_pooled_kernel, rows=rows, blocks_per_program=blocks_per_program,
                             width=width, count=count, epsilon=epsilon)
  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((batch, branches, parts, features), jnp.float32),
      grid=(batch, branches, parts), interpret=interpret, name="pooled_normalized_mean",
      compiler_params=plt.CompilerParams(num_warps=NUM_WARPS, num_stages=1))(y)


# ----------------------------------------------------------------------------- gradient

def _grad_kernel(y_ref, dout_ref, gate_ref, dhat_ref, dy_ref, *, rows, width, count,
                 branches, epsilon):
  b, r0 = pl.program_id(0), pl.program_id(1) * rows
  features = width * count
  cols = [pl.ds(j * width, width) for j in range(count)]
  d_out = [dout_ref[b, pl.ds(r0, rows), c].astype(jnp.float32) for c in cols]
  for k in range(branches):
    blocks = [y_ref[b, pl.ds(r0, rows), k, c].astype(jnp.float32) for c in cols]
    centred, rstd = _row_moments(blocks, features, epsilon)
    y_hat = [c * rstd[:, None] for c in centred]
    d_hat = [dhat_ref[b, k, c] for c in cols]
    gate = [gate_ref[b, k, c].astype(jnp.float32) for c in cols]
    d_hat_mean = sum(d.sum() for d in d_hat) / features
    row_dot = sum((yh * d[None, :]).sum(axis=1) for yh, d in zip(y_hat, d_hat)) / features
    for j, c in enumerate(cols):
      d_y = d_out[j] * gate[j][None, :] + rstd[:, None] * (
          d_hat[j][None, :] - d_hat_mean - y_hat[j] * row_dot[:, None])
      dy_ref[b, pl.ds(r0, rows), k, c] = d_y.astype(dy_ref.dtype)


def gated_sum_norm_grad(y, d_out, gate, d_hat, epsilon: float, *,
                        interpret: bool | None = None):
  """d_y = d_out * gate_k + LayerNorm-backward(d_hat_k) for every row of y (module docstring).

  y: [b, L, K, E]; d_out: [b, L, E] (the gradient of sum_k y_k * gate_k); gate: [b, K, E];
  d_hat: [b, K, E] float32, the gradient w.r.t. each normalised row (the same for every row
  of a branch, e.g. that of a mean over L divided by L). Returns d_y in y's dtype.
  """
  _check("gated_sum_norm_grad", y, ndim=4, features=y.shape[-1] if y.ndim == 4 else None)
  batch, length, branches, features = y.shape
  expected = {"d_out": (d_out, (batch, length, features)),
              "gate": (gate, (batch, branches, features)),
              "d_hat": (d_hat, (batch, branches, features))}
  for name, (value, shape) in expected.items():
    if tuple(value.shape) != shape:
      raise ValueError(f"gated_sum_norm_grad: {name} has shape {tuple(value.shape)}, expected "
                       f"{shape} for y of shape {tuple(y.shape)}.")
  width, count = column_blocks(features)
  interpret = not on_gpu() if interpret is None else interpret
  call = functools.partial(_grad_call, rows=_rows_per_block(length, features), width=width,
                           count=count, epsilon=float(epsilon), interpret=interpret)
  return shard_over_batch(call, y, d_out, gate, d_hat.astype(jnp.float32),
                          batched=(True,) * 4)


@functools.partial(jax.jit, static_argnames=("rows", "width", "count", "epsilon", "interpret"))
def _grad_call(y, d_out, gate, d_hat, *, rows, width, count, epsilon, interpret):
  kernel = functools.partial(_grad_kernel, rows=rows, width=width, count=count,
                             branches=y.shape[2], epsilon=epsilon)
  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(y.shape, y.dtype),
      grid=(y.shape[0], y.shape[1] // rows), interpret=interpret, name="gated_sum_norm_grad",
      compiler_params=plt.CompilerParams(num_warps=NUM_WARPS, num_stages=1))(
          y, d_out, gate, d_hat)


# ----------------------------------------------------------------------------- LayerNorm backward

def _layer_norm_grad_kernel(x_ref, dy_ref, mean_ref, rstd_ref, scale_ref, dx_ref, dscale_ref,
                            dbias_ref, *, rows, blocks_per_program, width, count):
  b, part = pl.program_id(0), pl.program_id(1)
  features = width * count
  cols = [pl.ds(j * width, width) for j in range(count)]
  scale = [scale_ref[c].astype(jnp.float32) for c in cols]

  def body(i, sums):
    rs = pl.ds((part * blocks_per_program + i) * rows, rows)
    mean, rstd = mean_ref[b, rs], rstd_ref[b, rs]                               # [rows]
    x_hat = [(x_ref[b, rs, c].astype(jnp.float32) - mean[:, None]) * rstd[:, None]
             for c in cols]
    dy = [dy_ref[b, rs, c].astype(jnp.float32) for c in cols]
    g = [d * s[None, :] for d, s in zip(dy, scale)]                  # d(normalised row)
    mean_g = sum(gj.sum(axis=1) for gj in g) / features
    mean_gx = sum((gj * xj).sum(axis=1) for gj, xj in zip(g, x_hat)) / features
    for j, c in enumerate(cols):
      dx = rstd[:, None] * (g[j] - mean_g[:, None] - x_hat[j] * mean_gx[:, None])
      dx_ref[b, rs, c] = dx.astype(dx_ref.dtype)
    d_scale = tuple(s + (d * xj).sum(axis=0) for s, d, xj in zip(sums[:count], dy, x_hat))
    d_bias = tuple(s + d.sum(axis=0) for s, d in zip(sums[count:], dy))
    return d_scale + d_bias

  zeros = tuple(jnp.zeros((width,), jnp.float32) for _ in range(2 * count))
  sums = jax.lax.fori_loop(0, blocks_per_program, body, zeros)
  for j, c in enumerate(cols):
    dscale_ref[b, part, c] = sums[j]
    dbias_ref[b, part, c] = sums[count + j]


def layer_norm_grad(x, dy, mean, rstd, scale, *, interpret: bool | None = None):
  """The backward of y = (x - mean) * rstd * scale + bias over the last axis of x.

  x, dy: [b, L, C] (float32, bfloat16 or float16; read as float32); mean, rstd: [b, L]
  float32 (the forward's row statistics, rstd = 1 / sqrt(var + eps)); scale: [C].
  Returns (dx [b, L, C] in x's dtype, d_scale [C] float32, d_bias [C] float32):
      dx = rstd * (g - mean_C(g) - x_hat * mean_C(g * x_hat)),  g = dy * scale,
      d_scale = sum over rows of dy * x_hat,  d_bias = sum over rows of dy.
  Each program loops over up to LN_ROWS_PER_PROGRAM rows of one batch element and writes its
  partial column sums; XLA adds them.
  """
  _check("layer_norm_grad", x, ndim=3, features=x.shape[-1] if x.ndim == 3 else None)
  batch, length, features = x.shape
  expected = {"dy": (dy, (batch, length, features)), "mean": (mean, (batch, length)),
              "rstd": (rstd, (batch, length)), "scale": (scale, (features,))}
  for name, (value, shape) in expected.items():
    if tuple(value.shape) != shape:
      raise ValueError(f"layer_norm_grad: {name} has shape {tuple(value.shape)}, expected "
                       f"{shape} for x of shape {tuple(x.shape)}.")
  width, count = column_blocks(features)
  rows = _rows_per_block(length, features)
  per_program = _blocks_per_program(length // rows, rows, LN_ROWS_PER_PROGRAM)
  interpret = not on_gpu() if interpret is None else interpret
  call = functools.partial(_layer_norm_grad_call, rows=rows, blocks_per_program=per_program,
                           width=width, count=count, interpret=interpret)
  dx, d_scale, d_bias = shard_over_batch(
      call, x, dy, mean.astype(jnp.float32), rstd.astype(jnp.float32), scale,
      batched=(True, True, True, True, False))
  return dx, d_scale.sum(axis=(0, 1)), d_bias.sum(axis=(0, 1))


@functools.partial(jax.jit, static_argnames=("rows", "blocks_per_program", "width", "count",
                                             "interpret"))
def _layer_norm_grad_call(x, dy, mean, rstd, scale, *, rows, blocks_per_program, width, count,
                          interpret):
  batch, length, features = x.shape
  parts = length // (rows * blocks_per_program)
  kernel = functools.partial(_layer_norm_grad_kernel, rows=rows,
                             blocks_per_program=blocks_per_program, width=width, count=count)
  partial_sums = jax.ShapeDtypeStruct((batch, parts, features), jnp.float32)
  return pl.pallas_call(
      kernel, out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype), partial_sums, partial_sums),
      grid=(batch, parts), interpret=interpret, name="layer_norm_grad",
      compiler_params=plt.CompilerParams(num_warps=NUM_WARPS, num_stages=1))(
          x, dy, mean, rstd, scale)

"""The multi-direction scan the models call: gather -> selective scan -> merge, K directions at once.

Inputs are in spatial (row-major) token order; outputs come back in spatial order, one
slice per direction: [batch, H*W, K, E]. The reference path here gathers each direction's
sequence with the indices of `scan_orders`, stacks the K sequences as K * E channels (padded
at the end to the longest, as the official `MultiScanVSSM.multi_scan` does), runs one
grouped selective scan (group k = direction k, reference doc Sec. 7) and merges each
direction back with its (official) merge index. Kernels implement the same op with the
gather fused into their reads; the models do not change.

Pad tokens (window pads inside the sequence, and the trailing pads) are zero vectors: u = 0,
delta = 0 before the bias, B = C = 0. With softplus and a delta bias they are decay-only
steps, exactly as in the official LocalVMamba (reference doc Sec. 2).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops import scan_orders as scan_orders_lib
from localmamba_jax.ops.selective_scan import (DEFAULT_CHUNK_SIZE, kernel_recompute,
                                               resolved_path, selective_scan)


def _array_module(table):
  """numpy for concrete tables (indices folded into the program as constants), jax.numpy for
  tables passed as data (e.g. a lax.scan over blocks with different directions)."""
  return np if isinstance(table, (np.ndarray, list, tuple)) else jnp


def _with_zero_token(x):
  """Appends one zero token along axis 1; gather index PAD (-1) then reads it."""
  return jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)


def gather_tokens(x, gather_index: np.ndarray):
  """Reads K scan orders out of spatial tokens.

  x: [batch, L, C] (shared by all directions) or [batch, L, K, C] (one slice per direction).
  gather_index: int [K, Lmax], PAD = -1 for zero tokens.
  Returns [batch, Lmax, K, C].
  """
  xp = _array_module(gather_index)
  gather_index = xp.asarray(gather_index)
  num_dirs = gather_index.shape[0]
  if x.ndim == 4 and x.shape[2] != num_dirs:
    raise ValueError(f"gather_tokens: x has {x.shape[2]} direction slices but {num_dirs} "
                     f"directions were given.")
  x = _with_zero_token(x)
  index = xp.where(gather_index < 0, x.shape[1] - 1, gather_index)  # PAD -> the zero token
  if x.ndim == 3:
    return jnp.moveaxis(x[:, index], 1, 2)                             # [b, K, Lmax, C] -> swap
  return x[:, index.T, np.arange(num_dirs)[None, :]]


def merge_tokens(y, merge_index: np.ndarray):
  """Brings per-direction sequences y [batch, Lmax, K, C] back to spatial order [batch, L, K, C]."""
  merge_index = _array_module(merge_index).asarray(merge_index)
  return y[:, merge_index.T, np.arange(merge_index.shape[0])[None, :]]


def _check_per_direction(name, x, batch, length, num_dirs, last, allow_shared=False):
  shape = getattr(x, "shape", None)
  ok = shape is not None and len(shape) == 4 and shape[:3] == (batch, length, num_dirs)
  ok = ok and (last is None or shape[3] == last)
  if allow_shared and shape is not None and len(shape) == 3:
    ok = shape[:2] == (batch, length) and (last is None or shape[2] == last)
  if not ok:
    expected = f"[batch={batch}, L={length}, K={num_dirs}, {last or 'E'}]"
    if allow_shared:
      expected += f" or [batch, L, {last or 'E'}]"
    raise ValueError(f"multi_direction_selective_scan: {name} must have shape {expected}, got "
                     f"{None if shape is None else tuple(shape)}.")


def multi_direction_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, z=None, *,
                                   grid_hw: tuple[int, int], directions: Sequence[str],
                                   delta_softplus: bool = True, exact_inverse: bool = False,
                                   impl: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                                   tables=None, out_dtype=None, recompute: bool = False):
  """Selective scans of K directions over an H x W token grid, merged back to spatial order.

  u:          [batch, H*W, E] (shared) or [batch, H*W, K, E]
  delta:      [batch, H*W, K, E]   raw (delta_bias and softplus applied inside)
  A:          [K, E, N]            (A = -exp(A_log))
  B, C:       [batch, H*W, K, N]   one group per direction
  D, delta_bias: [K, E] or None
  z:          optional gate, [batch, H*W, K, E] or [batch, H*W, E]
  tables:     optional (gather int [K, Lmax], merge int [K, H*W]) used instead of the tables
              of `directions`, and possibly traced: blocks with different directions then
              share one program (`lax.scan` over blocks, LocalVMamba's `scan_blocks`). They
              must have the shapes of `directions`' tables and the same exactness of merge
              (`StackedScanOrders.table_layout()`), which stay static; not with the TPU kernel.
  out_dtype:  dtype of the result (None: that of u). The scan computes in float32 or wider
              whatever the input dtypes; with out_dtype=float32, bf16 inputs give the values
              of their float32 casts (an exact conversion) and gradients rounded to bf16, as
              the official SelectiveScan's cast_inputs=float32 under autocast. The GPU kernel
              converts as it reads (half the input, residual and gradient bytes); the other
              paths cast the inputs first.
  recompute:  keep only the inputs for the backward and recompute the scans' forward there
              (`selective_scan`'s recompute; the GPU kernel rebuilds just its checkpoints).
  Returns [batch, H*W, K, E] in out_dtype.
  """
  height, width = grid_hw
  orders = scan_orders_lib.stacked_scan_orders(height, width, directions, exact_inverse)
  num_dirs = len(orders.directions)
  gather_table, merge_table = orders.gather, orders.merge
  if tables is not None:
    gather_table, merge_table = tables
    for name, given, want in (("gather", gather_table, orders.gather),
                              ("merge", merge_table, orders.merge)):
      if tuple(getattr(given, "shape", ())) != want.shape:
        raise ValueError(f"multi_direction_selective_scan: tables[{name}] must have the shape "
                         f"{want.shape} of the {name} table of directions {list(directions)} "
                         f"on a {height}x{width} grid, got {getattr(given, 'shape', None)}.")
  if getattr(A, "ndim", None) != 3 or A.shape[0] != num_dirs:
    raise ValueError(f"multi_direction_selective_scan: A must have shape [K={num_dirs}, E, N], "
                     f"got {getattr(A, 'shape', None)}.")
  _, channels, num_state = A.shape
  batch = getattr(u, "shape", (None,))[0]
  length = height * width
  _check_per_direction("u", u, batch, length, num_dirs, channels, allow_shared=True)
  _check_per_direction("delta", delta, batch, length, num_dirs, channels)
  _check_per_direction("B", B, batch, length, num_dirs, num_state)
  _check_per_direction("C", C, batch, length, num_dirs, num_state)
  if z is not None:
    _check_per_direction("z", z, batch, length, num_dirs, channels, allow_shared=True)
  for name, value in (("D", D), ("delta_bias", delta_bias)):
    if value is not None and getattr(value, "shape", None) != (num_dirs, channels):
      raise ValueError(f"multi_direction_selective_scan: {name} must have shape "
                       f"[K={num_dirs}, E={channels}], got {getattr(value, 'shape', None)}.")

  from localmamba_jax.ops.kernels import common as kernels_common
  from localmamba_jax.ops.kernels import selective_scan_gpu, selective_scan_tpu
  dtypes = [x.dtype for x in (u, delta, B, C, z) if x is not None]
  resolved = resolved_path(impl, num_dirs * channels, num_dirs, num_state,
                           dtypes + ([] if out_dtype is None else [jnp.dtype(out_dtype)]))
  if out_dtype is not None and resolved != "pallas_gpu":
    # Paths that compute in their inputs' dtype: promote the inputs to out_dtype first.
    out_dtype = jnp.dtype(out_dtype)
    promote = lambda x: None if x is None else x.astype(jnp.promote_types(x.dtype, out_dtype))
    u, delta, B, C, z = map(promote, (u, delta, B, C, z))
    return multi_direction_selective_scan(
        u, delta, A, B, C, D, delta_bias, z, grid_hw=grid_hw, directions=directions,
        delta_softplus=delta_softplus, exact_inverse=exact_inverse, impl=resolved,
        chunk_size=chunk_size, tables=tables, recompute=recompute).astype(out_dtype)
  if resolved in ("pallas_tpu", "pallas_gpu"):
    # GPU: the kernel reads each direction's tokens through orders.gather and writes outputs
    # (and gradients) back at their tokens: no gathered copies of the inputs in memory.
    # TPU: the same fusion, with scalar-prefetched gather tables driving the row reads.
    kernel = (selective_scan_tpu.multi_direction_scan_pallas_tpu if resolved == "pallas_tpu"
              else selective_scan_gpu.multi_direction_scan_pallas)
    out_options, wrap = kernel_recompute(resolved, recompute)
    if out_dtype is not None:  # GPU kernel only
      out_options["out_dtype"] = out_dtype
    if tables is None:
      @wrap
      def call(u, delta, A, B, C, D, delta_bias, z):
        return kernel(u, delta, A, B, C, D, delta_bias, z, gather=orders.gather,
                      merge=orders.merge, delta_softplus=delta_softplus, **out_options)
      # Under a device mesh the kernel runs per batch shard (kernels.common.shard_over_batch).
      return kernels_common.shard_over_batch(
          call, u, delta, A, B, C, D, delta_bias, z,
          batched=(True, True, False, True, True, False, False, True))
    if resolved == "pallas_tpu":
      raise ValueError("multi_direction_selective_scan: scan-order tables passed as data "
                       "(`tables=`, LocalVMamba's scan_blocks=True) are not supported by the TPU "
                       "kernel, which takes them as static scalar-prefetch tables; set "
                       "scan_blocks=False (or impl='associative').")
    # The tables' merge exactness is static: that of `directions` (equal table_layout()).
    exact = orders.merge_inverts_gather

    def call_with_tables(u, delta, A, B, C, D, delta_bias, z, gather, merge):
      return kernel(u, delta, A, B, C, D, delta_bias, z, gather=gather, merge=merge,
                    delta_softplus=delta_softplus, exact=exact, **out_options)
    return kernels_common.shard_over_batch(
        call_with_tables, u, delta, A, B, C, D, delta_bias, z, gather_table, merge_table,
        batched=(True, True, False, True, True, False, False, True, False, False))
  max_length = orders.max_length
  flat = lambda x: x.reshape(batch, max_length, num_dirs * channels)
  gathered = lambda x: gather_tokens(x, gather_table)
  out = selective_scan(
      flat(gathered(u)), flat(gathered(delta)), A.reshape(num_dirs * channels, num_state),
      gathered(B), gathered(C),
      None if D is None else D.reshape(-1),
      None if z is None else flat(gathered(z)),
      None if delta_bias is None else delta_bias.reshape(-1),
      delta_softplus=delta_softplus, impl=impl, chunk_size=chunk_size, recompute=recompute)
  return merge_tokens(out.reshape(batch, max_length, num_dirs, channels), merge_table)

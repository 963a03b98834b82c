"""Pallas TPU (Mosaic) selective scan: forward and backward kernels behind `jax.custom_vjp`.

Same op, math and precision policy as `ops.selective_scan` and the GPU kernel
(`selective_scan_gpu`): channels-last u/delta/z [batch, tokens, channels], B/C
[batch, tokens, groups, N], fp32 state and accumulation, output in u's dtype.

Kernel design (TPU: 8 x 128 vreg tiles, VMEM blocks pipelined by a grid):
  * grid (batch, channel tiles, sequence tiles); the sequence axis is "arbitrary" (sequential
    on one core) and carries the state h [N, tile] in a VMEM scratch: N on sublanes, channels
    on the 128 lanes, so a step is a handful of full-vreg ops. Inside a sequence tile of
    `seq_tile` steps, a `fori_loop` walks the rows of the VMEM blocks.
  * channel tiles are multiples of 128 lanes (512 by default), each inside one B/C group; a
    group whose channel count is not a multiple of 128 is zero-padded up to one (LocalVMamba-T
    stage 1: 192 -> 256). Pad channels have u = delta = A = 0: their state stays 0.
  * the forward writes the state at the start of every sequence tile (fp32 [batch, tiles,
    N, channels]); the backward walks the sequence tiles in reverse, recomputes the tile's
    states into a VMEM scratch [seq_tile, N, tile] from that boundary state, then runs the
    adjoint recurrence  g_t = C_t dy_t + exp(Delta_{t+1} A) g_{t+1}  backwards through them.
    dB/dC are written per channel tile ([batch, channel tiles, L, N]) and summed by XLA;
    dA, dD, d delta_bias are accumulated in VMEM over the sequence and written once per
    (batch, channel tile), then summed over batch. No atomics: deterministic.
  * B_t/C_t arrive as rows [1, N] and are needed as columns [N, 1] (broadcast along lanes);
    the turn is a select against an identity mask and a lane reduction (XLU) -- only
    elementwise ops and reductions, which Mosaic lowers for any N.
  * multi-direction scan order (LocalVMamba): the token read by step s of direction k comes
    from a scalar-prefetched table (SMEM, `PrefetchScalarGridSpec`); u/delta/z blocks hold
    all tokens of the (batch, channel tile) in VMEM, and step s loads row table[k, s]
    (a dynamic sublane index). A pad entry (-1) is a decay-only step: u = 0, raw delta = 0
    (then + bias, softplus), B = C = 0, as the official zero-padded window scan. Outputs and
    the gradients of u/delta/z are written at that token (when the merge is the inverse of
    the gather; else in scan order and merged by XLA). B/C (G*N = 64 values a token against
    K*E = 768 for u/delta at LocalVMamba-T) are gathered into scan order by XLA and read in
    sequence tiles; their gradients flow back through that gather by autodiff.
  * the kernels read fp32 (bf16/fp16 inputs are upcast by XLA before the call): every
    dynamic single-row load/store is then a 32-bit one, the case Mosaic supports best.

Verified without a TPU (tests/ops/test_selective_scan_tpu.py): numerics in Pallas' TPU
interpret mode on CPU against the float64 reference and the golden cases, and lowering with
`jax.export(..., platforms=["tpu"])` (Mosaic's own compilation only runs on a TPU).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops.kernels.common import (StaticIndex, check_read_index, fold_to,
                                               fused_multi_direction_scan, target_platform,
                                               traced_for)

try:  # pragma: no cover - availability depends on the installed jax
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import tpu as pltpu
  _HAVE_PALLAS_TPU = True
except ImportError:  # pragma: no cover
  pl = pltpu = None
  _HAVE_PALLAS_TPU = False

LANES = 128
DEFAULT_TILE = 512
DEFAULT_SEQ_TILE = 128
# VMEM the token-resident blocks of the multi-direction kernels may use; the channel tile
# shrinks (down to 128 lanes) to fit. 2 buffers per block (Pallas double-buffers).
_VMEM_BUDGET = 24 * 2**20
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def lowering_for_tpu():
  """Traces the kernels as Mosaic calls (not interpret mode) on a host without a TPU, e.g.
  around `jax.export(..., platforms=["tpu"])`, and every op as for a TPU ("auto" picks the
  TPU kernels and no GPU kernel, also on a GPU host). pallas_call picks interpret mode at
  trace time, before the lowering platform is known, hence this explicit switch."""
  return traced_for("tpu")


def on_tpu() -> bool:
  """Whether the ops are traced for a TPU (a TPU host, or inside `lowering_for_tpu`)."""
  return target_platform() == "tpu"


def interprets_by_default() -> bool:
  """Whether a call with interpret=None runs in interpret mode (not traced for a TPU)."""
  return not on_tpu()


def is_supported(channels: int, groups: int, num_state: int, dtypes=()) -> bool:
  """Whether the TPU kernel covers the problem (else callers use the pure-JAX scan)."""
  if not _HAVE_PALLAS_TPU or groups < 1 or channels % groups or not 1 <= num_state <= 256:
    return False
  return all(jnp.dtype(d) in map(jnp.dtype, _SUPPORTED_DTYPES) for d in dtypes)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _tile_for(per_group: int, cap: int) -> int:
  """Largest multiple of 128 lanes <= cap that divides per_group (a multiple of 128)."""
  tile = max(LANES, (min(cap, per_group) // LANES) * LANES)
  while per_group % tile:
    tile -= LANES
  return tile


@dataclasses.dataclass(frozen=True)
class _Config:
  seq_len: int                 # steps of the recurrence (before padding to seq tiles)
  seq_tile: int                # steps per grid step (multiple of 8)
  num_seq_tiles: int
  tile: int                    # channel tile (multiple of 128, inside one group)
  tiles_per_group: int
  u_tiles: int                 # channel tiles of u (u may be shared by the groups)
  z_tiles: int
  softplus: bool
  has_z: bool
  read_index: Optional[StaticIndex]  # [groups, seq_len] token per step, -1 = pad
  write_at_tokens: bool        # gathered mode: outputs at the read token, else in scan order
  interpret: bool


# ----------------------------------------------------------------------------- kernel pieces

def _softplus(x):
  # mamba's threshold: above 20 softplus(x) == x in fp32.
  return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def _sigmoid(x):
  return 1.0 / (1.0 + jnp.exp(-x))


def _row_to_col(row, eye):
  """[1, N] -> [N, 1] (a transpose by mask + lane reduction)."""
  n = row.shape[1]
  return jnp.sum(jnp.where(eye, jnp.broadcast_to(row, (n, n)), 0.0), axis=1, keepdims=True)


def _col_to_row(col, eye):
  """[N, 1] -> [1, N]."""
  n = col.shape[0]
  return jnp.sum(jnp.where(eye, jnp.broadcast_to(col, (n, n)), 0.0), axis=0, keepdims=True)


def _div(i, n):
  # lax.div/rem, not // and %: jnp's floor division lowers through sign(), which Mosaic's
  # lowering specialises per TPU generation (it cannot be exported off a TPU). Operands >= 0.
  return jax.lax.div(i, jnp.int32(n))


def _rem(i, n):
  return jax.lax.rem(i, jnp.int32(n))


def _eye(n):
  return (jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
          == jax.lax.broadcasted_iota(jnp.int32, (n, n), 1))


class _Step:
  """Loads and discretises step t (local row in the sequence tile) of one program."""

  def __init__(self, cfg, index_ref, u_ref, delta_ref, b_ref, c_ref, z_ref, bias, eye):
    self.cfg, self.index_ref = cfg, index_ref
    self.u_ref, self.delta_ref, self.b_ref, self.c_ref, self.z_ref = (
        u_ref, delta_ref, b_ref, c_ref, z_ref)
    self.bias, self.eye = bias, eye
    self.group = _div(pl.program_id(1), cfg.tiles_per_group)

  def __call__(self, t, seq_block):
    cfg = self.cfg
    t_global = seq_block * cfg.seq_tile + t
    in_range = t_global < cfg.seq_len
    if self.index_ref is None:
      token, real, row = t, in_range, t
    else:
      padded_len = cfg.num_seq_tiles * cfg.seq_tile
      raw = self.index_ref[self.group * padded_len + t_global]
      real = jnp.logical_and(raw >= 0, in_range)
      token = jnp.maximum(raw, 0)
      row = token
    realf = real.astype(jnp.float32)
    u = self.u_ref[pl.ds(row, 1), :] * realf                         # [1, tile]
    pre = self.delta_ref[pl.ds(row, 1), :] * realf + self.bias
    dl = (_softplus(pre) if cfg.softplus else pre) * in_range.astype(jnp.float32)
    bcol = _row_to_col(self.b_ref[pl.ds(t, 1), :], self.eye)          # [N, 1]
    ccol = _row_to_col(self.c_ref[pl.ds(t, 1), :], self.eye)
    z = self.z_ref[pl.ds(row, 1), :] if cfg.has_z else None
    gathered = self.index_ref is not None
    out_row = token if (gathered and cfg.write_at_tokens) else t
    out_ok = real if (gathered and cfg.write_at_tokens) else in_range
    return dict(u=u, pre=pre, dl=dl, bcol=bcol, ccol=ccol, z=z, token=token, real=real,
                in_range=in_range, out_row=out_row, out_ok=out_ok)


def _split_refs(cfg, refs, n_in):
  refs = list(refs)
  index_ref = refs.pop(0) if cfg.read_index is not None else None
  return index_ref, refs[:n_in], refs[n_in:]


def _forward_kernel(*refs, cfg):
  n_in = 7 + cfg.has_z
  index_ref, ins, rest = _split_refs(cfg, refs, n_in)
  u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref = ins[:7]
  z_ref = ins[7] if cfg.has_z else None
  out_ref, ckpt_ref, last_ref, h_scratch = rest
  s = pl.program_id(2)

  @pl.when(s == 0)
  def _():
    h_scratch[...] = jnp.zeros_like(h_scratch)

  h0 = h_scratch[...]
  ckpt_ref[...] = h0                                   # boundary state for the backward
  a = a_ref[...]                                       # [N, tile]
  d = d_ref[...]                                       # [1, tile]
  step = _Step(cfg, index_ref, u_ref, delta_ref, b_ref, c_ref, z_ref, bias_ref[...],
               _eye(a.shape[0]))

  def body(t, h):
    x = step(t, s)
    h = jnp.exp(a * x["dl"]) * h + x["bcol"] * (x["dl"] * x["u"])
    y = jnp.sum(h * x["ccol"], axis=0, keepdims=True) + d * x["u"]
    if cfg.has_z:
      y = y * x["z"] * _sigmoid(x["z"])

    @pl.when(x["out_ok"])
    def _():
      out_ref[pl.ds(x["out_row"], 1), :] = y
    return h

  h = jax.lax.fori_loop(0, cfg.seq_tile, body, h0)
  h_scratch[...] = h

  @pl.when(s == cfg.num_seq_tiles - 1)
  def _():
    last_ref[...] = h


def _backward_kernel(*refs, cfg):
  n_in = 7 + cfg.has_z + 3
  index_ref, ins, rest = _split_refs(cfg, refs, n_in)
  u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref = ins[:7]
  z_ref = ins[7] if cfg.has_z else None
  dout_ref, dlast_ref, ckpt_ref = ins[-3:]
  du_ref, ddelta_ref = rest[:2]
  rest = rest[2:]
  dz_ref = rest.pop(0) if cfg.has_z else None
  db_ref, dc_ref, da_ref, dd_ref, dbias_ref = rest[:5]
  g_scratch, states, da_acc, dd_acc, dbias_acc = rest[5:]
  s = pl.program_id(2)
  block = cfg.num_seq_tiles - 1 - s                    # sequence tiles in reverse

  @pl.when(s == 0)
  def _():
    g_scratch[...] = dlast_ref[...]
    da_acc[...] = jnp.zeros_like(da_acc)
    dd_acc[...] = jnp.zeros_like(dd_acc)
    dbias_acc[...] = jnp.zeros_like(dbias_acc)

  a = a_ref[...]
  d = d_ref[...]
  eye = _eye(a.shape[0])
  step = _Step(cfg, index_ref, u_ref, delta_ref, b_ref, c_ref, z_ref, bias_ref[...], eye)

  def recompute(t, h):                                 # the tile's states, into VMEM
    x = step(t, block)
    h = jnp.exp(a * x["dl"]) * h + x["bcol"] * (x["dl"] * x["u"])
    states[t] = h
    return h

  jax.lax.fori_loop(0, cfg.seq_tile, recompute, ckpt_ref[...])

  def adjoint(i, carry):
    g_next, da, dd, dbias = carry                      # g_next = exp(Delta_{t+1} A) g_{t+1}
    t = cfg.seq_tile - 1 - i
    x = step(t, block)
    h = states[t]
    u, dl, bcol, ccol = x["u"], x["dl"], x["bcol"], x["ccol"]
    dout = dout_ref[pl.ds(x["out_row"], 1), :] * x["out_ok"].astype(jnp.float32)
    if cfg.has_z:
      z = x["z"]
      sig = _sigmoid(z)
      y = jnp.sum(h * ccol, axis=0, keepdims=True) + d * u
      dz = dout * y * sig * (1.0 + z * (1.0 - sig))
      dy = dout * z * sig
    else:
      dy = dout
    g = g_next + ccol * dy                             # [N, tile]
    dlu = dl * u
    # exp(Delta_t A) h_{t-1} = h_t - Delta_t B_t u_t: serves dA and dDelta.
    g_decayed_prev = g * (h - bcol * dlu)
    da = da + dl * g_decayed_prev
    gb = jnp.sum(g * bcol, axis=0, keepdims=True)      # [1, tile]
    ddl = u * gb + jnp.sum(a * g_decayed_prev, axis=0, keepdims=True)
    du = gb * dl + d * dy
    dd = dd + dy * u
    dpre = ddl * _sigmoid(x["pre"]) if cfg.softplus else ddl
    dpre = dpre * x["in_range"].astype(jnp.float32)
    dbias = dbias + dpre
    gathered = cfg.read_index is not None
    grad_row = x["token"] if gathered else t

    def write_grads():
      du_ref[pl.ds(grad_row, 1), :] = du
      ddelta_ref[pl.ds(grad_row, 1), :] = dpre
      if cfg.has_z:
        dz_ref[pl.ds(grad_row, 1), :] = dz
    # A token's gradient is written by the one step that reads it; pad steps write nothing.
    pl.when(x["real"])(write_grads) if gathered else write_grads()

    db_ref[pl.ds(t, 1), :] = _col_to_row(jnp.sum(g * dlu, axis=1, keepdims=True), eye)
    dc_ref[pl.ds(t, 1), :] = _col_to_row(jnp.sum(h * dy, axis=1, keepdims=True), eye)
    return g * jnp.exp(a * dl), da, dd, dbias

  carry = (g_scratch[...], da_acc[...], dd_acc[...], dbias_acc[...])
  g, da, dd, dbias = jax.lax.fori_loop(0, cfg.seq_tile, adjoint, carry)
  g_scratch[...] = g
  da_acc[...] = da
  dd_acc[...] = dd
  dbias_acc[...] = dbias

  @pl.when(s == cfg.num_seq_tiles - 1)
  def _():
    da_ref[...] = da
    dd_ref[...] = dd
    dbias_ref[...] = dbias


# ----------------------------------------------------------------------------- pallas calls

class _Specs:
  """BlockSpecs of both kernels. Index maps get (b, j, s[, index table ref])."""

  def __init__(self, cfg, num_state, reverse):
    self.cfg = cfg
    last = cfg.num_seq_tiles - 1
    seq = (lambda s: last - s) if reverse else (lambda s: s)
    tile, n, ts = cfg.tile, num_state, cfg.seq_tile
    gathered = cfg.read_index is not None
    per_token = lambda tiles_of: (lambda b, j, s, *_: (b, 0, _rem(j, tiles_of)))
    per_step = lambda b, j, s, *_: (b, seq(s), j)

    def channels_block(tiles_of, tokens):
      # Gathered: all tokens of the tile stay in VMEM (rows read at table positions).
      if gathered:
        return pl.BlockSpec((None, tokens, tile), per_token(tiles_of))
      return pl.BlockSpec((None, ts, tile), lambda b, j, s, *_: (b, seq(s), _rem(j, tiles_of)))

    self.channels_block = channels_block
    self.out_block = lambda tokens: (
        pl.BlockSpec((None, tokens, tile), per_token(10**9))
        if gathered and cfg.write_at_tokens else pl.BlockSpec((None, ts, tile), per_step))
    self.grad_block = lambda tiles_of, tokens: (
        pl.BlockSpec((None, tokens, tile), per_token(tiles_of)) if gathered
        else pl.BlockSpec((None, ts, tile), lambda b, j, s, *_: (b, seq(s), _rem(j, tiles_of))))
    self.a = pl.BlockSpec((n, tile), lambda b, j, s, *_: (0, j))
    self.vec = pl.BlockSpec((1, tile), lambda b, j, s, *_: (0, j))
    self.bc = pl.BlockSpec((None, None, ts, n),
                           lambda b, j, s, *_: (b, _div(j, cfg.tiles_per_group), seq(s), 0))
    self.bc_grad = pl.BlockSpec((None, None, ts, n), lambda b, j, s, *_: (b, j, seq(s), 0))
    self.state = pl.BlockSpec((None, n, tile), lambda b, j, s, *_: (b, 0, j))
    self.ckpt = pl.BlockSpec((None, None, n, tile), lambda b, j, s, *_: (b, seq(s), 0, j))
    self.vec_out = pl.BlockSpec((None, 1, tile), lambda b, j, s, *_: (b, 0, j))


def _vmem_limit(cfg, tokens, num_state, n_channel_blocks, extra_bytes):
  rows = tokens if cfg.read_index is not None else cfg.seq_tile
  need = 2 * n_channel_blocks * rows * cfg.tile * 4 + extra_bytes
  need += 2 * 4 * cfg.seq_tile * max(num_state, LANES) * 4     # B/C blocks (lane-padded)
  return int(min(max(32 * 2**20, need + 8 * 2**20), 100 * 2**20))


def _call(kernel, cfg, grid_spec, out_shape, vmem_limit, name):
  make = lambda interpret: pl.pallas_call(
      kernel, out_shape=out_shape, grid_spec=grid_spec, name=name,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary"),
          vmem_limit_bytes=vmem_limit),
      interpret=pltpu.InterpretParams() if interpret else False)
  return make(cfg.interpret)


def _index_args(cfg):
  if cfg.read_index is None:
    return 0, ()
  return 1, (jnp.asarray(cfg.read_index.array.reshape(-1)),)


def _forward_call(cfg, u, delta, a_t, B, C, D, bias, z):
  batch, tokens, channels = delta.shape
  num_state = a_t.shape[0]
  specs = _Specs(cfg, num_state, reverse=False)
  num_prefetch, index = _index_args(cfg)
  in_specs = [specs.channels_block(cfg.u_tiles, tokens), specs.channels_block(10**9, tokens),
              specs.a, specs.bc, specs.bc, specs.vec, specs.vec]
  if cfg.has_z:
    in_specs.append(specs.channels_block(cfg.z_tiles, tokens))
  out_len = tokens if (cfg.read_index is not None and cfg.write_at_tokens) else (
      cfg.num_seq_tiles * cfg.seq_tile)
  f32 = jnp.float32
  out_shape = (jax.ShapeDtypeStruct((batch, out_len, channels), f32),
               jax.ShapeDtypeStruct((batch, cfg.num_seq_tiles, num_state, channels), f32),
               jax.ShapeDtypeStruct((batch, num_state, channels), f32))
  grid = (batch, channels // cfg.tile, cfg.num_seq_tiles)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=num_prefetch, grid=grid, in_specs=in_specs,
      out_specs=(specs.out_block(out_len), specs.ckpt, specs.state),
      scratch_shapes=[pltpu.VMEM((num_state, cfg.tile), f32)])
  limit = _vmem_limit(cfg, tokens, num_state, 3 + cfg.has_z, 0)
  args = index + (u, delta, a_t, B, C, D, bias) + ((z,) if cfg.has_z else ())
  return _call(functools.partial(_forward_kernel, cfg=cfg), cfg, grid_spec, out_shape, limit,
               "selective_scan_tpu_fwd")(*args)


def _backward_call(cfg, u, delta, a_t, B, C, D, bias, z, dout, dlast, ckpt):
  batch, tokens, channels = delta.shape
  num_state = a_t.shape[0]
  specs = _Specs(cfg, num_state, reverse=True)
  num_prefetch, index = _index_args(cfg)
  out_len = dout.shape[1]
  in_specs = [specs.channels_block(cfg.u_tiles, tokens), specs.channels_block(10**9, tokens),
              specs.a, specs.bc, specs.bc, specs.vec, specs.vec]
  if cfg.has_z:
    in_specs.append(specs.channels_block(cfg.z_tiles, tokens))
  in_specs += [specs.out_block(out_len), specs.state, specs.ckpt]
  f32 = jnp.float32
  num_tiles = channels // cfg.tile
  padded_len = cfg.num_seq_tiles * cfg.seq_tile
  grad_tokens = tokens
  out_shape = [jax.ShapeDtypeStruct((batch, grad_tokens, channels), f32),
               jax.ShapeDtypeStruct((batch, grad_tokens, channels), f32)]
  out_specs = [specs.grad_block(10**9, grad_tokens), specs.grad_block(10**9, grad_tokens)]
  if cfg.has_z:
    out_shape.append(jax.ShapeDtypeStruct((batch, grad_tokens, channels), f32))
    out_specs.append(specs.grad_block(10**9, grad_tokens))
  out_shape += [jax.ShapeDtypeStruct((batch, num_tiles, padded_len, num_state), f32),
                jax.ShapeDtypeStruct((batch, num_tiles, padded_len, num_state), f32),
                jax.ShapeDtypeStruct((batch, num_state, channels), f32),
                jax.ShapeDtypeStruct((batch, 1, channels), f32),
                jax.ShapeDtypeStruct((batch, 1, channels), f32)]
  out_specs += [specs.bc_grad, specs.bc_grad, specs.state, specs.vec_out, specs.vec_out]
  scratch = [pltpu.VMEM((num_state, cfg.tile), f32),
             pltpu.VMEM((cfg.seq_tile, num_state, cfg.tile), f32),
             pltpu.VMEM((num_state, cfg.tile), f32),
             pltpu.VMEM((1, cfg.tile), f32), pltpu.VMEM((1, cfg.tile), f32)]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=num_prefetch, grid=(batch, num_tiles, cfg.num_seq_tiles),
      in_specs=in_specs, out_specs=tuple(out_specs), scratch_shapes=scratch)
  states_bytes = cfg.seq_tile * _round_up(num_state, 8) * cfg.tile * 4
  limit = _vmem_limit(cfg, tokens, num_state, 5 + 2 * cfg.has_z, states_bytes)
  args = index + (u, delta, a_t, B, C, D, bias) + ((z,) if cfg.has_z else ()) + (
      dout, dlast, ckpt)
  return _call(functools.partial(_backward_kernel, cfg=cfg), cfg, grid_spec, tuple(out_shape),
               limit, "selective_scan_tpu_bwd")(*args)


# ----------------------------------------------------------------------------- custom_vjp



@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, u, delta, a_t, B, C, D, bias, z):
  out, _, last = _forward_call(cfg, u, delta, a_t, B, C, D, bias, z)
  return out, last


def _scan_fwd(cfg, u, delta, a_t, B, C, D, bias, z):
  out, ckpt, last = _forward_call(cfg, u, delta, a_t, B, C, D, bias, z)
  return (out, last), (u, delta, a_t, B, C, D, bias, z, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
  u, delta, a_t, B, C, D, bias, z, ckpt = residuals
  dout, dlast = cotangents
  grads = list(_backward_call(cfg, u, delta, a_t, B, C, D, bias, z, dout, dlast, ckpt))
  du, ddelta = grads[:2]
  dz = grads[2] if cfg.has_z else None
  db_part, dc_part, da_part, dd_part, dbias_part = grads[-5:]
  batch, num_tiles, length, num_state = db_part.shape
  groups = B.shape[1]
  fold_tiles = lambda p: p.reshape(batch, groups, num_tiles // groups, length,
                                   num_state).sum(axis=2)
  du = fold_to(u.shape[2], du)
  if dz is not None:
    dz = fold_to(z.shape[2], dz)
  return (du, ddelta, da_part.sum(0), fold_tiles(db_part), fold_tiles(dc_part),
          dd_part.sum(0), dbias_part.sum(0), dz)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------- public entry



def _pad_group_channels(x, groups, per_group, padded_per_group):
  """[b, T, groups * per_group] -> [b, T, groups * padded_per_group] with zero channels."""
  if x is None or padded_per_group == per_group:
    return x
  batch, tokens = x.shape[:2]
  x = x.reshape(batch, tokens, groups, per_group)
  x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, padded_per_group - per_group)])
  return x.reshape(batch, tokens, groups * padded_per_group)


def selective_scan_pallas_tpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                              delta_softplus=False, read_index=None, write_at_tokens=True,
                              return_last_state=False, tile=None, seq_tile=None,
                              interpret=None):
  """The selective scan as Pallas TPU kernels (fwd + custom-VJP bwd).

  u: [b, T, Cu] with Cu = C, or Cu = C / (groups sharing it) (LocalVMamba's K directions
     reading the same x); z likewise (optional).
  delta: [b, T, C]; A: [C, N]; B, C: [b, T, G, N]; D, delta_bias: [C] or None.
  read_index: optional int [G, L_seq] (numpy, static): token read by step s of group g,
     -1 for a pad (decay-only) step. None = identity (L_seq = T).
  write_at_tokens: with read_index, outputs at the token read (True) or in scan order
     [b, L_seq, C] (False, for a merge that is not the gather's inverse).
  tile / seq_tile: channel tile (multiple of 128; default 512, smaller to fit VMEM and the
     group) and steps per grid step (multiple of 8; default 128).
  interpret: None = TPU interpret mode unless the default backend is a TPU or the call is
     traced inside `lowering_for_tpu()` (exporting for a TPU from a CPU host).
  Returns out (dtype of u), and the last state [b, C, N] fp32 if return_last_state.
  """
  if not _HAVE_PALLAS_TPU:
    raise ValueError("selective_scan_pallas_tpu: jax.experimental.pallas.tpu is not available "
                     "in this jax; use impl='associative'.")
  batch, tokens, channels = delta.shape
  groups, num_state = B.shape[2], B.shape[3]
  for name, x in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
    if x is not None and jnp.dtype(x.dtype) not in map(jnp.dtype, _SUPPORTED_DTYPES):
      raise ValueError(f"selective_scan_pallas_tpu: {name} has dtype {x.dtype}; the kernel "
                       f"takes float32, bfloat16 or float16 (impl='reference' for float64).")
  if channels % groups:
    raise ValueError(f"selective_scan_pallas_tpu: the {groups} groups of B/C must divide the "
                     f"{channels} channels of delta.")
  per_group = channels // groups
  for name, x in (("u", u), ("z", z)):
    if x is not None and (channels % x.shape[2] or x.shape[2] % per_group):
      raise ValueError(f"selective_scan_pallas_tpu: {name} has {x.shape[2]} channels; it must "
                       f"have the {channels} channels of delta, or a multiple of the "
                       f"{per_group} channels of one group that divides them (shared input).")
  if read_index is None:
    seq_len = tokens
  else:
    check_read_index(read_index, groups, tokens, "selective_scan_tpu")
    seq_len = int(np.asarray(read_index).shape[1])
  if seq_tile is not None and (seq_tile < 8 or seq_tile % 8):
    raise ValueError(f"selective_scan_pallas_tpu: seq_tile must be a multiple of 8, got "
                     f"{seq_tile}.")
  if tile is not None and (tile < LANES or tile % LANES):
    raise ValueError(f"selective_scan_pallas_tpu: tile must be a multiple of {LANES}, got "
                     f"{tile}.")
  seq_tile = seq_tile or min(DEFAULT_SEQ_TILE, _round_up(seq_len, 8))
  num_seq_tiles = -(-seq_len // seq_tile)
  padded_len = num_seq_tiles * seq_tile
  padded_per_group = _round_up(per_group, LANES)
  gathered = read_index is not None
  cap = tile or DEFAULT_TILE
  channel_tile = _tile_for(padded_per_group, cap)
  if interpret is None:
    interpret = interprets_by_default()
  if gathered and tile is None:  # token-resident blocks: shrink the tile to fit VMEM
    resident = 5 + 2 * (z is not None)
    while channel_tile > LANES and 2 * resident * tokens * channel_tile * 4 > _VMEM_BUDGET:
      channel_tile = _tile_for(padded_per_group, channel_tile - LANES)
  f32 = jnp.float32
  u_groups = u.shape[2] // per_group
  z_groups = z.shape[2] // per_group if z is not None else groups
  pad_c = lambda x, g: _pad_group_channels(None if x is None else x.astype(f32), g, per_group,
                                           padded_per_group)
  u_p, delta_p, z_p = pad_c(u, u_groups), pad_c(delta, groups), pad_c(z, z_groups)
  vec = lambda v: (jnp.zeros((channels,), f32) if v is None else v.astype(f32))
  a_p = pad_c(A.astype(f32).T[None], groups)[0]                  # [N, C'] (A transposed)
  d_p = pad_c(vec(D)[None, None], groups)[0]                     # [1, C']
  bias_p = pad_c(vec(delta_bias)[None, None], groups)[0]
  # B/C to [b, G, L_seq (scan order, padded), N]; pads and the tail are zero rows.
  if gathered:
    index = np.asarray(read_index)
    take = np.where(index < 0, tokens, index)                    # -1 -> an appended zero row
    with_zero = lambda x: jnp.concatenate([x.astype(f32), jnp.zeros_like(x[:, :1], f32)], 1)
    seq_order = lambda x: with_zero(x)[:, take.T, np.arange(groups)[None, :]]
    b_s, c_s = seq_order(B), seq_order(C)                        # [b, L_seq, G, N]
  else:
    b_s, c_s = B.astype(f32), C.astype(f32)
  to_tiles = lambda x: jnp.pad(jnp.moveaxis(x, 2, 1), [(0, 0), (0, 0),
                                                       (0, padded_len - seq_len), (0, 0)])
  b_s, c_s = to_tiles(b_s), to_tiles(c_s)
  if not gathered:  # plain scan: pad the sequence to whole tiles (identity steps, Delta = 0)
    pad_t = lambda x: None if x is None else jnp.pad(x, [(0, 0), (0, padded_len - tokens),
                                                         (0, 0)])
    u_p, delta_p, z_p = pad_t(u_p), pad_t(delta_p), pad_t(z_p)
    static_index = None
  else:
    table = np.full((groups, padded_len), -1, np.int32)
    table[:, :seq_len] = index
    static_index = StaticIndex(table)
  tiles_per_group = padded_per_group // channel_tile
  cfg = _Config(seq_len=seq_len, seq_tile=seq_tile, num_seq_tiles=num_seq_tiles,
                tile=channel_tile, tiles_per_group=tiles_per_group,
                u_tiles=u_groups * tiles_per_group, z_tiles=z_groups * tiles_per_group,
                softplus=bool(delta_softplus), has_z=z is not None, read_index=static_index,
                write_at_tokens=bool(write_at_tokens) or not gathered,
                interpret=bool(interpret))
  out, last = _scan(cfg, u_p, delta_p, a_p, b_s, c_s, d_p, bias_p, z_p)
  out_len = tokens if (not gathered or cfg.write_at_tokens) else seq_len
  out = out[:, :out_len].reshape(batch, out_len, groups, padded_per_group)[..., :per_group]
  out = out.reshape(batch, out_len, channels).astype(u.dtype)
  if not return_last_state:
    return out
  last = last.reshape(batch, num_state, groups, padded_per_group)[..., :per_group]
  return out, jnp.moveaxis(last.reshape(batch, num_state, channels), 1, 2)


def multi_direction_scan_pallas_tpu(u, delta, A, B, C, D, delta_bias, z, *, gather, merge,
                                    delta_softplus=True, interpret=None, **kernel_options):
  """LocalVMamba's multi-direction scan with the scan order fused into the TPU kernel.

  Shapes as `ops.multi_direction.multi_direction_selective_scan` (validated there):
  u [b, HW, E] or [b, HW, K, E], delta [b, HW, K, E], A [K, E, N], B/C [b, HW, K, N],
  D/delta_bias [K, E] or None, z like u or None; gather [K, Lmax], merge [K, HW] (numpy).
  Returns [b, HW, K, E].
  """
  return fused_multi_direction_scan(
      selective_scan_pallas_tpu, u, delta, A, B, C, D, delta_bias, z, gather=gather,
      merge=merge, delta_softplus=delta_softplus, interpret=interpret, **kernel_options)

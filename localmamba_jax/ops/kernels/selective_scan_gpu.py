"""Pallas GPU selective scan: forward and backward kernels behind `jax.custom_vjp`.

Same math, layout and precision policy as `ops.selective_scan` (module docstring there):
u/delta/z channels-last [batch, tokens, channels], B/C [batch, tokens, groups, N], fp32
state and accumulation, bf16/fp16/fp32 inputs, output in u's dtype.

Kernel design (one program per (batch, tile of `tile` channels inside one group)):
  * forward: a loop over chunks of `chunk` steps, each chunk unrolled so that the loads of
    its steps do not wait on the recurrence; the state h [tile, N] stays in registers in fp32;
    exp(Delta * A) is computed as exp2(Delta * A * log2(e)) with A pre-scaled once. The state
    at the start of every chunk is written out (`checkpoints`, [batch, chunks, C, N] fp32).
  * backward: chunks in reverse; each chunk reloads its checkpoint, recomputes its `chunk`
    states into registers (a Python-unrolled list), then runs the adjoint recurrence
        g_t = C_t dy_t + exp(Delta_{t+1} A) g_{t+1}
    backwards through them. Since a_t h_{t-1} = h_t - Delta_t B_t u_t, only h_t is needed.
    dB/dC (summed over the channels of a group) are written as one partial per channel tile,
    [batch, tokens, tiles, N], and summed afterwards; dA, dD and d delta_bias are per-program
    partials summed over batch afterwards. No atomics, so results are deterministic.
  * scan order fused into the memory accesses (LocalVMamba's multi-direction scan): with a
    `read_index` [groups, L_seq] (group = direction; -1 = pad token), step s of group g reads
    token read_index[g, s] of the spatial-order inputs; a pad step reads u = 0, B = C = 0,
    raw delta = 0 (then + bias, softplus): a decay-only step, as the official zero-padded
    window scan. Outputs are written either at that same token (`write_at_tokens=True`:
    exact when the merge is the inverse of the gather, which holds for every direction except
    the official v/v_flip merge on non-square grids) or in scan order, for the caller to merge
    with an XLA gather (the general fallback). Gradients w.r.t. u, delta, z, B, C come back in
    spatial order the same way (each real token is read exactly once per direction, checked).

Backend choice: the Triton backend of `pl.pallas_call` (the default on GPU in jax 0.11).
The kernel is a latency-bound sequential loop over short register tiles with scalar index
loads, which maps directly to Triton's programming model (any NVIDIA GPU Triton supports,
sm_80+ in practice; tested on H100). Mosaic GPU (`pallas.mosaic_gpu`) needs Hopper+ and a
warpgroup-level formulation; for this loop it offers nothing measured to be faster, and the
calibration in docs/accelerator_notes (Triton, 3.96 ms vs mamba CUDA 13.6 ms forward at
stage 1) shows Triton is adequate. jax 0.12 warns that the Triton backend is deprecated:
`is_supported()` returns False wherever `pallas.triton` is missing, and callers then use the
pure-JAX path ("associative").
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

try:  # pragma: no cover - availability depends on the installed jax
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plt
  _HAVE_PALLAS_TRITON = True
except ImportError:  # pragma: no cover
  pl = plt = None
  _HAVE_PALLAS_TRITON = False

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)
# Defaults from the H100 sweep at LocalVMamba-T stage 1 (BENCHMARKS.md): forward 64-channel
# tiles on 2 warps; backward 16-channel tiles on 1 warp (the chunk's states live in registers:
# larger tiles/chunks spill or cut occupancy); checkpoints every 8 steps.
DEFAULT_CHUNK = 8
DEFAULT_TILE = 64
DEFAULT_BWD_TILE = 16
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _largest_pow2_divisor(n: int, cap: int) -> int:
  t = 1
  while t * 2 <= cap and n % (t * 2) == 0:
    t *= 2
  return t


def on_gpu() -> bool:
  try:
    return jax.default_backend() == "gpu"
  except RuntimeError:  # pragma: no cover
    return False


def is_supported(channels: int, groups: int, num_state: int, dtypes=()) -> bool:
  """Whether the kernel covers this problem (else callers use the pure-JAX scan).

  Triton needs power-of-two register shapes: N must be a power of two and a channel tile
  (>= 8 channels, for speed) must divide the channels of one group. float64 is not
  supported (tests compare against float64 through the pure-JAX reference instead).
  """
  if not _HAVE_PALLAS_TRITON or num_state & (num_state - 1) or num_state > 256:
    return False
  if channels % groups or _largest_pow2_divisor(channels // groups, DEFAULT_TILE) < 8:
    return False
  return all(jnp.dtype(d) in map(jnp.dtype, _SUPPORTED_DTYPES) for d in dtypes)


class _StaticIndex:
  """A numpy int32 index array usable as a static (hashable) argument."""

  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array, dtype=np.int32)
    self._key = (self.array.shape, self.array.tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _StaticIndex) and self._key == other._key


@dataclasses.dataclass(frozen=True)
class _Config:
  seq_len: int                 # L_seq: steps of the recurrence
  chunk: int                   # steps per checkpoint (unrolled in the kernels)
  tile: int                    # forward channel tile
  bwd_tile: int                # backward channel tile (holds `chunk` states in registers)
  softplus: bool
  has_z: bool
  read_index: Optional[_StaticIndex]  # [groups, seq_len] token per step, -1 = pad; None = identity
  write_at_tokens: bool        # outputs at the read token (True) or at the step (False)
  num_warps: int
  bwd_num_warps: int
  interpret: bool


# ----------------------------------------------------------------------------- kernel pieces

def _softplus(x):
  # mamba's threshold: x above 20 is returned as is (log1p(exp(x)) == x in fp32 there).
  return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def _exp2(x, cfg):
  """2**x. On the GPU straight to the special-function unit (ex2.approx.ftz.f32, rel. error
  ~2^-22): libdevice's __nv_exp2f, which the Triton lowering of jnp.exp2 calls, adds range
  handling around the same instruction that the selective scan does not need (its argument
  Delta * A * log2(e) is <= 0 and underflow to 0 is the right answer)."""
  if cfg.interpret:
    return jnp.exp2(x)
  [y] = plt.elementwise_inline_asm("ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f",
                                   pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct.like(x)])
  return y


def _sigmoid(x):
  return 1.0 / (1.0 + jnp.exp(-x))


def _step_inputs(cfg, refs, b, group, c0, cu0, cz0, tile, t):
  """Loads step t of one program's tile; returns the per-step values (fp32)."""
  u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref, bias = refs
  t = jnp.asarray(t, jnp.int32)
  in_range = t < cfg.seq_len
  t_safe = jnp.minimum(t, jnp.int32(cfg.seq_len - 1))
  if index_ref is None:
    token, real = t_safe, in_range
  else:
    raw_token = index_ref[group, t_safe]
    real = jnp.logical_and(raw_token >= 0, in_range)
    token = jnp.maximum(raw_token, 0).astype(jnp.int32)
  zero = jnp.float32(0.0)
  u = jnp.where(real, plt.load(u_ref.at[b, token, pl.ds(cu0, tile)]).astype(jnp.float32), zero)
  draw = jnp.where(real, plt.load(delta_ref.at[b, token, pl.ds(c0, tile)]).astype(jnp.float32),
                   zero)
  bt = jnp.where(real, plt.load(b_ref.at[b, token, group, :]).astype(jnp.float32), zero)
  ct = jnp.where(real, plt.load(c_ref.at[b, token, group, :]).astype(jnp.float32), zero)
  pre = draw + bias
  dl = _softplus(pre) if cfg.softplus else pre
  dl = jnp.where(in_range, dl, zero)  # steps past the sequence end are identities
  zt = None
  if cfg.has_z:
    zt = plt.load(z_ref.at[b, token, pl.ds(cz0, tile)]).astype(jnp.float32)
  write_pos = token if cfg.write_at_tokens else t_safe
  write_ok = real if cfg.write_at_tokens else in_range
  return dict(u=u, pre=pre, dl=dl, bt=bt, ct=ct, zt=zt, token=token, real=real,
              in_range=in_range, write_pos=write_pos, write_ok=write_ok)


def _program_coords(cfg, tile, per_group, u_channels, z_channels):
  b = pl.program_id(0)
  j = pl.program_id(1)
  c0 = j * tile
  group = c0 // per_group
  return b, j, c0, group, c0 % u_channels, c0 % z_channels


def _forward_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  refs = list(refs)
  index_ref = refs.pop(0) if cfg.read_index is not None else None
  u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref = refs[:7]
  z_ref = refs[7] if cfg.has_z else None
  out_ref, ckpt_ref, last_ref = refs[-3:]
  tile = cfg.tile
  b, _, c0, group, cu0, cz0 = _program_coords(cfg, tile, per_group, u_channels, z_channels)
  a2 = a_ref[pl.ds(c0, tile), :]                    # A * log2(e), [tile, N] fp32
  d = d_ref[pl.ds(c0, tile)]
  bias = bias_ref[pl.ds(c0, tile)]
  step_refs = (u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref, bias)

  def chunk_body(ci, h):
    ckpt_ref[b, ci, pl.ds(c0, tile), :] = h
    for i in range(cfg.chunk):
      s = _step_inputs(cfg, step_refs, b, group, c0, cu0, cz0, tile, ci * cfg.chunk + i)
      decay = _exp2(s["dl"][:, None] * a2, cfg)
      h = decay * h + (s["dl"] * s["u"])[:, None] * s["bt"][None, :]
      y = jnp.sum(h * s["ct"][None, :], axis=1) + d * s["u"]
      if cfg.has_z:
        y = y * s["zt"] * _sigmoid(s["zt"])
      mask = jnp.broadcast_to(s["write_ok"], (tile,))
      plt.store(out_ref.at[b, s["write_pos"], pl.ds(c0, tile)], y.astype(out_ref.dtype),
                mask=mask)
    return h

  h0 = jnp.zeros((tile, a2.shape[1]), jnp.float32)
  h = jax.lax.fori_loop(0, num_chunks, chunk_body, h0)
  last_ref[b, pl.ds(c0, tile), :] = h


def _backward_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  refs = list(refs)
  index_ref = refs.pop(0) if cfg.read_index is not None else None
  u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref = refs[:7]
  refs = refs[7:]
  z_ref = refs.pop(0) if cfg.has_z else None
  dout_ref, dlast_ref, ckpt_ref = refs[:3]
  refs = refs[3:]
  du_ref, ddelta_ref = refs[:2]
  refs = refs[2:]
  dz_ref = refs.pop(0) if cfg.has_z else None
  db_ref, dc_ref, da_ref, dd_ref, dbias_ref = refs
  tile = cfg.bwd_tile
  b, j, c0, group, cu0, cz0 = _program_coords(cfg, tile, per_group, u_channels, z_channels)
  a2 = a_ref[pl.ds(c0, tile), :]
  a_nat = a2 * LN_2
  d = d_ref[pl.ds(c0, tile)]
  bias = bias_ref[pl.ds(c0, tile)]
  step_refs = (u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref, bias)
  num_state = a2.shape[1]

  def chunk_body(ci, carry):
    g_next, da_acc, dd_acc, dbias_acc = carry   # g_next = exp(Delta_{t+1} A) g_{t+1}
    chunk_index = num_chunks - 1 - ci
    h = ckpt_ref[b, chunk_index, pl.ds(c0, tile), :]
    steps, states = [], []
    for i in range(cfg.chunk):                   # recompute the chunk's states
      s = _step_inputs(cfg, step_refs, b, group, c0, cu0, cz0, tile,
                       chunk_index * cfg.chunk + i)
      h = _exp2(s["dl"][:, None] * a2, cfg) * h + (s["dl"] * s["u"])[:, None] * s["bt"][None, :]
      steps.append(s)
      states.append(h)
    for i in reversed(range(cfg.chunk)):         # adjoint recurrence through them
      s, h = steps[i], states[i]
      u, dl, bt, ct = s["u"], s["dl"], s["bt"], s["ct"]
      dout = plt.load(dout_ref.at[b, s["write_pos"], pl.ds(c0, tile)]).astype(jnp.float32)
      dout = jnp.where(s["write_ok"], dout, 0.0)
      store_mask = jnp.broadcast_to(s["real"], (tile,))
      if cfg.has_z:
        zt = s["zt"]
        sig = _sigmoid(zt)
        y = jnp.sum(h * ct[None, :], axis=1) + d * u
        dz = dout * y * sig * (1.0 + zt * (1.0 - sig))
        plt.store(dz_ref.at[b, s["token"], pl.ds(c0, tile)], dz.astype(dz_ref.dtype),
                  mask=store_mask)
        dy = dout * zt * sig
      else:
        dy = dout
      g = g_next + dy[:, None] * ct[None, :]
      dlu = dl * u
      # dL/dDelta_t = sum_n g (B u + A exp(Delta A) h_{t-1}), dL/dA = sum_t g Delta exp(..) h_{t-1},
      # with exp(Delta_t A) h_{t-1} = h_t - Delta_t B_t u_t: one product serves both.
      g_decayed_prev = g * (h - dlu[:, None] * bt[None, :])
      da_acc = da_acc + dl[:, None] * g_decayed_prev
      gb = jnp.sum(g * bt[None, :], axis=1)
      ddl = u * gb + jnp.sum(a_nat * g_decayed_prev, axis=1)
      du = gb * dl + d * dy
      dd_acc = dd_acc + dy * u
      dpre = ddl * _sigmoid(s["pre"]) if cfg.softplus else ddl
      dpre = jnp.where(s["in_range"], dpre, 0.0)
      dbias_acc = dbias_acc + dpre
      plt.store(du_ref.at[b, s["token"], pl.ds(c0, tile)], du.astype(du_ref.dtype),
                mask=store_mask)
      plt.store(ddelta_ref.at[b, s["token"], pl.ds(c0, tile)], dpre.astype(ddelta_ref.dtype),
                mask=store_mask)
      n_mask = jnp.broadcast_to(s["real"], (num_state,))
      plt.store(db_ref.at[b, s["token"], j, :], jnp.sum(g * dlu[:, None], axis=0),
                mask=n_mask)
      plt.store(dc_ref.at[b, s["token"], j, :], jnp.sum(dy[:, None] * h, axis=0), mask=n_mask)
      g_next = g * _exp2(dl[:, None] * a2, cfg)
    return g_next, da_acc, dd_acc, dbias_acc

  zeros_tn = jnp.zeros((tile, num_state), jnp.float32)
  zeros_t = jnp.zeros((tile,), jnp.float32)
  g0 = dlast_ref[b, pl.ds(c0, tile), :]
  _, da_acc, dd_acc, dbias_acc = jax.lax.fori_loop(
      0, num_chunks, chunk_body, (g0, zeros_tn, zeros_t, zeros_t))
  da_ref[b, pl.ds(c0, tile), :] = da_acc
  dd_ref[b, pl.ds(c0, tile)] = dd_acc
  dbias_ref[b, pl.ds(c0, tile)] = dbias_acc


# ----------------------------------------------------------------------------- pallas calls

def _compiler_params(num_warps):
  return plt.CompilerParams(num_warps=num_warps, num_stages=1)


def _common(cfg, u, delta, B, z):
  batch, _, u_channels = u.shape
  channels = delta.shape[2]
  groups, num_state = B.shape[2], B.shape[3]
  z_channels = z.shape[2] if z is not None else channels
  num_chunks = -(-cfg.seq_len // cfg.chunk)
  index = () if cfg.read_index is None else (jnp.asarray(cfg.read_index.array),)
  return batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index


def _forward_call(cfg, u, delta, a2, B, C, D, bias, z):
  batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index = _common(
      cfg, u, delta, B, z)
  out_len = delta.shape[1] if cfg.write_at_tokens else cfg.seq_len
  kernel = functools.partial(_forward_kernel, cfg=cfg, per_group=channels // groups,
                             u_channels=u_channels, z_channels=z_channels,
                             num_chunks=num_chunks)
  out_shape = (jax.ShapeDtypeStruct((batch, out_len, channels), u.dtype),
               jax.ShapeDtypeStruct((batch, num_chunks, channels, num_state), jnp.float32),
               jax.ShapeDtypeStruct((batch, channels, num_state), jnp.float32))
  args = index + (u, delta, a2, B, C, D, bias) + ((z,) if cfg.has_z else ())
  return pl.pallas_call(kernel, out_shape=out_shape, grid=(batch, channels // cfg.tile),
                        interpret=cfg.interpret, name="selective_scan_fwd",
                        compiler_params=_compiler_params(cfg.num_warps))(*args)


def _backward_call(cfg, u, delta, a2, B, C, D, bias, z, dout, dlast, ckpt):
  batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index = _common(
      cfg, u, delta, B, z)
  tokens = delta.shape[1]
  num_tiles = channels // cfg.bwd_tile
  kernel = functools.partial(_backward_kernel, cfg=cfg, per_group=channels // groups,
                             u_channels=u_channels, z_channels=z_channels,
                             num_chunks=num_chunks)
  f32 = jnp.float32
  out_shape = [jax.ShapeDtypeStruct((batch, tokens, channels), u.dtype),
               jax.ShapeDtypeStruct((batch, tokens, channels), delta.dtype)]
  if cfg.has_z:
    out_shape.append(jax.ShapeDtypeStruct((batch, tokens, channels), z.dtype))
  out_shape += [jax.ShapeDtypeStruct((batch, tokens, num_tiles, num_state), f32),
                jax.ShapeDtypeStruct((batch, tokens, num_tiles, num_state), f32),
                jax.ShapeDtypeStruct((batch, channels, num_state), f32),
                jax.ShapeDtypeStruct((batch, channels), f32),
                jax.ShapeDtypeStruct((batch, channels), f32)]
  args = index + (u, delta, a2, B, C, D, bias) + ((z,) if cfg.has_z else ()) + (
      dout, dlast, ckpt)
  return pl.pallas_call(kernel, out_shape=tuple(out_shape), grid=(batch, num_tiles),
                        interpret=cfg.interpret, name="selective_scan_bwd",
                        compiler_params=_compiler_params(cfg.bwd_num_warps))(*args)


# ----------------------------------------------------------------------------- custom_vjp

def _fold_to(x_channels: int, grad):
  """Sums a per-channel gradient [b, T, C] over the groups that share an input of x_channels."""
  batch, tokens, channels = grad.shape
  if channels == x_channels:
    return grad
  folded = grad.astype(jnp.float32).reshape(batch, tokens, channels // x_channels, x_channels)
  return folded.sum(axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, u, delta, A, B, C, D, bias, z):
  out, _, last = _forward_call(cfg, u, delta, A * LOG2_E, B, C, D, bias, z)
  return out, last


def _scan_fwd(cfg, u, delta, A, B, C, D, bias, z):
  out, ckpt, last = _forward_call(cfg, u, delta, A * LOG2_E, B, C, D, bias, z)
  return (out, last), (u, delta, A, B, C, D, bias, z, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
  u, delta, A, B, C, D, bias, z, ckpt = residuals
  dout, dlast = cotangents
  grads = list(_backward_call(cfg, u, delta, A * LOG2_E, B, C, D, bias, z,
                              dout.astype(u.dtype), dlast.astype(jnp.float32), ckpt))
  du, ddelta = grads[:2]
  dz = grads[2] if cfg.has_z else None
  db_part, dc_part, da_part, dd_part, dbias_part = grads[-5:]
  batch, tokens, num_tiles, num_state = db_part.shape
  groups = B.shape[2]
  fold_tiles = lambda p: p.reshape(batch, tokens, groups, num_tiles // groups,
                                   num_state).sum(axis=3)
  du = _fold_to(u.shape[2], du).astype(u.dtype)
  if dz is not None:
    dz = _fold_to(z.shape[2], dz).astype(z.dtype)
  return (du, ddelta, da_part.sum(0).astype(A.dtype), fold_tiles(db_part).astype(B.dtype),
          fold_tiles(dc_part).astype(C.dtype), dd_part.sum(0).astype(D.dtype),
          dbias_part.sum(0).astype(bias.dtype), dz)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------- public entry

def _check_index(read_index: np.ndarray, groups: int, tokens: int):
  read_index = np.asarray(read_index)
  if read_index.ndim != 2 or read_index.shape[0] != groups:
    raise ValueError(f"selective_scan_pallas: read_index must have shape [groups={groups}, "
                     f"L_seq], got {read_index.shape}.")
  for g, row in enumerate(read_index):
    real = np.sort(row[row >= 0])
    if not np.array_equal(real, np.arange(tokens)):
      raise ValueError(
          f"selective_scan_pallas: read_index row {g} must visit each of the {tokens} tokens "
          f"exactly once (plus -1 pads); the backward writes each token's gradient once.")


def selective_scan_pallas(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                          delta_softplus=False, read_index=None, write_at_tokens=True,
                          return_last_state=False, chunk=DEFAULT_CHUNK, tile=None,
                          bwd_tile=None, num_warps=None, bwd_num_warps=None, interpret=None):
  """The selective scan as Pallas kernels (fwd + custom-VJP bwd).

  u: [b, T, Cu] where Cu = C, or Cu divides C (one u shared by the C // Cu groups of
     channels; LocalVMamba's K directions reading the same x); z likewise (optional).
  delta: [b, T, C]; A: [C, N]; B, C: [b, T, G, N]; D, delta_bias: [C] or None.
  read_index: optional int [G, L_seq] (numpy, static): token read by step s of group g,
     -1 for a pad (decay-only) step. None = identity (L_seq = T).
  write_at_tokens: with read_index, write outputs at the token read (True) or in scan
     order [b, L_seq, C] (False, for a non-inverse merge done by the caller).
  interpret: None = interpret mode unless the default backend is a GPU.
  Returns out (and the last state [b, C, N] fp32 if return_last_state).
  """
  if not _HAVE_PALLAS_TRITON:
    raise ValueError("selective_scan_pallas: jax.experimental.pallas.triton is not available "
                     "in this jax; use impl='associative'.")
  batch, tokens, channels = delta.shape
  groups, num_state = B.shape[2], B.shape[3]
  for name, x in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
    if x is not None and jnp.dtype(x.dtype) not in map(jnp.dtype, _SUPPORTED_DTYPES):
      raise ValueError(f"selective_scan_pallas: {name} has dtype {x.dtype}; the kernel takes "
                       f"float32, bfloat16 or float16 (use impl='reference' for float64).")
  if num_state & (num_state - 1):
    raise ValueError(f"selective_scan_pallas: N must be a power of two (Triton register "
                     f"shapes), got N={num_state}; use impl='associative'.")
  per_group = channels // groups
  if read_index is None:
    seq_len = tokens
    static_index = None
    write_at_tokens = True
  else:
    _check_index(read_index, groups, tokens)
    seq_len = int(np.asarray(read_index).shape[1])
    static_index = _StaticIndex(read_index)
  cap = lambda t, default: _largest_pow2_divisor(per_group, t or default)
  fwd_tile, bwd_t = cap(tile, DEFAULT_TILE), cap(bwd_tile, DEFAULT_BWD_TILE)
  for name, x in (("u", u), ("z", z)):
    if x is not None and (channels % x.shape[2] or x.shape[2] % max(fwd_tile, bwd_t)):
      raise ValueError(f"selective_scan_pallas: {name} has {x.shape[2]} channels; it must have "
                       f"the {channels} channels of delta or a divisor of them shared by groups "
                       f"of channels.")
  if interpret is None:
    interpret = not on_gpu()
  cfg = _Config(seq_len=seq_len, chunk=max(1, min(int(chunk), seq_len)), tile=fwd_tile,
                bwd_tile=bwd_t, softplus=bool(delta_softplus), has_z=z is not None,
                read_index=static_index, write_at_tokens=bool(write_at_tokens),
                num_warps=num_warps or (1 if fwd_tile <= 32 else 2),
                bwd_num_warps=bwd_num_warps or (1 if bwd_t <= 16 else 2),
                interpret=bool(interpret))
  f32 = jnp.float32
  D = jnp.zeros((channels,), f32) if D is None else D.astype(f32)
  bias = jnp.zeros((channels,), f32) if delta_bias is None else delta_bias.astype(f32)
  out, last = _scan(cfg, u, delta, A.astype(f32), B, C, D, bias, z)
  return (out, last) if return_last_state else out


def merge_is_inverse(gather: np.ndarray, merge: np.ndarray) -> bool:
  """True when every direction's merge reads back exactly the position its token was read at."""
  gather, merge = np.asarray(gather), np.asarray(merge)
  tokens = np.arange(merge.shape[1])
  return all(np.array_equal(g[m], tokens) for g, m in zip(gather, merge))


def multi_direction_scan_pallas(u, delta, A, B, C, D, delta_bias, z, *, gather, merge,
                                delta_softplus=True, chunk=DEFAULT_CHUNK, interpret=None,
                                **kernel_options):
  """LocalVMamba's multi-direction scan with the scan order fused into the kernel.

  Shapes as `ops.multi_direction.multi_direction_selective_scan` (already validated there):
  u [b, HW, E] or [b, HW, K, E], delta [b, HW, K, E], A [K, E, N], B/C [b, HW, K, N],
  D/delta_bias [K, E] or None, z like u or None; gather [K, Lmax], merge [K, HW] (numpy).
  Returns [b, HW, K, E].
  """
  num_dirs, channels, num_state = A.shape
  batch, tokens = delta.shape[:2]
  flat = lambda x: None if x is None else (x.reshape(batch, tokens, -1) if x.ndim == 4 else x)
  vec = lambda x: None if x is None else x.reshape(-1)
  # The official v/v_flip merge on a non-square grid is not the inverse of its gather
  # (reference doc Sec. 2; kept for parity): then the kernel writes in scan order and the
  # merge runs as an XLA gather. Everywhere else the kernel writes each output at its token.
  exact = merge_is_inverse(gather, merge)
  out = selective_scan_pallas(
      flat(u), flat(delta), A.reshape(num_dirs * channels, num_state), B, C, vec(D), flat(z),
      vec(delta_bias), delta_softplus=delta_softplus, read_index=gather, write_at_tokens=exact,
      chunk=chunk, interpret=interpret, **kernel_options)
  if exact:
    return out.reshape(batch, tokens, num_dirs, channels)
  out = out.reshape(batch, out.shape[1], num_dirs, channels)
  merge = np.asarray(merge)
  return out[:, merge.T, np.arange(num_dirs)[None, :]]

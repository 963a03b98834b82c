"""The selective scan (Mamba's S6 recurrence) with grouped B/C, behind one interface.

Math (mamba's `selective_scan_ref`, reference doc Sec. 7), per batch b, channel d, state n:

    Delta_t = softplus(delta_t + delta_bias_d)        (softplus and bias optional)
    h_t[n]  = exp(Delta_t * A[d, n]) * h_{t-1}[n] + Delta_t * B_t[g(d), n] * u_t      h_{-1} = 0
    y_t     = sum_n C_t[g(d), n] * h_t[n] + D_d * u_t
    out_t   = y_t * silu(z_t)                         (gate optional)

Layout is channels-last, which is what the models produce and what the kernels read:
    u, delta, z: [batch, L, channels]      A: [channels, N]
    B, C:        [batch, L, groups, N]  (or [batch, L, N] for one group);
                 channel d uses group d // (channels / groups), so LocalVMamba's K
                 directions stacked as channels k * E + e use group k, as in the reference.
    D, delta_bias: [channels]

Precision policy: the state, the discretisation and all accumulation run in float32
whatever the input dtype (as mamba's kernel does; LocalVMamba even casts its inputs to
fp32). Inputs in float64 compute in float64 (used by the tests' float64 references).
The output has the dtype of `u`, like mamba's `selective_scan_ref`; the optional last
state is returned in the compute dtype.

Implementations (`impl=`):
    "reference"    `lax.scan` over L, one step at a time: the readable definition.
    "associative"  `lax.associative_scan` inside chunks of `chunk_size` steps, a `lax.scan`
                   carrying the state across chunks. Only one chunk's [batch, chunk, channels,
                   N] states exist at a time, and the chunk body is rematerialised in the
                   backward pass, so memory stays O(batch * L * channels) like the inputs.
    "pallas_gpu"   Pallas (Triton backend) kernels, forward + backward (ops/kernels/
                   selective_scan_gpu.py); off a GPU it runs in Pallas interpret mode (slow,
                   for tests).
    "pallas_tpu"   Pallas TPU (Mosaic) kernels, forward + backward (ops/kernels/
                   selective_scan_tpu.py); off a TPU it runs in TPU interpret mode (slow,
                   for tests).
    "auto"         "pallas_gpu" on a GPU where the kernel covers the problem (N a power of
                   two, fp32/bf16/fp16 inputs), "pallas_tpu" on a TPU (fp32/bf16/fp16
                   inputs), else "associative".
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "reference", "associative", "pallas_gpu", "pallas_tpu")
DEFAULT_CHUNK_SIZE = 128


def _shape_error(name, value, expected):
  shape = getattr(value, "shape", None)
  return ValueError(f"selective_scan: {name} must have shape {expected}, got "
                    f"{'a ' + type(value).__name__ if shape is None else tuple(shape)}.")


def _normalize_groups(name, x, batch, length, num_state):
  shape = getattr(x, "shape", None)
  if shape is not None and len(shape) == 3:
    x = x[:, :, None, :]
  if x is None or getattr(x, "ndim", 0) != 4 or x.shape[0] != batch or x.shape[1] != length \
      or x.shape[3] != num_state:
    raise _shape_error(name, x, f"[batch={batch}, L={length}, groups, N={num_state}] "
                       f"or [batch, L, N]")
  return x


def check_selective_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None):
  """Validates shapes; returns B and C as [batch, L, groups, N]."""
  if getattr(u, "ndim", None) != 3:
    raise _shape_error("u", u, "[batch, L, channels]")
  batch, length, channels = u.shape
  if getattr(delta, "shape", None) != u.shape:
    raise _shape_error("delta", delta, f"{tuple(u.shape)} (the shape of u)")
  if getattr(A, "ndim", None) != 2 or A.shape[0] != channels:
    raise _shape_error("A", A, f"[channels={channels}, N]")
  num_state = A.shape[1]
  B = _normalize_groups("B", B, batch, length, num_state)
  C = _normalize_groups("C", C, batch, length, num_state)
  if B.shape[2] != C.shape[2]:
    raise ValueError(f"selective_scan: B and C must have the same number of groups, got "
                     f"{B.shape[2]} and {C.shape[2]}.")
  groups = B.shape[2]
  if channels % groups:
    raise ValueError(f"selective_scan: the {groups} groups of B/C must divide the {channels} "
                     f"channels of u (each group serves channels // groups channels).")
  for name, value in (("D", D), ("delta_bias", delta_bias)):
    if value is not None and getattr(value, "shape", None) != (channels,):
      raise _shape_error(name, value, f"[channels={channels}]")
  if z is not None and getattr(z, "shape", None) != u.shape:
    raise _shape_error("z", z, f"{tuple(u.shape)} (the shape of u)")
  return B, C


def compute_dtype(*arrays):
  """float32, or float64 when an input is float64 (see the precision policy above)."""
  dtypes = [a.dtype for a in arrays if a is not None]
  return jnp.promote_types(jnp.float32, jnp.result_type(*dtypes))


def discretize_delta(delta, delta_bias, delta_softplus, dtype):
  delta = delta.astype(dtype)
  if delta_bias is not None:
    delta = delta + delta_bias.astype(dtype)
  if delta_softplus:
    delta = jax.nn.softplus(delta)
  return delta


def finish_output(y, u, D, z, dtype):
  """y + D * u, gated by silu(z), cast to u's dtype."""
  if D is not None:
    y = y + u.astype(dtype) * D.astype(dtype)
  if z is not None:
    z = z.astype(dtype)
    y = y * (z * jax.nn.sigmoid(z))
  return y.astype(u.dtype)


def _reference_scan(u, delta, A, B, C, dtype):
  """lax.scan over time; returns y [b, L, d] (before D and gate) and the last state."""
  batch, length, channels = u.shape
  groups, num_state = B.shape[2], B.shape[3]
  per_group = channels // groups
  A = A.astype(dtype).reshape(groups, per_group, num_state)

  def step(h, xs):
    delta_t, u_t, b_t, c_t = xs  # [b, g, dg], [b, g, dg], [b, g, N], [b, g, N]
    h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * b_t[:, :, None, :]
    y_t = jnp.sum(h * c_t[:, :, None, :], axis=-1)
    return h, y_t

  time_major = lambda x: jnp.moveaxis(x.astype(dtype), 1, 0)
  xs = (time_major(delta).reshape(length, batch, groups, per_group),
        time_major(u).reshape(length, batch, groups, per_group), time_major(B), time_major(C))
  h0 = jnp.zeros((batch, groups, per_group, num_state), dtype)
  h_last, y = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(y, 0, 1).reshape(batch, length, channels), h_last.reshape(
      batch, channels, num_state)


def _combine(left, right):
  a_left, b_left = left
  a_right, b_right = right
  return a_left * a_right, a_right * b_left + b_right


def _associative_scan(u, delta, A, B, C, dtype, chunk_size):
  batch, length, channels = u.shape
  groups, num_state = B.shape[2], B.shape[3]
  per_group = channels // groups
  A = A.astype(dtype).reshape(groups, per_group, num_state)
  chunk = max(1, min(int(chunk_size), length))
  num_chunks = -(-length // chunk)
  padded = num_chunks * chunk
  # Trailing steps with Delta = 0 are identities (exp(0) = 1, no input), so padding to a
  # whole number of chunks changes neither the outputs nor the last state.
  def to_chunks(x):
    x = x.astype(dtype)
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((batch, num_chunks, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  xs = (to_chunks(delta).reshape(num_chunks, batch, chunk, groups, per_group),
        to_chunks(u).reshape(num_chunks, batch, chunk, groups, per_group), to_chunks(B),
        to_chunks(C))

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_step(h, xs):
    delta_c, u_c, b_c, c_c = xs
    decay = jnp.exp(delta_c[..., None] * A)                       # [b, T, g, dg, N]
    drive = (delta_c * u_c)[..., None] * b_c[:, :, :, None, :]     # [b, T, g, dg, N]
    decay_cum, drive_cum = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    states = decay_cum * h[:, None] + drive_cum
    y = jnp.sum(states * c_c[:, :, :, None, :], axis=-1)           # [b, T, g, dg]
    return states[:, -1], y

  h0 = jnp.zeros((batch, groups, per_group, num_state), dtype)
  h_last, y = jax.lax.scan(chunk_step, h0, xs)
  y = jnp.moveaxis(y, 0, 1).reshape(batch, padded, channels)[:, :length]
  return y, h_last.reshape(batch, channels, num_state)


def kernel_recompute(impl: str, recompute: bool):
  """How a kernel scan (impl 'pallas_gpu' / 'pallas_tpu') honours `recompute`: returns
  (extra kernel options, a wrapper for the call). The GPU kernel rebuilds only its state
  checkpoints itself (one states-only forward in its VJP: `recompute_checkpoints`); the TPU
  kernel is recomputed whole under jax.checkpoint, except in interpret mode (CPU tests):
  jax.checkpoint cannot partially evaluate the interpreter's IO callbacks, and there is no
  device memory to save there. Values and gradients are the same either way."""
  keep = lambda call: call
  if not recompute:
    return {}, keep
  if impl == "pallas_gpu":
    return {"recompute_checkpoints": True}, keep
  from localmamba_jax.ops.kernels import selective_scan_tpu
  return {}, keep if selective_scan_tpu.interprets_by_default() else jax.checkpoint


_WARNED_NO_GPU_KERNELS = False


def _warn_no_gpu_kernels() -> None:
  """Once per process: on a GPU, "auto" would run the Pallas GPU kernels, but this jax has no
  Pallas Triton backend (deprecated in jax 0.11 for Mosaic GPU, to be removed later), so
  every op falls back to XLA. Silent, that would be a training run several times slower."""
  global _WARNED_NO_GPU_KERNELS
  if _WARNED_NO_GPU_KERNELS:
    return
  _WARNED_NO_GPU_KERNELS = True
  import warnings
  warnings.warn(
      f"jax {jax.__version__} has no Pallas Triton backend (jax.experimental.pallas.triton, "
      "deprecated since jax 0.11), so localmamba_jax's GPU kernels are off: the selective "
      "scan, the LayerNorm backward and the depthwise conv's backward run on XLA's paths. The "
      "results agree to float32 rounding, but the scans are about 10x slower (BENCHMARKS.md). "
      "Install a jax that still has it (0.10 and 0.11 are tested), e.g. "
      "pip install 'jax[cuda13]<0.12'.", RuntimeWarning, stacklevel=3)


def resolve_impl(impl: str, kernel_supported: bool = False, tpu_supported: bool = False) -> str:
  """`kernel_supported`: the Pallas GPU kernel covers the problem (see kernels.is_supported);
  `tpu_supported`: the Pallas TPU kernel does (selective_scan_tpu.is_supported)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"selective_scan: unknown impl {impl!r}; allowed: {IMPLEMENTATIONS}.")
  if impl == "auto":
    from localmamba_jax.ops.kernels import selective_scan_gpu, selective_scan_tpu
    if tpu_supported and selective_scan_tpu.on_tpu():
      return "pallas_tpu"
    if selective_scan_gpu.on_gpu() and not selective_scan_gpu._HAVE_PALLAS_TRITON:
      _warn_no_gpu_kernels()
    return "pallas_gpu" if kernel_supported and selective_scan_gpu.on_gpu() else "associative"
  return impl


def resolved_path(impl: str, channels: int, groups: int, num_state: int, dtypes) -> str:
  """The implementation `selective_scan(..., impl=impl)` runs for `channels` channels in
  `groups` B/C groups with N=num_state states and inputs of `dtypes`: 'pallas_gpu',
  'pallas_tpu' or an XLA path ('auto' falls back to 'associative' where no kernel covers
  the shapes). `multi_direction_selective_scan` resolves the same way, with K*E channels in
  K groups."""
  from localmamba_jax.ops.kernels import selective_scan_gpu, selective_scan_tpu
  dtypes = list(dtypes)
  return resolve_impl(impl,
                      selective_scan_gpu.is_supported(channels, groups, num_state, dtypes),
                      selective_scan_tpu.is_supported(channels, groups, num_state, dtypes))


def _save_all_but_projections(prim, *_, **params) -> bool:
  return prim.name not in ("dot_general", "transpose", "reshape")


def recompute_delta_projection(delta_then_scan, path: str):
  """`delta_then_scan` (Delta = a low-rank projection of dt, then a scan with
  `recompute=True`) such that the backward recomputes Delta instead of keeping it, where the
  scan runs the GPU kernel (`path`, from `resolved_path`, is 'pallas_gpu'); elsewhere it is
  returned as is. There the kernel keeps only its inputs, and Delta is the largest
  ([b, L, channels] against dt's [b, L, groups, R]): jax.checkpoint keeps everything the
  function computes except its matrix products, transposes and reshapes, so Delta is
  recomputed from dt (which the projection's own backward keeps anyway) by one small GEMM.
  Reshapes cost nothing to redo (bitcasts in XLA); left saveable, the kernel's flattened view
  of Delta would be kept in Delta's place. The other paths wrap the whole scan in
  jax.checkpoint, whose inner values this policy would save. Same values and gradients: the
  same einsum of the same inputs."""
  if path != "pallas_gpu":
    return delta_then_scan
  return jax.checkpoint(delta_then_scan, policy=_save_all_but_projections)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                   delta_softplus: bool = False, return_last_state: bool = False,
                   impl: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                   recompute: bool = False):
  """Runs the selective scan; see the module docstring for shapes, math and dtypes.

  recompute: under differentiation, keep only the inputs for the backward and recompute the
  scan's forward there (the GPU kernel: its state checkpoints, b * L / 4..8 * C * N float32;
  the XLA paths: the states at their chunk boundaries) instead of keeping what the forward
  computed. Same values and gradients; less memory between forward and backward, one more
  forward per scan. No effect without a backward.

  Returns out [batch, L, channels] (dtype of u), and the last state
  [batch, channels, N] when `return_last_state`.
  """
  B, C = check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias)
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"selective_scan: chunk_size must be an integer >= 1, got {chunk_size!r}.")
  impl = resolved_path(impl, u.shape[2], B.shape[2], A.shape[1],
                       [x.dtype for x in (u, delta, B, C, z) if x is not None])
  if impl in ("pallas_tpu", "pallas_gpu"):
    from localmamba_jax.ops.kernels import common, selective_scan_gpu, selective_scan_tpu
    kernel = (selective_scan_tpu.selective_scan_pallas_tpu if impl == "pallas_tpu"
              else selective_scan_gpu.selective_scan_pallas)

    options, wrap = kernel_recompute(impl, recompute)

    @wrap
    def call(u, delta, A, B, C, D, z, delta_bias):
      return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus,
                    return_last_state=return_last_state, **options)
    # Under a device mesh the kernel runs per batch shard (common.shard_over_batch).
    return common.shard_over_batch(call, u, delta, A, B, C, D, z, delta_bias,
                                   batched=(True, True, False, True, True, False, True, False))
  core = functools.partial(selective_scan_core, delta_softplus=delta_softplus, impl=impl,
                           chunk_size=chunk_size)
  if recompute:
    core = jax.checkpoint(core)
  out, last_state = core(u, delta, A, B, C, D, z, delta_bias)
  return (out, last_state) if return_last_state else out


# Jitted under its own name so that a traced program shows each XLA-path scan as one call
# (`jit[name=selective_scan_core]`, u first, A third): models/flops.py counts the scan
# analytically from that call and skips its inside. Nested jits are inlined by XLA.
@functools.partial(jax.jit, static_argnames=("delta_softplus", "impl", "chunk_size"))
def selective_scan_core(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus, impl,
                        chunk_size):
  """The "reference"/"associative" math on validated [batch, L, groups, N] B/C;
  returns (out, last_state)."""
  dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
  delta = discretize_delta(delta, delta_bias, delta_softplus, dtype)
  if impl == "reference":
    y, last_state = _reference_scan(u, delta, A, B, C, dtype)
  else:
    y, last_state = _associative_scan(u, delta, A, B, C, dtype, chunk_size)
  return finish_output(y, u, D, z, dtype), last_state

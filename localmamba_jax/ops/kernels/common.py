"""Pieces the Pallas kernels (the GPU and TPU selective scans, the GPU row kernels) share."""
from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from localmamba_jax.ops.scan_orders import merge_is_inverse  # noqa: F401 (kernels' entry point)


# The platform named by `traced_for`, if any (None: JAX's default backend).
_TRACED_FOR = contextvars.ContextVar("localmamba_traced_for", default=None)


def target_platform() -> str:
  """The platform the ops are traced for: "cpu", "gpu" or "tpu". JAX's default backend, unless
  `traced_for` names another. The ops choose their implementations ("auto") and whether a
  Pallas kernel runs interpreted at trace time, before JAX knows where the program will be
  lowered, so a program exported for another platform must say so while it is traced."""
  named = _TRACED_FOR.get()
  if named is not None:
    return named
  try:
    return jax.default_backend()
  except RuntimeError:  # pragma: no cover
    return "cpu"


@contextlib.contextmanager
def traced_for(platform: str):
  """Traces the ops as for `platform` ("cpu", "gpu" or "tpu") whatever this host's default
  backend, e.g. around `jax.export(..., platforms=["tpu"])` on a GPU host: "auto" then picks
  that platform's implementations, and its kernels are traced compiled (not interpreted)."""
  if platform not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"traced_for: platform must be 'cpu', 'gpu' or 'tpu', got {platform!r} "
                     "(JAX's 'cuda' and 'rocm' are 'gpu' here).")
  token = _TRACED_FOR.set(platform)
  try:
    yield
  finally:
    _TRACED_FOR.reset(token)


def on_gpu() -> bool:
  """Whether the ops are traced for a GPU (the GPU kernels then run compiled, not
  interpreted, and "auto" picks them)."""
  return target_platform() == "gpu"


def largest_pow2_divisor(n: int, cap: int) -> int:
  """The largest power of two that divides n and is at most cap (Triton block sizes)."""
  t = 1
  while t * 2 <= cap and n % (t * 2) == 0:
    t *= 2
  return t


class StaticIndex:
  """A numpy int32 index table usable as a static (hashable) argument of a custom_vjp."""

  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array, dtype=np.int32)
    self._key = (self.array.shape, self.array.tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StaticIndex) and self._key == other._key


def fold_to(x_channels: int, grad):
  """Sums a per-channel gradient [b, T, C] over the groups that share an input of x_channels."""
  batch, tokens, channels = grad.shape
  if channels == x_channels:
    return grad
  folded = grad.astype(jnp.float32).reshape(batch, tokens, channels // x_channels, x_channels)
  return folded.sum(axis=2)


def check_read_index(read_index: np.ndarray, groups: int, tokens: int, who: str):
  """A gather table [groups, L_seq] must visit each token exactly once per group (plus -1 pads):
  each kernel's backward writes every token's gradient once."""
  read_index = np.asarray(read_index)
  if read_index.ndim != 2 or read_index.shape[0] != groups:
    raise ValueError(f"{who}: read_index must have shape [groups={groups}, L_seq], got "
                     f"{read_index.shape}.")
  for g, row in enumerate(read_index):
    if not np.array_equal(np.sort(row[row >= 0]), np.arange(tokens)):
      raise ValueError(
          f"{who}: read_index row {g} must visit each of the {tokens} tokens exactly once "
          f"(plus -1 pads); the backward writes each token's gradient once.")


def fused_multi_direction_scan(scan, u, delta, A, B, C, D, delta_bias, z, *, gather, merge,
                               exact=None, **options):
  """LocalVMamba's multi-direction scan on a kernel `scan` that reads through `read_index`.

  Shapes as `ops.multi_direction.multi_direction_selective_scan` (validated there):
  u [b, HW, E] or [b, HW, K, E], delta [b, HW, K, E], A [K, E, N], B/C [b, HW, K, N],
  D/delta_bias [K, E] or None, z like u or None; gather [K, Lmax], merge [K, HW] (numpy, or
  jax arrays when the tables are data; then `exact`, whether merge inverts gather, must be given).
  Returns [b, HW, K, E]. The K directions run as K * E channels with B/C group k.
  """
  from localmamba_jax.ops.multi_direction import merge_tokens
  num_dirs, channels, num_state = A.shape
  batch, tokens = delta.shape[:2]
  flat = lambda x: None if x is None else (x.reshape(batch, tokens, -1) if x.ndim == 4 else x)
  vec = lambda x: None if x is None else x.reshape(-1)
  # The official v/v_flip merge on a non-square grid is not the inverse of its gather
  # (reference doc Sec. 2; kept for parity): then the kernel writes in scan order and the
  # merge runs as an XLA gather. Everywhere else the kernel writes each output at its token.
  if exact is None:
    exact = merge_is_inverse(gather, merge)
  out = scan(flat(u), flat(delta), A.reshape(num_dirs * channels, num_state), B, C, vec(D),
             flat(z), vec(delta_bias), read_index=gather, write_at_tokens=exact, **options)
  out = out.reshape(batch, out.shape[1], num_dirs, channels)
  return out if exact else merge_tokens(out, merge)


def shard_over_batch(kernel, *args, batched):
  """Runs `kernel(*args)` once per batch shard of the context mesh (`jax.set_mesh`).

  A Pallas kernel is an opaque custom call to XLA's SPMD partitioner, which therefore
  gathers sharded operands and runs the call on the whole global batch on every device:
  N times the work, and the memory of the global batch on each device. Under a mesh, the
  kernel is called through `jax.shard_map` instead: the batch (axis 0 of the args marked
  in `batched`, and of every output) is split over all axes of the mesh, as
  `training.sharding` shards it; the other args (parameters, index tables) are replicated,
  and their gradients are summed over the shards by shard_map's transpose. Without a mesh,
  on one device, or when the batch does not divide by the mesh size, the kernel is called
  as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(*args)
  batch = next(a.shape[0] for a, b in zip(args, batched) if b and a is not None)
  if batch % mesh.size:
    return kernel(*args)
  axes = tuple(mesh.axis_names)
  in_specs = tuple(P(axes) if b else P() for b in batched)
  # check_vma=False: pallas_call carries no varying-manual-axes typing; outputs are
  # declared batch-sharded, which every kernel output is (leading batch axis).
  return jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=P(axes),
                       check_vma=False)(*args)

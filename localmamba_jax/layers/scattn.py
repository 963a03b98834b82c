"""SCAttn, the paper's spatial and channel attention on each scan branch (paper Sec. 3.3).

The released code (class `BiAttn`) keeps only the channel half: the spatial half
(`local_reduce`, `spatial_select`) is commented out there, and the released checkpoints
have no spatial parameters. `spatial=False` (default) reproduces the released code;
`spatial=True` adds the paper's spatial gate.

One SCAttn is shared by all branches of a mixer and applied to each branch separately
(reference doc Sec. 3.1): input [batch, L, E] or [batch, L, K, E] (K branches), the mean
is over L only, so each branch gets its own channel gate.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from localmamba_jax.layers.norms import layer_norm, pooled_layer_norm
from localmamba_jax.ops.kernels import row_norm_gpu


def gelu_exact(x):
  """torch.nn.GELU(): the erf form, not Flax's default tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


class SCAttn(nnx.Module):
  """x * sigmoid(channel_select(gelu(global_reduce(mean_L(LN(x))))))  [* spatial gate]."""

  def __init__(self, channels: int, *, reduction: float = 0.125, spatial: bool = False,
               rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.truncated_normal(0.02)):
    reduced = int(channels * reduction)
    if reduced < 1:
      raise ValueError(f"SCAttn: int(channels * reduction) = int({channels} * {reduction}) is 0; "
                       f"use at least {int(1 / reduction)} channels or a larger reduction.")
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype,
                                     kernel_init=kernel_init, rngs=rngs)
    self.spatial = spatial
    self.norm = layer_norm(channels, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.global_reduce = linear(channels, reduced)
    self.channel_select = linear(reduced, channels)
    if spatial:
      self.local_reduce = linear(channels, reduced)
      self.spatial_select = linear(2 * reduced, 1)

  def __call__(self, x):
    if not self.spatial:
      # The channel gate needs only the mean over L of the normalised x: computed without
      # writing the normalised x (or keeping it for the backward), in float32 as the
      # official LayerNorm runs under autocast (layers.norms.pooled_layer_norm).
      mean_normed = pooled_layer_norm(x, self.norm.scale[...], self.norm.bias[...],
                                      epsilon=self.norm.epsilon)
      return x * self.gate(mean_normed).astype(x.dtype)             # gate [b, 1, (K,) E]
    normed = self.norm(x)
    mean_normed = jnp.mean(normed, axis=1, keepdims=True)
    pooled = gelu_exact(self.global_reduce(mean_normed))
    attn = jax.nn.sigmoid(self.channel_select(pooled))                # [b, 1, (K,) E]
    local = gelu_exact(self.local_reduce(normed))                     # [b, L, (K,) r]
    both = jnp.concatenate([local, jnp.broadcast_to(pooled, local.shape)], axis=-1)
    attn = attn * jax.nn.sigmoid(self.spatial_select(both))          # [b, L, (K,) E]
    return x * attn.astype(x.dtype)

  def gate(self, mean_normed):
    """The channel gate sigmoid(channel_select(gelu(global_reduce(.)))) of the mean over L of
    LN(x) (affine applied), [b, 1, (K,) E] -> [b, 1, (K,) E] in the compute dtype."""
    return jax.nn.sigmoid(self.channel_select(gelu_exact(self.global_reduce(mean_normed))))


def gated_branch_sum(attn: SCAttn, y, *, interpret: bool | None = None):
  """sum_k SCAttn(y)_k over the K branches of y [b, L, K, E]: the values and gradients of
  `BranchMerge(K)(attn(y))` (the final models' plain branch sum), for the channel-only SCAttn,
  computed with the row kernels of `ops/kernels/row_norm_gpu.py` (Pallas; interpret mode off the
  GPU: `interpret=None` decides by the default backend).

  Why: y is the float32 scan output, the largest tensor of a LocalVMamba block. XLA reads it
  three times in the forward (the rows' LayerNorm moments, the mean of the normalised rows,
  the gate with the branch sum) and three times in the backward (the gate's gradient summed
  over L, the rows' dot products of the LayerNorm backward, the pass that writes y's
  gradient). The kernels take the moments with the mean in one read, and the dot products
  with the gradient's write in one read: two passes fewer per block. Values equal the XLA
  path within float32 rounding (the row variance here is the two-pass one, as PyTorch's).
  """
  if attn.spatial:
    raise ValueError("gated_branch_sum: the fused path covers the released channel-only SCAttn "
                     "(spatial=False); call BranchMerge()(attn(y)) for the spatial form.")
  if getattr(y, "ndim", None) != 4:
    raise ValueError(f"gated_branch_sum: y must be [batch, L, K, E], got shape "
                     f"{getattr(y, 'shape', None)}.")
  graphdef, state = nnx.split(attn)
  return _gated_branch_sum(graphdef, float(attn.norm.epsilon), interpret, state, y)


def _gate_of_pooled(graphdef, state, pooled_hat):
  """The gate from the mean over L of the normalised rows before the affine, [b, K, E]."""
  attn = nnx.merge(graphdef, state)
  f32 = jnp.float32
  mean_normed = (pooled_hat * attn.norm.scale[...].astype(f32)
                 + attn.norm.bias[...].astype(f32))              # as pooled_layer_norm's output
  return attn.gate(mean_normed[:, None])                          # [b, 1, K, E]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _gated_branch_sum(graphdef, epsilon, interpret, state, y):
  return _gated_branch_sum_fwd(graphdef, epsilon, interpret, state, y)[0]


def _gated_branch_sum_fwd(graphdef, epsilon, interpret, state, y):
  pooled_hat = row_norm_gpu.pooled_normalized_mean(y, epsilon, interpret=interpret)
  gate = _gate_of_pooled(graphdef, state, pooled_hat)
  out = jnp.sum(y * gate.astype(y.dtype), axis=-2)               # BranchMerge's plain sum
  return out, (state, y, pooled_hat, gate)


def _gated_branch_sum_bwd(graphdef, epsilon, interpret, residuals, d_out):
  state, y, pooled_hat, gate = residuals
  # the gate's gradient: sum over L of d_out * y per branch, in y's dtype as autodiff has it
  d_gate = jnp.sum(d_out[:, :, None, :] * y, axis=1, keepdims=True)
  _, gate_vjp = jax.vjp(functools.partial(_gate_of_pooled, graphdef), state, pooled_hat)
  d_state, d_pooled_hat = gate_vjp(d_gate.astype(gate.dtype))
  # every row's normalised values enter the mean over L with weight 1 / L
  d_hat = d_pooled_hat.astype(jnp.float32) / y.shape[1]
  d_y = row_norm_gpu.gated_sum_norm_grad(y, d_out.astype(y.dtype), gate[:, 0].astype(y.dtype),
                                         d_hat, epsilon, interpret=interpret)
  return d_state, d_y


_gated_branch_sum.defvjp(_gated_branch_sum_fwd, _gated_branch_sum_bwd)

"""LocalVMamba: the hierarchical (VMamba-style) LocalMamba model, paper Sec. 3.5.

Mirrors the official `local_vmamba.py` (`VSSM`, `VSSBlock`, `SS2D`, `PatchMerging2D`) so that
its state dict loads one to one (see params.py) and the outputs agree to float32 rounding.
Layout is NHWC throughout, as in the official model after its patch embedding.

    patch_embed: Conv(k=p, s=p) + LayerNorm
    layers[s]:   VSSBlock x depths[s], then PatchMerging2D (not after the last stage)
    norm -> global average pool -> head

VSSBlock:  x + drop_path(SS2D(LayerNorm(x)))   (no MLP; reference doc Sec. 3.4)
SS2D:      in_proj -> (x, z); z = SiLU(z); x = SiLU(depthwise conv(x));
           K local scans of x (ops.multi_direction_selective_scan) -> SCAttn per branch ->
           sum (or the softmax-weighted search merge) -> out_norm -> * z -> out_proj
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.layers.branch_merge import BranchMerge
from localmamba_jax.layers.depthwise_conv import DepthwiseConv2d
from localmamba_jax.layers.drop_path import drop_path
from localmamba_jax.layers.init_keys import init_keys
from localmamba_jax.layers.norms import kernel_grad_layer_norm, layer_norm, one_pass_layer_norm
from localmamba_jax.layers.scattn import SCAttn, gated_branch_sum
from localmamba_jax.models.local_vmamba.config import LocalVMambaConfig
from localmamba_jax.ops.kernels import row_norm_gpu
from localmamba_jax.ops.multi_direction import multi_direction_selective_scan
from localmamba_jax.ops.selective_scan import recompute_delta_projection, resolved_path
from localmamba_jax.ops.scan_orders import stacked_scan_orders

# ---- initialisers (the official ones, reference doc Sec. 3.4) --------------------------------

# VSSM._init_weights: trunc_normal(std=0.02) on every nn.Linear, zero bias. (timm truncates at
# +-2 absolute, i.e. +-100 std, Flax at +-2 std; the difference is immaterial at std 0.02.)
linear_init = nnx.initializers.truncated_normal(0.02)


def torch_default_uniform(fan_in: int):
  """PyTorch's default Linear/Conv init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).

  VSSM re-initialises only nn.Linear and LayerNorm, so the convs and the stacked x_proj
  weights keep this default.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dt_projs_init(key, num_dirs: int, inner: int, rank: int, dt_min=1e-3, dt_max=0.1,
                  dt_init_floor=1e-4):
  """Mamba's dt init per direction: weight U(+-rank^-0.5); bias = softplus^-1(dt) with dt
  log-uniform in [dt_min, dt_max], floored at dt_init_floor (SS2D.dt_init)."""
  weight_key, bias_key = jax.random.split(key)
  bound = rank ** -0.5
  weight = jax.random.uniform(weight_key, (num_dirs, inner, rank), jnp.float32, -bound, bound)
  log_dt = (jax.random.uniform(bias_key, (num_dirs, inner), jnp.float32)
            * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
  dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
  bias = dt + jnp.log(-jnp.expm1(-dt))                            # inverse of softplus
  return weight, bias


def _as_compute(x, dtype):
  return x if dtype is None else x.astype(dtype)


# ---- modules -------------------------------------------------------------------------------


class PatchEmbed(nnx.Module):
  """Conv2d(in_chans -> dim, kernel = stride = patch) + LayerNorm (official `patch_embed`).

  No padding: like torch's Conv2d, a size not divisible by the patch is floored (the last
  rows/columns are dropped).
  """

  def __init__(self, in_chans: int, dim: int, patch_size: int, *, dtype=None,
               norm=layer_norm, rngs: nnx.Rngs):
    fan_in = in_chans * patch_size * patch_size
    self.proj = nnx.Conv(in_chans, dim, (patch_size, patch_size), (patch_size, patch_size),
                         padding="VALID", dtype=dtype, kernel_init=torch_default_uniform(fan_in),
                         bias_init=torch_default_uniform(fan_in), rngs=rngs)
    self.norm = norm(dim, rngs=rngs, dtype=jnp.float32)

  def __call__(self, images):
    return self.norm(self.proj(images))


class SS2D(nnx.Module):
  """The LocalVMamba mixer: SS2D with K local scan directions (paper Sec. 3.2-3.3).

  Per-direction parameters are stacked exactly as in the official module (and its state
  dict): x_proj_weight [K, R+2N, E], dt_projs_weight [K, E, R], dt_projs_bias [K, E],
  A_logs [K*E, N] (row k*E+e), Ds [K*E]. SCAttn (`attn`) is shared by the K branches.
  """

  def __init__(self, dim: int, *, directions, search: bool, d_state: int, ssm_ratio: float,
               dt_rank: int, d_conv: int, scattn_spatial: bool, exact_inverse: bool,
               scan_impl: str, scan_chunk_size: int, dtype=None, one_pass_out_norm: bool = True,
               recompute_scan: bool = False, scan_output_dtype: str = "float32",
               scattn_kernels: bool = True, depthwise_conv_impl: str = "auto",
               rngs: nnx.Rngs):
    inner = int(ssm_ratio * dim)
    num_dirs = len(directions)
    self.directions = tuple(directions)
    self.inner, self.d_state, self.dt_rank = inner, d_state, dt_rank
    self.exact_inverse, self.scan_impl, self.scan_chunk_size = (exact_inverse, scan_impl,
                                                                scan_chunk_size)
    self.dtype = dtype
    self.recompute_scan = recompute_scan   # LocalVMambaConfig.recompute_scan
    # LocalVMambaConfig.scan_output_dtype: float32 as the official autocast, or the compute dtype
    self.scan_out_dtype = (jnp.float32 if scan_output_dtype == "float32"
                           else (dtype or jnp.float32))
    self.in_proj = nnx.Linear(dim, 2 * inner, use_bias=False, dtype=dtype,
                              kernel_init=linear_init, rngs=rngs)
    if d_conv > 1:
      fan_in = d_conv * d_conv                                       # depthwise: 1 channel in
      self.conv2d = DepthwiseConv2d(inner, d_conv, impl=depthwise_conv_impl, dtype=dtype,
                                    kernel_init=torch_default_uniform(fan_in),
                                    bias_init=torch_default_uniform(fan_in), rngs=rngs)
    else:
      self.conv2d = None
    # x_proj_weight: the K stacked nn.Linear(E -> R+2N, bias=False) weights, torch layout.
    self.x_proj_weight = nnx.Param(torch_default_uniform(inner)(
        rngs.params(), (num_dirs, dt_rank + 2 * d_state, inner)))
    dt_weight, dt_bias = dt_projs_init(rngs.params(), num_dirs, inner, dt_rank)
    self.dt_projs_weight = nnx.Param(dt_weight)
    self.dt_projs_bias = nnx.Param(dt_bias)
    # S4D-real init A = 1..N for every channel, D = 1 (SS2D.A_log_init / D_init).
    a_log = jnp.log(jnp.arange(1, d_state + 1, dtype=jnp.float32))
    self.A_logs = nnx.Param(jnp.tile(a_log[None, :], (num_dirs * inner, 1)))
    self.Ds = nnx.Param(jnp.ones((num_dirs * inner,), jnp.float32))
    self.attn = SCAttn(inner, spatial=scattn_spatial, rngs=rngs, dtype=dtype)
    self.scattn_kernels = scattn_kernels   # LocalVMambaConfig.scattn_kernels
    self.branch_merge = BranchMerge(num_dirs, search=search, rngs=rngs)
    # One-pass statistics: the norm's input, the K-branch sum of the float32 scan output, is
    # not written out but recomputed by XLA for each pass over it (layers.norms.OnePassLayerNorm;
    # LocalVMamba-T's bf16 eval step +7%, train step +3% on an H100, BENCHMARKS.md session 8).
    # With block remat the two-pass form stays: compiled for the CPU, the one-pass form
    # undid most of what remat saves (tests/models/test_remat.py), for reasons not found.
    # Same parameters either way, values equal within float32 rounding.
    norm = one_pass_layer_norm if one_pass_out_norm else layer_norm
    self.out_norm = norm(inner, rngs=rngs, dtype=jnp.float32)
    self.out_proj = nnx.Linear(inner, dim, use_bias=False, dtype=dtype, kernel_init=linear_init,
                               rngs=rngs)

  def __call__(self, x, *, scan_tables=None):
    """scan_tables: optional (gather, merge) tables used instead of those of
    `self.directions` (LocalVMamba.scan_blocks passes each block's own as scan data)."""
    batch, height, width, _ = x.shape
    num_dirs, inner, d_state, rank = len(self.directions), self.inner, self.d_state, self.dt_rank
    x, z = jnp.split(self.in_proj(x), 2, axis=-1)
    z = jax.nn.silu(z)
    if self.conv2d is not None:
      x = jax.nn.silu(self.conv2d(x))
    else:
      x = jax.nn.silu(x)                       # official d_conv < 2: SiLU on both halves
    u = x.reshape(batch, height * width, inner)
    # The official code projects each *scanned* sequence (x_proj, then dt_projs, both
    # without bias). These are per-token linear maps and the pads are zero tokens, so
    # projecting in spatial order and letting the op gather (pads -> 0) is identical.
    x_dbl = jnp.einsum("ble,kce->blkc", u, _as_compute(self.x_proj_weight[...], self.dtype))
    dt, B, C = jnp.split(x_dbl, [rank, rank + d_state], axis=-1)
    # SelectiveScan is custom_fwd(cast_inputs=float32): the scan runs in float32 and returns
    # float32 even under bf16 autocast. u, delta, B and C go in as computed (bf16 under a
    # bf16 compute dtype) with out_dtype=float32: the GPU kernel converts them (exactly) as it
    # reads them, so the inputs it saves for the backward and their gradients stay bf16;
    # the other paths cast them to float32 first. (scan_output_dtype="compute" makes the
    # output bf16 instead: faster, not the official numerics; LocalVMambaConfig.)
    f32 = lambda a: a.astype(jnp.float32)
    y = self._scan(u, dt, _as_compute(self.dt_projs_weight[...], self.dtype),
                   -jnp.exp(f32(self.A_logs[...])).reshape(num_dirs, inner, d_state), B, C,
                   f32(self.Ds[...]).reshape(num_dirs, inner), f32(self.dt_projs_bias[...]),
                   scan_tables, grid_hw=(height, width))  # [b, HW, K, E], float32 by default
    if self._gate_with_row_kernels(y):
      y = gated_branch_sum(self.attn, y)          # the same sum, two passes over y fewer
    else:
      y = self.branch_merge(self.attn(y))                              # SCAttn per branch
    y = self.out_norm(y).reshape(batch, height, width, inner)
    y = _as_compute(y, self.dtype) * z
    return self.out_proj(y)

  def _scan(self, u, dt, dt_weight, A, B, C, D, delta_bias, scan_tables, *, grid_hw):
    """Delta = dt_projs(dt), then the K-direction selective scan.

    With recompute_scan on the GPU kernel, which then keeps only its inputs for the backward,
    Delta [b, HW, K, E], the largest of them, is not kept either: the backward recomputes it
    from dt [b, HW, K, R] (kept anyway, for the weights' gradient) with one small GEMM per
    block (`ops.selective_scan.recompute_delta_projection`). LocalVMamba-T, bf16, 128
    images: peak 20.3 -> 16.6 GiB for 0.3% of the step (one H200, BENCHMARKS.md session 20).
    Same values: the same einsum of the same inputs."""
    def delta_then_scan(u, dt, dt_weight, A, B, C, D, delta_bias, scan_tables):
      delta = jnp.einsum("blkr,ker->blke", dt, dt_weight)
      return multi_direction_selective_scan(
          u, delta, A, B, C, D, delta_bias, grid_hw=grid_hw, directions=self.directions,
          delta_softplus=True, exact_inverse=self.exact_inverse, impl=self.scan_impl,
          chunk_size=self.scan_chunk_size, tables=scan_tables, recompute=self.recompute_scan,
          out_dtype=self.scan_out_dtype)
    if self.recompute_scan:
      delta_then_scan = recompute_delta_projection(delta_then_scan, self._scan_path(dt.dtype))
    return delta_then_scan(u, dt, dt_weight, A, B, C, D, delta_bias, scan_tables)

  def _scan_path(self, dtype) -> str:
    """The implementation the selective scan runs for inputs of `dtype`."""
    num_dirs = len(self.directions)
    return resolved_path(self.scan_impl, num_dirs * self.inner, num_dirs, self.d_state,
                         [jnp.dtype(dtype), jnp.dtype(self.scan_out_dtype)])

  def _gate_with_row_kernels(self, y) -> bool:
    """LocalVMambaConfig.scattn_kernels: the fused SCAttn + branch sum where the scan runs the
    GPU kernel (interpret mode with scan_impl='pallas_gpu' off the GPU, as the scan)."""
    return (self.scattn_kernels and row_norm_gpu.on_kernel_path(self.scan_impl)
            and not self.attn.spatial
            and not self.branch_merge.search
            and row_norm_gpu.is_supported(y.shape[-1], y.dtype))


class VSSBlock(nnx.Module):
  """x + drop_path(SS2D(LayerNorm(x))). `deterministic` switches drop path off (model.eval())."""

  def __init__(self, dim: int, *, drop_path_rate: float, rngs: nnx.Rngs, norm=layer_norm,
               **mixer_kwargs):
    self.norm = norm(dim, rngs=rngs, dtype=jnp.float32)
    self.op = SS2D(dim, rngs=rngs, **mixer_kwargs)
    self.drop_path_rate = float(drop_path_rate)
    self.deterministic = False

  def __call__(self, x, *, key=None, drop_path_rate=None, scan_tables=None):
    """drop_path_rate / scan_tables: this block's rate and scan-order tables given as data,
    overriding the module's own (LocalVMamba.scan_blocks runs one block's program for all)."""
    update = self.op(self.norm(x), scan_tables=scan_tables).astype(x.dtype)
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    return x + drop_path(update, rate, key, self.deterministic)


def _run_block(block: VSSBlock, x, key):
  """A block call as a plain function of (module, input, key): what nnx.remat wraps (NNX
  transforms take unbound functions; the drop-path key is an argument, not state)."""
  return block(x, key=key)


def _shared_program_runs(blocks: list[VSSBlock], height: int, width: int) -> list[list[int]]:
  """Splits a stage's blocks into runs of consecutive blocks that can share one compiled
  program: blocks differ only in their directions and drop-path rate (both passed as data),
  so a run needs equal scan-order table layouts (table shapes and merge exactness)."""
  def layout(block):
    op = block.op
    return stacked_scan_orders(height, width, op.directions, op.exact_inverse).table_layout()
  runs = []
  for j, block in enumerate(blocks):
    if runs and layout(blocks[runs[-1][-1]]) == layout(block):
      runs[-1].append(j)
    else:
      runs.append([j])
  return runs


def _scan_blocks(blocks: list[VSSBlock], x, keys, *, remat: bool):
  """Runs `blocks` (one run of `_shared_program_runs`) as one `jax.lax.scan`: the program of
  the first block, traced and compiled once, applied to each block's stacked parameters, its
  scan-order tables, drop-path rate and key. Returns (output, [each block's output]).

  Why: LocalVMamba-S has 27 blocks in stage 3; unrolled, each is traced, lowered and optimised
  on its own (issue 9 item 5: compile time). Values and gradients equal the unrolled blocks'
  up to float reassociation (tests/models/test_scan_blocks.py)."""
  height, width = x.shape[1:3]
  graphdef, _ = nnx.split(blocks[0])
  states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.split(b)[1] for b in blocks])
  orders = [stacked_scan_orders(height, width, b.op.directions, b.op.exact_inverse)
            for b in blocks]
  gathers = jnp.asarray(np.stack([o.gather for o in orders]))
  merges = jnp.asarray(np.stack([o.merge for o in orders]))
  rates = jnp.asarray(np.array([b.drop_path_rate for b in blocks], np.float32))
  stacked_keys = None if keys[0] is None else jnp.stack(keys)

  def body(x, xs):
    state, gather, merge, rate, key = xs
    block = nnx.merge(graphdef, state)
    x = block(x, key=key, drop_path_rate=rate, scan_tables=(gather, merge))
    return x, x

  if remat:  # as nnx.remat per unrolled block: keep each block's input, recompute the rest
    body = jax.checkpoint(body)
  x, outputs = jax.lax.scan(body, x, (states, gathers, merges, rates, stacked_keys))
  return x, [outputs[i] for i in range(len(blocks))]


class PatchMerging2D(nnx.Module):
  """2x2 downsampling: zero-pad bottom/right if odd, concat the 4 sub-grids, LN, Linear.

  Sub-grid order [x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)] (row index
  first), as the official `_patch_merging_pad`; the order fixes the layout of
  `reduction`'s input channels.
  """

  def __init__(self, dim: int, out_dim: int, *, dtype=None, norm=layer_norm, rngs: nnx.Rngs):
    self.norm = norm(4 * dim, rngs=rngs, dtype=jnp.float32)
    self.reduction = nnx.Linear(4 * dim, out_dim, use_bias=False, dtype=dtype,
                                kernel_init=linear_init, rngs=rngs)

  def __call__(self, x):
    height, width = x.shape[1:3]
    if height % 2 or width % 2:
      x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    return self.reduction(self.norm(x))


class LocalVMambaStage(nnx.Module):
  """One stage (official `layers.i`): `blocks`, then `downsample` (None after the last)."""

  def __init__(self, blocks: list[VSSBlock], downsample: Optional[PatchMerging2D]):
    self.blocks = nnx.List(blocks)
    self.downsample = downsample


class LocalVMamba(nnx.Module):
  """LocalVMamba classifier (official `VSSM` with `directions`); NHWC images -> logits.

  Residual stream, LayerNorms and the scan are float32 whatever `config.dtype` (the official
  AMP run has LayerNorm outputs and the scan in float32 too); Linear/Conv layers compute in
  `config.dtype`. Logits are returned in float32.
  """

  def __init__(self, config: LocalVMambaConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, LocalVMambaConfig):
      raise ValueError(f"LocalVMamba needs a LocalVMambaConfig, got {type(config).__name__}.")
    # Keys drawn at constant cost under eval_shape/jit traces (layers/init_keys.py);
    # the parameters and `rngs` end up as if `rngs` had been used directly.
    with init_keys(rngs) as keys:
      self._build(config, keys)

  def _build(self, config: LocalVMambaConfig, rngs):
    self.config = config
    dtype = config.dtype
    # The residual stream's LayerNorms: with norm_kernels, their backward is one Pallas pass
    # where the scan runs the GPU kernel (layers.norms.KernelGradLayerNorm; same parameters).
    norm = (functools.partial(kernel_grad_layer_norm, scan_impl=config.scan_impl)
            if config.norm_kernels else layer_norm)
    self.patch_embed = PatchEmbed(config.in_chans, config.dims[0], config.patch_size,
                                  dtype=dtype, norm=norm, rngs=rngs)
    rates = config.drop_path_rates()
    stages, block_index = [], 0
    for s, (dim, depth) in enumerate(zip(config.dims, config.depths)):
      blocks = []
      for _ in range(depth):
        blocks.append(VSSBlock(
            dim, drop_path_rate=rates[block_index], rngs=rngs, norm=norm,
            directions=config.block_directions(block_index), search=config.is_search,
            d_state=config.d_state, ssm_ratio=config.ssm_ratio, dt_rank=config.stage_dt_rank(s),
            d_conv=config.d_conv, scattn_spatial=config.scattn_spatial,
            exact_inverse=config.exact_inverse, scan_impl=config.scan_impl,
            scan_chunk_size=config.scan_chunk_size, dtype=dtype,
            one_pass_out_norm=not config.remat, recompute_scan=config.recompute_scan,
            scan_output_dtype=config.scan_output_dtype,
            scattn_kernels=config.scattn_kernels,
            depthwise_conv_impl=config.depthwise_conv_impl))
        block_index += 1
      last = s == len(config.dims) - 1
      downsample = None if last else PatchMerging2D(dim, config.dims[s + 1], dtype=dtype,
                                                    norm=norm, rngs=rngs)
      stages.append(LocalVMambaStage(blocks, downsample))
    self.layers = nnx.List(stages)
    self.norm = norm(config.dims[-1], rngs=rngs, dtype=jnp.float32)
    self.head = (nnx.Linear(config.dims[-1], config.num_classes, dtype=dtype,
                            kernel_init=linear_init, rngs=rngs)
                 if config.num_classes > 0 else None)

  # ---- input checks ------------------------------------------------------------------------

  def _check_images(self, images):
    cfg = self.config
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"LocalVMamba: images must be a float array [batch, H, W, {cfg.in_chans}] "
                       f"(NHWC), got shape {shape}.")
    if shape[-1] != cfg.in_chans:
      hint = (" It looks channels-first; transpose with images.transpose(0, 2, 3, 1)."
              if shape[1] == cfg.in_chans else "")
      raise ValueError(f"LocalVMamba: images must have {cfg.in_chans} channels in the last axis "
                       f"(NHWC), got shape {tuple(shape)}.{hint}")
    if shape[1] < cfg.patch_size or shape[2] < cfg.patch_size:
      raise ValueError(f"LocalVMamba: images of {shape[1]}x{shape[2]} are smaller than one "
                       f"{cfg.patch_size}x{cfg.patch_size} patch; use larger images.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"LocalVMamba: images must be floating point (normalised pixels), got "
                       f"dtype {images.dtype}; convert with images.astype(jnp.float32).")

  def _block_keys(self, key):
    if key is None:
      return [None] * self.config.num_blocks
    return list(jax.random.split(key, self.config.num_blocks))

  # ---- forward -----------------------------------------------------------------------------

  def _stages(self, images, key, out: dict):
    """Runs embed + stages; fills `out`; returns the last stage's output (pre-classifier)."""
    self._check_images(images)
    keys = self._block_keys(key)
    run_block = _run_block
    if self.config.remat:
      # Save only each block's input (and key) for the backward and recompute the block
      # there: the scan's residuals and SS2D's activations dominate training memory.
      # Built per call so that nnx.remat follows the caller's graph/tree mode.
      run_block = nnx.remat(_run_block)
    x = self.patch_embed(_as_compute(images, self.config.dtype))
    out["patch_embed"] = x
    block_index = 0
    for s, stage in enumerate(self.layers):
      blocks = list(stage.blocks)
      runs = (_shared_program_runs(blocks, x.shape[1], x.shape[2]) if self.config.scan_blocks
              else [[j] for j in range(len(blocks))])
      for run in runs:
        run_keys = keys[block_index:block_index + len(run)]
        if len(run) == 1:
          x = run_block(blocks[run[0]], x, run_keys[0])
          outputs = [x]
        else:
          x, outputs = _scan_blocks([blocks[j] for j in run], x, run_keys,
                                    remat=self.config.remat)
        for j, y in zip(run, outputs):
          out[f"layers.{s}.blocks.{j}"] = y
        block_index += len(run)
      out[f"stage{s}"] = x                               # before downsample (det/seg features)
      if stage.downsample is not None:
        # the residual stream stays float32 across stages
        x = stage.downsample(x).astype(jnp.float32)
      out[f"layers.{s}"] = x                             # official `layers.s` output
    return x

  def forward_with_features(self, images, *, key=None):
    """-> (logits [batch, num_classes] float32, out): out holds 'patch_embed',
    'layers.{s}.blocks.{j}', 'stage{s}' (before downsample), 'layers.{s}' (after it, the
    official module outputs) and 'pre_logits' (pooled features, official
    'classifier.flatten'). All maps are NHWC."""
    out = {}
    x = self._stages(images, key, out)
    pooled = jnp.mean(self.norm(x), axis=(1, 2))
    out["pre_logits"] = pooled
    logits = pooled if self.head is None else self.head(_as_compute(pooled, self.config.dtype))
    return logits.astype(jnp.float32), out

  def __call__(self, images, *, key=None):
    return self.forward_with_features(images, key=key)[0]

  def features(self, images, *, key=None):
    """The 4 stage outputs before downsampling, NHWC (strides 4, 8, 16, 32), for det/seg.

    The official `Backbone_LocalVSSM` adds a fresh LayerNorm (`outnorm{i}`) on each; those
    belong to the downstream head, not to this classifier."""
    out = {}
    self._stages(images, key, out)
    return [out[f"stage{s}"] for s in range(len(self.layers))]

"""LocalVim: the plain (Vim-style) LocalMamba model (paper Sec. 3.3, reference doc Sec. 3.2-3.3).

A ViT-like stack of Mamba blocks over 16x16 patch tokens. Each block's mixer (`MultiMamba`)
scans the tokens in K directions (row, column, local windows, and their reverses), runs one
selective scan per direction with its own conv1d/x_proj/dt_proj/A/D, merges the K outputs
back to token order, gates each with a shared SCAttn and sums them (or, in the search
supernet, takes a softmax-weighted sum of normalised branches).

Numerics follow the official `local_vim.py` / `multi_mamba.py` exactly; the deviations that
only concern cases the official code cannot run are listed in `LocalVim`'s docstring.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.layers import BranchMerge, SCAttn, drop_path, init_keys, rms_norm
from localmamba_jax.ops import (ALL_CHOICES, IMPLEMENTATIONS, PAD, gather_tokens, merge_tokens,
                                parse_direction, selective_scan, stacked_scan_orders)
from localmamba_jax.ops.selective_scan import recompute_delta_projection, resolved_path
from localmamba_jax.models.local_vim import rope as rope_lib

# torch.nn.Linear / Conv default init (kaiming_uniform(a=sqrt(5))): U(+-1/sqrt(fan_in)).
_torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# timm's trunc_normal_(std=0.02) truncates at +-2 *absolute* (100 sigma): a plain normal.
_trunc_normal_002 = nnx.initializers.normal(0.02)


def _torch_default_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LocalVimConfig:
  """Architecture of a LocalVim model (defaults: the flags of the official `local_vim_tiny`).

  directions: one list of scan directions per layer (branch k = position k in the list), or
    None for the search supernet, where every layer has all `search_candidates` as branches
    and a softmax-weighted merge with architecture weights (reference doc Sec. 5).
  img_size: the training resolution; it fixes the pos_embed / RoPE grid (img_size // patch).
    Other input sizes work: both are resized bicubically, as the official forward does.
  middle_cls_token: the `local_vim_tiny_middle_cls_token` variant (cls token at index
    num_tokens // 2, classify from it); the official variant has no RoPE.
  scattn_spatial: adds the paper's spatial half of SCAttn (not in the released code).
  exact_inverse: merge `v`/`v_flip` with the true inverse on non-square grids instead of the
    official (scrambling) merge; only matters for H != W.
  dtype: compute dtype (None = float32); parameters, the scan state and the residual stream
    stay float32.
  remat: True = rematerialise every Block (nnx.remat / jax.checkpoint): the backward keeps
    only each block's inputs and recomputes its forward, about one extra forward pass for
    much less activation memory. Parameters, outputs and gradients are unchanged.
  recompute_scan: True = each selective scan keeps only its inputs for the backward and
    recomputes its forward there (the GPU kernel: just its state checkpoints, b * L / 4 *
    K*E * N float32 per block, and Delta, from dt; LocalVim-T, bf16, 128 per H100: 23.0 ->
    12.3 GiB for -5.2% img/s, before Delta was recomputed too): one more scan forward per
    block. Outputs and gradients are unchanged.
  """

  embed_dim: int = 192
  depth: int = 20
  directions: Optional[tuple[tuple[str, ...], ...]] = None
  search_candidates: tuple[str, ...] = ALL_CHOICES
  patch_size: int = 16
  img_size: int = 224
  in_chans: int = 3
  d_state: int = 16
  expand: int = 2
  d_conv: int = 4
  num_classes: int = 1000
  drop_path_rate: float = 0.1
  rope: bool = True
  rope_residual: bool = True
  middle_cls_token: bool = False
  scattn_spatial: bool = False
  exact_inverse: bool = False
  dtype: Any = None
  scan_impl: str = "auto"
  remat: bool = False
  recompute_scan: bool = False

  def __post_init__(self):
    def positive_int(name, minimum=1):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"LocalVimConfig.{name} must be an integer >= {minimum}, got {value!r}.")

    for name in ("embed_dim", "depth", "patch_size", "img_size", "in_chans", "d_state",
                 "expand", "d_conv"):
      positive_int(name)
    positive_int("num_classes", 0)
    if self.img_size < self.patch_size:
      raise ValueError(f"LocalVimConfig.img_size={self.img_size} is smaller than patch_size="
                       f"{self.patch_size}; the pos_embed grid would be empty.")
    if not 0.0 <= float(self.drop_path_rate) < 1.0:
      raise ValueError(f"LocalVimConfig.drop_path_rate must be in [0, 1), got "
                       f"{self.drop_path_rate!r}.")
    if not isinstance(self.remat, (bool, np.bool_)):
      raise ValueError(f"LocalVimConfig.remat must be True (rematerialise each block in the "
                       f"backward) or False, got {self.remat!r}.")
    object.__setattr__(self, "remat", bool(self.remat))
    if not isinstance(self.recompute_scan, (bool, np.bool_)):
      raise ValueError(f"LocalVimConfig.recompute_scan must be True (the backward recomputes "
                       f"each scan's forward) or False (keep its states), got "
                       f"{self.recompute_scan!r}.")
    object.__setattr__(self, "recompute_scan", bool(self.recompute_scan))
    if self.scan_impl not in IMPLEMENTATIONS:
      raise ValueError(f"LocalVimConfig.scan_impl must be one of {IMPLEMENTATIONS}, got "
                       f"{self.scan_impl!r}.")
    if self.rope and self.embed_dim % 4:
      raise ValueError(f"LocalVimConfig: RoPE needs embed_dim divisible by 4, got "
                       f"{self.embed_dim}; change embed_dim or set rope=False.")
    if self.rope and self.middle_cls_token:
      raise ValueError("LocalVimConfig: rope=True with middle_cls_token=True is not supported: "
                       "the official RoPE tables have no entry for the cls token (the official "
                       "middle-cls model disables RoPE). Set rope=False.")
    if int(self.embed_dim * self.expand * 0.125) < 1:
      raise ValueError(f"LocalVimConfig: embed_dim * expand = {self.embed_dim * self.expand} "
                       f"is too small for SCAttn's 1/8 reduction; use embed_dim >= 4.")
    candidates = self._check_names("search_candidates", self.search_candidates)
    object.__setattr__(self, "search_candidates", candidates)
    if self.directions is not None:
      if isinstance(self.directions, str) or not isinstance(self.directions, Sequence):
        raise ValueError(f"LocalVimConfig.directions must be None (search supernet) or one list "
                         f"of direction names per layer, got {self.directions!r}.")
      if len(self.directions) != self.depth:
        raise ValueError(f"LocalVimConfig.directions has {len(self.directions)} layer lists but "
                         f"depth={self.depth}; give exactly one list per layer.")
      directions = tuple(self._check_names(f"directions[{i}]", layer)
                         for i, layer in enumerate(self.directions))
      object.__setattr__(self, "directions", directions)
    if self.dtype is not None:
      object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

  @staticmethod
  def _check_names(what, names) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
      raise ValueError(f"LocalVimConfig.{what} must be a non-empty list of direction names such "
                       f"as ['h', 'v_flip', 'w7'], got {names!r}.")
    parsed = tuple(parse_direction(n).name for n in names)  # raises for unknown names
    if len(set(parsed)) != len(parsed):
      raise ValueError(f"LocalVimConfig.{what} repeats a direction: {list(names)}; each branch "
                       f"of a layer must scan a different direction.")
    return parsed

  @property
  def inner_dim(self) -> int:
    return self.expand * self.embed_dim

  @property
  def dt_rank(self) -> int:
    return math.ceil(self.embed_dim / 16)

  @property
  def pos_grid(self) -> int:
    """Token grid side of pos_embed and the RoPE tables (official `patch_embed.grid_size`)."""
    return self.img_size // self.patch_size

  @property
  def num_pos_tokens(self) -> int:
    return self.pos_grid ** 2 + int(self.middle_cls_token)

  @property
  def search(self) -> bool:
    return self.directions is None

  def layer_directions(self, layer: int) -> tuple[str, ...]:
    return self.search_candidates if self.directions is None else self.directions[layer]

  def block_drop_path_rates(self) -> list[float]:
    """Official `inter_dpr = [0] + linspace(0, rate, depth)`: block i gets inter_dpr[i]."""
    rates = [0.0] + [float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth)]
    return rates[:self.depth]

  @classmethod
  def tiny_test(cls, **overrides) -> "LocalVimConfig":
    """A very small model for tests: 2 layers, 32 channels, 4 directions, 10 classes."""
    kwargs = dict(embed_dim=32, depth=2, img_size=64, num_classes=10,
                  directions=(("h", "v_flip", "w2", "w7_flip"), ("h_flip", "v", "w2_flip", "w7")))
    kwargs.update(overrides)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Scan orders with the middle cls token
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def mixer_scan_orders(height: int, width: int, directions: tuple[str, ...],
                      exact_inverse: bool, middle_cls: bool) -> tuple[np.ndarray, np.ndarray]:
  """(gather [K, Lmax], merge [K, L]) over the mixer's L tokens (H*W, or H*W + 1 with cls).

  With the middle cls token (official `MultiMamba.forward`, reference doc Sec. 10.10): the
  token at c = (L - 1) // 2 is removed, the H*W spatial tokens are scanned, and the cls
  token is re-inserted at position c of *every* scanned sequence (flipped and window scans
  included); after the scan the output at position c is cut out, the rest merged back to
  row-major order and the cls output re-inserted at index c. Here that becomes one gather
  and one merge index over the L tokens.
  """
  orders = stacked_scan_orders(height, width, directions, exact_inverse)
  if not middle_cls:
    return orders.gather, orders.merge
  cls = (height * width) // 2
  gathers, merges = [], []
  for k, length in enumerate(orders.lengths):
    spatial = orders.gather[k, :length]
    full = np.where(spatial == PAD, PAD, spatial + (spatial >= cls))   # token index incl. cls
    gathers.append(np.concatenate([full[:cls], [cls], full[cls:]]))
    seq_pos = orders.merge[k] + (orders.merge[k] >= cls)                # position incl. cls
    merges.append(np.concatenate([seq_pos[:cls], [cls], seq_pos[cls:]]))
  max_length = max(len(g) for g in gathers)
  gather = np.full((len(gathers), max_length), PAD, dtype=np.int32)
  for k, g in enumerate(gathers):
    gather[k, :len(g)] = g
  merge = np.stack(merges).astype(np.int32)
  gather.setflags(write=False)
  merge.setflags(write=False)
  return gather, merge


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------

class PatchEmbed(nnx.Module):
  """timm PatchEmbed(strict_img_size=False, dynamic_img_pad=True): zero-pad to a multiple of
  the patch size at the bottom/right, then Conv2d(k=s=patch, bias)."""

  def __init__(self, config: LocalVimConfig, *, rngs: nnx.Rngs):
    p = config.patch_size
    fan_in = config.in_chans * p * p
    self.patch_size = p
    self.proj = nnx.Conv(config.in_chans, config.embed_dim, (p, p), strides=(p, p),
                         padding="VALID", dtype=config.dtype, kernel_init=_torch_default_init,
                         bias_init=_torch_default_bias_init(fan_in), rngs=rngs)

  def __call__(self, images):
    p = self.patch_size
    height, width = images.shape[1:3]
    pad_h, pad_w = (-height) % p, (-width) % p
    if pad_h or pad_w:
      images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return self.proj(images)                                   # [b, H/p, W/p, D]


class PerDirectionLinear(nnx.Module):
  """K independent Linear layers (the official `x_proj_k` / `dt_proj_k`), stacked.

  weight [K, in, out] (the transpose of each torch weight), bias [K, out]; x [..., K, in].
  """

  def __init__(self, num_dirs: int, in_features: int, out_features: int, *, use_bias: bool,
               rngs: nnx.Rngs, kernel_init=_trunc_normal_002, dtype=None):
    self.dtype = dtype
    self.weight = nnx.Param(kernel_init(rngs.params(), (num_dirs, in_features, out_features)))
    # segm_init_weights zeroes every Linear bias (dt_proj's included, reference doc Sec. 10.8)
    self.bias = nnx.Param(jnp.zeros((num_dirs, out_features))) if use_bias else None

  def __call__(self, x):
    weight = self.weight[...]
    if self.dtype is not None:
      x, weight = x.astype(self.dtype), weight.astype(self.dtype)
    y = jnp.einsum("...ki,kio->...ko", x, weight)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class PerDirectionCausalConv1d(nnx.Module):
  """K depthwise causal Conv1d (the official `conv1d_k`: kernel d_conv, left pad d_conv - 1).

  weight [K, d_conv, E], bias [K, E]; x [batch, L, K, E] -> [batch, L, K, E]:
  out[t] = sum_j weight[j] * x[t - d_conv + 1 + j] + bias, optionally followed by SiLU.

  Numerics as the official `causal_conv1d_fwd(x, weight, bias, ..., silu=True)` kernel (called by
  mamba_inner_fn_no_out_proj, reference doc Sec. 10): under bf16 autocast it reads bf16 x with
  the float32 weight and bias (autocast casts x_proj, dt_proj and out_proj weights, not the
  conv's), sums and applies the SiLU in float32, and rounds once to bf16. So here: x in the
  compute dtype, weight and bias in float32, the sum and SiLU in float32, one rounding at the end.
  """

  def __init__(self, num_dirs: int, channels: int, kernel_size: int, *, rngs: nnx.Rngs,
               dtype=None):
    self.dtype = dtype
    self.kernel_size = kernel_size
    # torch Conv1d(groups=E) default init: fan_in = kernel_size
    bound = 1.0 / math.sqrt(kernel_size)
    self.weight = nnx.Param(jax.random.uniform(rngs.params(), (num_dirs, kernel_size, channels),
                                               jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (num_dirs, channels), jnp.float32,
                                             -bound, bound))

  def __call__(self, x, *, silu: bool = False):
    dtype = x.dtype if self.dtype is None else self.dtype
    accumulate = jnp.promote_types(dtype, jnp.float32)   # float64 stays float64 (tests)
    x = x.astype(dtype).astype(accumulate)
    weight = self.weight[...].astype(accumulate)
    length = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (self.kernel_size - 1, 0), (0, 0), (0, 0)))
    out = self.bias[...].astype(accumulate)
    for j in range(self.kernel_size):
      out = out + padded[:, j:j + length] * weight[:, j]
    if silu:
      out = jax.nn.silu(out)
    return out.astype(dtype)


class MultiMamba(nnx.Module):
  """The LocalVim mixer (official `MultiMamba`, reference doc Sec. 3.2), K directions at once.

  in_proj (shared) -> gather the K scan orders of xz (zero pad tokens) -> per direction:
  causal depthwise conv1d + SiLU on x, x_proj -> (dt, B, C), delta = dt_proj.weight @ dt
  -> one selective scan over K * E channels (B/C group k = direction k; delta bias =
  dt_proj.bias, softplus; z gate inside) -> merge each direction back to token order ->
  shared SCAttn per branch -> sum (or search-weighted merge) -> out_proj.

  The scan order is applied to xz *before* the conv1d, as in the official code: window pad
  tokens are zero there but leave the conv with its bias, so they feed the scan.
  """

  def __init__(self, config: LocalVimConfig, layer: int, *, rngs: nnx.Rngs):
    dim, inner, rank, state = config.embed_dim, config.inner_dim, config.dt_rank, config.d_state
    self.directions = config.layer_directions(layer)
    num_dirs = len(self.directions)
    self.inner_dim, self.dt_rank, self.d_state = inner, rank, state
    self.exact_inverse = config.exact_inverse
    self.middle_cls = config.middle_cls_token
    self.scan_impl = config.scan_impl
    self.recompute_scan = config.recompute_scan
    self.dtype = config.dtype
    self.in_proj = nnx.Linear(dim, 2 * inner, use_bias=False, dtype=config.dtype,
                              kernel_init=_trunc_normal_002, rngs=rngs)
    self.conv1d = PerDirectionCausalConv1d(num_dirs, inner, config.d_conv, dtype=config.dtype,
                                           rngs=rngs)
    self.x_proj = PerDirectionLinear(num_dirs, inner, rank + 2 * state, use_bias=False,
                                     dtype=config.dtype, rngs=rngs)
    self.dt_proj = PerDirectionLinear(num_dirs, rank, inner, use_bias=True, dtype=config.dtype,
                                      rngs=rngs)
    # A = -exp(A_log), A_log = log(1..N) for every channel; D = 1 (kept float32)
    a_log = jnp.log(jnp.arange(1, state + 1, dtype=jnp.float32))
    self.A_log = nnx.Param(jnp.broadcast_to(a_log, (num_dirs, inner, state)))
    self.D = nnx.Param(jnp.ones((num_dirs, inner), jnp.float32))
    # _init_weights: out_proj = kaiming_uniform(a=sqrt(5)) / sqrt(depth)
    out_init = nnx.initializers.variance_scaling(1.0 / (3.0 * config.depth), "fan_in", "uniform")
    self.out_proj = nnx.Linear(inner, dim, use_bias=False, dtype=config.dtype,
                               kernel_init=out_init, rngs=rngs)
    self.attn = SCAttn(inner, spatial=config.scattn_spatial, dtype=config.dtype,
                       kernel_init=_trunc_normal_002, rngs=rngs)
    self.multi_scan = BranchMerge(num_dirs, search=config.search, rngs=rngs)

  def __call__(self, x, grid_hw: tuple[int, int]):
    batch, num_tokens, _ = x.shape
    height, width = grid_hw
    if num_tokens != height * width + int(self.middle_cls):
      raise ValueError(f"MultiMamba: {num_tokens} tokens do not match the {height}x{width} grid"
                       f"{' plus the cls token' if self.middle_cls else ''}.")
    num_dirs, inner, rank, state = len(self.directions), self.inner_dim, self.dt_rank, self.d_state
    gather, merge = mixer_scan_orders(height, width, self.directions, self.exact_inverse,
                                      self.middle_cls)
    xz = gather_tokens(self.in_proj(x), gather)                 # [b, Lmax, K, 2E]
    x_seq, z_seq = xz[..., :inner], xz[..., inner:]
    u = self.conv1d(x_seq, silu=True)                           # [b, Lmax, K, E]
    x_dbl = self.x_proj(u)                                      # [b, Lmax, K, R + 2N]
    dt, B, C = x_dbl[..., :rank], x_dbl[..., rank:rank + state], x_dbl[..., rank + state:]
    # delta = dt_proj.weight @ dt without the bias: the bias enters the scan as delta_bias
    dt_weight = self.dt_proj.weight[...]
    if self.dtype is not None:
      dt, dt_weight = dt.astype(self.dtype), dt_weight.astype(self.dtype)
    max_length = xz.shape[1]
    flat = lambda t: t.reshape(batch, max_length, num_dirs * inner)

    def delta_then_scan(u, dt, dt_weight, A, B, C, D, z, delta_bias):
      delta = jnp.einsum("blkr,kre->blke", dt, dt_weight)
      return selective_scan(flat(u), flat(delta), A, B, C, D, flat(z), delta_bias,
                            delta_softplus=True, impl=self.scan_impl,
                            recompute=self.recompute_scan)
    # With recompute_scan on the GPU kernel, the backward recomputes Delta from dt instead of
    # keeping it (ops.selective_scan.recompute_delta_projection; LocalVMamba's SS2D._scan):
    # LocalVim-T, bf16, 128, one H200: 12.17 -> 10.46 GiB for -0.8% (BENCHMARKS.md session 20)
    if self.recompute_scan:
      delta_then_scan = recompute_delta_projection(delta_then_scan, resolved_path(
          self.scan_impl, num_dirs * inner, num_dirs, state,
          [x.dtype for x in (u, dt, B, C, z_seq)]))
    y = delta_then_scan(u, dt, dt_weight,
                        -jnp.exp(self.A_log[...].reshape(num_dirs * inner, state)), B, C,
                        self.D[...].reshape(-1), z_seq, self.dt_proj.bias[...].reshape(-1))
    y = merge_tokens(y.reshape(batch, max_length, num_dirs, inner), merge)   # [b, L, K, E]
    return self.out_proj(self.multi_scan(self.attn(y)))


class Block(nnx.Module):
  """Vim block: residual += drop_path(hidden); hidden = mixer(RMSNorm(residual)).

  Returns (hidden, residual) like the official `Block` (fused add + norm, residual in fp32).
  """

  def __init__(self, config: LocalVimConfig, layer: int, drop_path_rate: float, *,
               rngs: nnx.Rngs):
    self.norm = rms_norm(config.embed_dim, dtype=config.dtype, rngs=rngs)
    self.mixer = MultiMamba(config, layer, rngs=rngs)
    self.drop_path_rate = drop_path_rate
    self.deterministic = False

  def __call__(self, hidden, residual, grid_hw, *, key=None):
    if residual is None:
      residual = hidden.astype(jnp.float32)
    else:
      hidden = drop_path(hidden, self.drop_path_rate, key, self.deterministic)
      residual = residual + hidden.astype(jnp.float32)
    return self.mixer(self.norm(residual), grid_hw), residual


class LocalVim(nnx.Module):
  """LocalVim classifier (official `VisionMamba` with `MultiMamba` mixers).

  model(images NHWC, key=None) -> logits [batch, num_classes] (float32).
  forward_with_features -> (logits, out): 'patch_embed' [b, Ht*Wt, D] (before cls/pos),
    'layers.{i}.0' (mixer output of block i) and 'layers.{i}.1' (its fp32 residual stream),
    both [b, L, D] (the names of the golden activations, which hook the official block's
    (hidden, residual) tuple), 'norm_f' [b, L, D], 'pre_logits' [b, D].
  features(images, layers) -> [b, Ht, Wt, D] mixer outputs of the chosen blocks (what the
    official det/seg Backbone takes, before its new `outnorm` LayerNorms; cls token dropped).

  Beyond the official code (which cannot run these cases): the middle-cls variant at a token
  grid other than img_size // patch resizes pos_embed without its cls entry and keeps that
  entry (the official resize would fail on 197 tokens).
  """

  def __init__(self, config: LocalVimConfig, *, rngs: nnx.Rngs):
    # Keys drawn at constant cost under eval_shape/jit traces (layers/init_keys.py);
    # the parameters and `rngs` end up as if `rngs` had been used directly.
    with init_keys(rngs) as keys:
      self._build(config, keys)

  def _build(self, config: LocalVimConfig, rngs):
    self.config = config
    dim = config.embed_dim
    self.patch_embed = PatchEmbed(config, rngs=rngs)
    if config.middle_cls_token:
      self.cls_token = nnx.Param(jnp.zeros((1, 1, dim)))  # official init: zeros
    self.pos_embed = nnx.Param(_trunc_normal_002(rngs.params(), (1, config.num_pos_tokens, dim)))
    self.layers = nnx.List([Block(config, i, rate, rngs=rngs)
                            for i, rate in enumerate(config.block_drop_path_rates())])
    self.norm_f = rms_norm(dim, dtype=config.dtype, rngs=rngs)
    self.head = (nnx.Linear(dim, config.num_classes, dtype=config.dtype,
                            kernel_init=_trunc_normal_002, rngs=rngs)
                 if config.num_classes > 0 else None)
    self.deterministic = False

  # -- helpers ---------------------------------------------------------------------------------

  def _check_images(self, images):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != self.config.in_chans:
      raise ValueError(f"LocalVim: images must be NHWC [batch, H, W, {self.config.in_chans}], "
                       f"got shape {None if shape is None else tuple(shape)}; transpose NCHW "
                       f"inputs with x.transpose(0, 2, 3, 1).")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"LocalVim: images must be floating point (normalised), got dtype "
                       f"{images.dtype}; convert e.g. with images.astype(jnp.float32).")

  def _pos_embed(self, grid_hw):
    pos = self.pos_embed[...]
    grid = self.config.pos_grid
    if tuple(grid_hw) == (grid, grid):
      return pos
    if not self.config.middle_cls_token:
      return rope_lib.resize_token_grid(pos, (grid, grid), grid_hw)
    cls = grid * grid // 2
    spatial = jnp.concatenate([pos[:, :cls], pos[:, cls + 1:]], axis=1)
    spatial = rope_lib.resize_token_grid(spatial, (grid, grid), grid_hw)
    new_cls = grid_hw[0] * grid_hw[1] // 2
    return jnp.concatenate([spatial[:, :new_cls], pos[:, cls:cls + 1], spatial[:, new_cls:]], 1)

  def _embed(self, images):
    self._check_images(images)
    patches = self.patch_embed(images)
    batch, height, width, dim = patches.shape
    tokens = patches.reshape(batch, height * width, dim)
    out = {"patch_embed": tokens}
    x = tokens
    if self.config.middle_cls_token:
      cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (batch, 1, dim))
      middle = height * width // 2
      x = jnp.concatenate([x[:, :middle], cls, x[:, middle:]], axis=1)
    # fp32 like the official autocast: a bf16 conv output plus the fp32 pos_embed promotes
    x = x.astype(jnp.float32) + self._pos_embed((height, width)).astype(jnp.float32)
    return x, (height, width), out

  def _blocks(self, x, grid_hw, key, out, last_layer=None):
    config = self.config
    keys = [None] * (len(self.layers) + 1) if key is None else list(
        jax.random.split(key, len(self.layers) + 1))
    cos = sin = None
    if config.rope:
      cos, sin = rope_lib.rope_tables_for_grid(config.embed_dim, config.pos_grid, tuple(grid_hw))
    def run_block(block, hidden, residual, key):
      return block(hidden, residual, grid_hw, key=key)   # grid_hw stays static (closure)

    if config.remat:
      # Save only each block's inputs (hidden, residual, key) for the backward and recompute
      # the block there: the scan's residuals and the mixer's activations dominate memory.
      run_block = nnx.remat(run_block)
    hidden, residual = x, None
    for i, block in enumerate(self.layers):
      if config.rope:
        hidden = rope_lib.apply_rope(hidden, cos, sin)
        if residual is not None and config.rope_residual:
          residual = rope_lib.apply_rope(residual, cos, sin)
      hidden, residual = run_block(block, hidden, residual, keys[i])
      out[f"layers.{i}.0"] = hidden
      out[f"layers.{i}.1"] = residual
      if last_layer is not None and i >= last_layer:
        break
    return hidden, residual, keys[-1]

  # -- public API ------------------------------------------------------------------------------

  def forward_with_features(self, images, *, key=None):
    x, grid_hw, out = self._embed(images)
    hidden, residual, key = self._blocks(x, grid_hw, key, out)
    hidden = drop_path(hidden, self.config.drop_path_rate, key, self.deterministic)
    tokens = self.norm_f(residual + hidden.astype(jnp.float32))
    out["norm_f"] = tokens
    if self.config.middle_cls_token:
      pooled = tokens[:, grid_hw[0] * grid_hw[1] // 2]
    else:
      pooled = jnp.mean(tokens, axis=1)
    out["pre_logits"] = pooled
    logits = pooled if self.head is None else self.head(pooled)
    return logits.astype(jnp.float32), out

  def __call__(self, images, *, key=None):
    return self.forward_with_features(images, key=key)[0]

  def default_feature_layers(self) -> tuple[int, ...]:
    """Official det/seg out_indices [4, 9, 14, 19] for depth 20: ends of four equal quarters."""
    depth = len(self.layers)
    return tuple(sorted({max(0, depth * (q + 1) // 4 - 1) for q in range(4)}))

  def features(self, images, layers: Optional[Sequence[int]] = None, *, key=None):
    """Mixer outputs of `layers` as [batch, Ht, Wt, D] maps (default: default_feature_layers)."""
    depth = len(self.layers)
    layers = self.default_feature_layers() if layers is None else tuple(layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, (int, np.integer))
           or not -depth <= i < depth]
    if bad or not layers:
      raise ValueError(f"LocalVim.features: layers must be a non-empty list of block indices in "
                       f"[0, {depth}), got {layers!r}.")
    layers = tuple(int(i) % depth for i in layers)
    x, (height, width), out = self._embed(images)
    self._blocks(x, (height, width), key, out, last_layer=max(layers))
    maps = []
    for i in layers:
      hidden = out[f"layers.{i}.0"]
      if self.config.middle_cls_token:
        middle = height * width // 2
        hidden = jnp.concatenate([hidden[:, :middle], hidden[:, middle + 1:]], axis=1)
      maps.append(hidden.reshape(hidden.shape[0], height, width, hidden.shape[-1]))
    return maps

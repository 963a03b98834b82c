"""LocalVMambaConfig: the hyper-parameters of the hierarchical LocalMamba family.

Defaults are those of the official `VSSM` (reference doc Sec. 3.4 and Sec. 4): patch 4,
d_state 16, ssm_ratio 2, dt_rank ceil(C / 16), depthwise conv 3, LayerNorm eps 1e-5, no MLP.
`directions=None` builds the search supernet (every block scans all `search_candidates`
and merges them with softmax weights, paper Sec. 3.4 / reference Sec. 5).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops.depthwise_conv import IMPLEMENTATIONS as DEPTHWISE_CONV_IMPLEMENTATIONS
from localmamba_jax.ops.scan_orders import ALL_CHOICES, parse_direction
from localmamba_jax.ops.selective_scan import IMPLEMENTATIONS


def _positive_ints(name: str, values) -> tuple[int, ...]:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ValueError(f"LocalVMambaConfig.{name} must be a non-empty list of positive integers, "
                     f"got {values!r}.")
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"LocalVMambaConfig.{name} must hold positive integers, got {values!r}.")
    out.append(int(v))
  return tuple(out)


def _direction_list(what: str, names) -> tuple[str, ...]:
  if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
    raise ValueError(f"{what} must be a non-empty list of direction names such as "
                     f"['h', 'v_flip', 'w2', 'w7'], got {names!r}.")
  parsed = tuple(parse_direction(n).name for n in names)   # raises on unknown names
  if len(set(parsed)) != len(parsed):
    raise ValueError(f"{what} lists a direction twice: {list(names)!r}. Each branch of a "
                     f"mixer must scan a different direction.")
  return parsed


SCAN_OUTPUT_DTYPES = ("float32", "compute")


@dataclasses.dataclass(frozen=True)
class LocalVMambaConfig:
  """Architecture of a LocalVMamba model (official `VSSM` with local scans).

  dims, depths:     channels and number of VSSBlocks per stage; a PatchMerging2D
                    (C -> next C) follows every stage but the last.
  directions:       one list of scan directions per block, stage by stage (sum(depths)
                    lists); branch k of a block scans directions[k]. None = search supernet.
  search_candidates: the directions every supernet block scans (official: ALL_CHOICES).
  dt_rank:          None = official "auto", ceil(C / 16).
  d_conv:           depthwise conv kernel (odd); 1 = no conv (the official d_conv < 2 path).
  num_classes:      0 = no head; the model then returns the pooled features.
  scattn_spatial:   False = the released channel-only SCAttn; True = the paper's spatial +
                    channel form (extra parameters; no released checkpoint has them).
  exact_inverse:    False = the official `v` merge (scrambles v/v_flip on H != W grids,
                    kept for parity); True = the true inverse.
  dtype:            compute dtype (None = float32). Parameters, the selective scan, the
                    LayerNorm statistics and the residual stream stay float32.
  scan_impl, scan_chunk_size: passed to the selective-scan op.
  remat:            True = rematerialise every VSSBlock (nnx.remat / jax.checkpoint): the
                    backward keeps only each block's input and recomputes the block's
                    forward, trading about one extra forward pass for activation memory.
                    Parameters, outputs and gradients are unchanged.
  recompute_scan:   True = each selective scan keeps only its inputs for the backward and
                    recomputes its forward there (the GPU kernel: just its state
                    checkpoints, and Delta is recomputed from its low-rank dt by one small
                    GEMM; LocalVMamba-T, bf16, 128 per H200: 32.3 -> 16.6 GiB for -7..-9%
                    img/s). A middle ground between the default (fastest) and remat (least
                    memory): one more scan forward per block. Outputs and gradients are
                    unchanged.
  scan_output_dtype: "float32" (default) = the selective scan returns float32 whatever the
                    compute dtype, as the official custom_fwd(cast_inputs=float32) scan under
                    autocast; "compute" = it returns the compute dtype (bf16 under bf16), so
                    the [b, HW, K, E] tensor that SCAttn, the branch merge and out_norm read,
                    and its gradient, take half the bytes: LocalVMamba-T bf16 at 128 per H100
                    trained 4.3% faster (pipelined; 3.4% synchronised) in 3.2 GiB less and
                    evaluated 9.2% faster (BENCHMARKS.md session 12), at the price of one bf16
                    rounding of the scan output that the official code does not have. The
                    scan itself still accumulates in float32; no effect in float32 compute.
  scattn_kernels:   True (default) = where the scan runs the GPU kernel (scan_impl
                    'pallas_gpu', or 'auto' on a GPU), SCAttn's pooled LayerNorm and the branch
                    sum run through the Pallas row kernels (layers.scattn.gated_branch_sum):
                    one read of the scan output fewer in the forward and one in the backward
                    of each block. False = XLA only. Values and gradients agree within float32
                    rounding. Only the channel-only SCAttn with the plain branch sum (not the
                    spatial form, not the search supernet) has the fused path.
  norm_kernels:     True (default) = where the scan runs the GPU kernel, the LayerNorms of the
                    residual stream (patch embedding, each block's norm, patch merging, the
                    final norm) take their backward from one Pallas pass
                    (layers.norms.KernelGradLayerNorm) instead of XLA's fusions; same
                    parameters and forward, gradients equal within float32 rounding. False =
                    XLA only.
  depthwise_conv_impl: how the mixer's depthwise d_conv x d_conv conv is computed (same
                    parameters either way; ops/depthwise_conv.py): "shifted" = d_conv^2 shifted
                    multiply-adds summed in float32, fused by XLA; "pallas_gpu" = the shifted
                    forward with the backward as one Pallas GPU kernel (XLA's conv where no
                    derivative is taken); "lax" = lax.conv_general_dilated, cuDNN on a GPU
                    (what flax's nnx.Conv runs); "auto" (default) = "shifted" on the CPU (30-70x
                    faster there), "pallas_gpu" on a GPU, "lax" elsewhere. On an H200
                    "pallas_gpu" trained LocalVMamba-T 1.0% faster than "lax" and compiled its
                    train step 9 s faster (no cuDNN algorithms to autotune; BENCHMARKS.md session
                    24); "shifted" compiled 14 s faster but trained 5.7% slower (session 23).
                    Values and gradients agree within float32 rounding (bf16: one rounding of
                    the float32 sum either way).
  scan_blocks:      True = run each stage's consecutive blocks of equal scan-table layout as
                    one jax.lax.scan (one block program traced and compiled, the directions,
                    drop-path rates and parameters passed as data), to cut compile time;
                    False = unrolled blocks. Parameters and checkpoints are the same either way;
                    outputs and gradients equal up to float reassociation. Not with the TPU
                    kernel (scan_impl 'pallas_tpu', or 'auto' on TPU).
  """

  dims: Sequence[int] = (96, 192, 384, 768)
  depths: Sequence[int] = (2, 2, 9, 2)
  directions: Optional[Sequence[Sequence[str]]] = None
  search_candidates: Sequence[str] = ALL_CHOICES
  d_state: int = 16
  ssm_ratio: float = 2.0
  dt_rank: Optional[int] = None
  d_conv: int = 3
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 1000
  drop_path_rate: float = 0.1
  scattn_spatial: bool = False
  exact_inverse: bool = False
  dtype: Any = None
  scan_impl: str = "auto"
  scan_chunk_size: int = 128
  remat: bool = False
  recompute_scan: bool = False
  scan_blocks: bool = False
  scan_output_dtype: str = "float32"
  scattn_kernels: bool = True
  norm_kernels: bool = True
  depthwise_conv_impl: str = "auto"

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("dims", _positive_ints("dims", self.dims))
    set_("depths", _positive_ints("depths", self.depths))
    if len(self.dims) != len(self.depths):
      raise ValueError(f"LocalVMambaConfig: dims {list(self.dims)} and depths {list(self.depths)} "
                       f"must have one entry per stage (same length).")
    set_("search_candidates", _direction_list("LocalVMambaConfig.search_candidates",
                                              self.search_candidates))
    if self.directions is not None:
      if isinstance(self.directions, (str, bytes)) or not isinstance(self.directions, Sequence):
        raise ValueError(f"LocalVMambaConfig.directions must be None (search supernet) or a list "
                         f"of sum(depths) direction lists, got {self.directions!r}.")
      if len(self.directions) != self.num_blocks:
        raise ValueError(
            f"LocalVMambaConfig.directions has {len(self.directions)} lists but depths "
            f"{list(self.depths)} have {self.num_blocks} blocks; give one list per block, "
            f"stage by stage, or None for the search supernet.")
      set_("directions", tuple(_direction_list(f"LocalVMambaConfig.directions[{i}]", d)
                               for i, d in enumerate(self.directions)))
    for name in ("d_state", "patch_size", "in_chans", "scan_chunk_size"):
      _positive_ints(name, [getattr(self, name)])
    if self.dt_rank is not None:
      _positive_ints("dt_rank", [self.dt_rank])
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) \
        or self.num_classes < 0:
      raise ValueError(f"LocalVMambaConfig.num_classes must be an integer >= 0 (0 = no head), "
                       f"got {self.num_classes!r}.")
    if isinstance(self.d_conv, bool) or not isinstance(self.d_conv, (int, np.integer)) \
        or self.d_conv < 1 or self.d_conv % 2 == 0:
      raise ValueError(f"LocalVMambaConfig.d_conv must be an odd integer >= 1 (the official "
                       f"'same' padding (k - 1) // 2 needs an odd kernel; 1 = no conv), got "
                       f"{self.d_conv!r}.")
    if not self.ssm_ratio > 0:
      raise ValueError(f"LocalVMambaConfig.ssm_ratio must be > 0, got {self.ssm_ratio!r}.")
    for dim in self.dims:
      if int(self.ssm_ratio * dim) < 8:
        raise ValueError(
            f"LocalVMambaConfig: inner width int(ssm_ratio * dim) = int({self.ssm_ratio} * {dim}) "
            f"< 8 leaves SCAttn (reduction 1/8) no channels; use larger dims or ssm_ratio.")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"LocalVMambaConfig.drop_path_rate must be in [0, 1), got "
                       f"{self.drop_path_rate!r}.")
    if not isinstance(self.remat, (bool, np.bool_)):
      raise ValueError(f"LocalVMambaConfig.remat must be True (rematerialise each block in the "
                       f"backward) or False, got {self.remat!r}.")
    set_("remat", bool(self.remat))
    if not isinstance(self.recompute_scan, (bool, np.bool_)):
      raise ValueError(f"LocalVMambaConfig.recompute_scan must be True (the backward recomputes "
                       f"each scan's forward) or False (keep its states), got "
                       f"{self.recompute_scan!r}.")
    set_("recompute_scan", bool(self.recompute_scan))
    if not isinstance(self.scan_blocks, (bool, np.bool_)):
      raise ValueError(f"LocalVMambaConfig.scan_blocks must be True (one lax.scan over each "
                       f"stage's blocks) or False (unrolled), got {self.scan_blocks!r}.")
    set_("scan_blocks", bool(self.scan_blocks))
    if self.scan_output_dtype not in SCAN_OUTPUT_DTYPES:
      raise ValueError(f"LocalVMambaConfig.scan_output_dtype must be one of "
                       f"{SCAN_OUTPUT_DTYPES} ('float32' as the official code, 'compute' for "
                       f"the compute dtype), got {self.scan_output_dtype!r}.")
    if self.depthwise_conv_impl not in DEPTHWISE_CONV_IMPLEMENTATIONS:
      raise ValueError(f"LocalVMambaConfig.depthwise_conv_impl must be one of "
                       f"{DEPTHWISE_CONV_IMPLEMENTATIONS} ('auto', 'shifted' = fused "
                       f"multiply-adds, 'lax' = lax.conv_general_dilated / cuDNN), got "
                       f"{self.depthwise_conv_impl!r}.")
    if self.scan_impl not in IMPLEMENTATIONS:
      raise ValueError(f"LocalVMambaConfig.scan_impl must be one of {IMPLEMENTATIONS}, got "
                       f"{self.scan_impl!r}.")
    if self.dtype is not None and not jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating):
      raise ValueError(f"LocalVMambaConfig.dtype must be None or a floating dtype such as "
                       f"jnp.bfloat16, got {self.dtype!r}.")

  # ---- derived quantities ------------------------------------------------------------------

  @property
  def num_blocks(self) -> int:
    return sum(self.depths)

  @property
  def is_search(self) -> bool:
    return self.directions is None

  def inner_dim(self, stage: int) -> int:
    return int(self.ssm_ratio * self.dims[stage])

  def stage_dt_rank(self, stage: int) -> int:
    return self.dt_rank if self.dt_rank is not None else math.ceil(self.dims[stage] / 16)

  def block_directions(self, block: int) -> tuple[str, ...]:
    """Directions of the global block index `block` (stage by stage)."""
    return self.search_candidates if self.directions is None else self.directions[block]

  def drop_path_rates(self) -> list[float]:
    """Official rule: linspace(0, drop_path_rate, sum(depths)) over all blocks."""
    return [float(r) for r in np.linspace(0.0, self.drop_path_rate, self.num_blocks)]

  @classmethod
  def tiny(cls, **overrides) -> "LocalVMambaConfig":
    """A small model for tests and quick runs (the golden `vssm_mini` architecture)."""
    kwargs = dict(
        dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_classes=10, drop_path_rate=0.2,
        directions=(("h", "h_flip", "w7", "w7_flip"), ("v", "v_flip", "w2", "w2_flip"),
                    ("h_flip", "v_flip", "w2_flip", "w7"), ("h", "v", "w2", "w7_flip"),
                    ("h_flip", "v_flip", "w2", "w7")))
    kwargs.update(overrides)
    return cls(**kwargs)

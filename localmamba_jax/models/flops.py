"""Parameter counts and FLOPs of the models, in the paper's convention (1 multiply-add = 1 FLOP).

The published FLOPs (README / reference doc Sec. 9) come from each family's own counter in
the official code, and the two families count differently:

* LocalVMamba (`VSSM.flops`, VMamba's counter): fvcore over the traced model. fvcore counts
  every Linear / einsum / conv as its multiply-adds, every LayerNorm as 5 FLOPs per element
  (its default `norm_flop_counter`; 4 without affine), the classifier's adaptive average
  pool as 1 per element, nothing for elementwise ops (SiLU, exp, products, sums, softmax),
  and each selective-scan call with VMamba's `flops_selective_scan_fn`:

      9 * B * L * D * N + B * D * L      (u: [B, L, D] = [batch, Lmax, K * E], A: [D, N])

  i.e. the 9 BLDN estimate of mamba issue #110 (discretisation exp(delta A) and delta B u,
  the recurrence's multiply-add, C h) plus the D skip; the z gate is not counted (VMamba's
  handle passes with_Z=False). L is the scanned length, window pads included.
  `traced_flops` reproduces this from the JAX program: it walks the jaxpr of the forward
  pass (abstract inputs, no allocation) and counts dot_general and conv_general_dilated
  multiply-adds (the shifted depthwise conv of ops/depthwise_conv.py as the conv it is), 5
  FLOPs per element for every normalisation (recognised as an `rsqrt` of a reduced statistic;
  this also catches RMSNorm and the search merge's non-affine LN, which fvcore would count as
  0 and 4), and each `selective_scan_core` call (ops/selective_scan.py
  jits the scan under that name) with the formula above; nothing inside the scan call is
  counted again. Average pooling (< 0.001 % of any model here) is not counted.

* LocalVim (`VisionMamba.flops`): a hand-written formula, `official_local_vim_flops`,
  which counts per layer: in_proj, the causal conv1d as (L + d_conv - 1) * E * d_conv,
  x_proj and dt_proj *once* (not once per direction), per direction a scan of
  5 * E * L * N + 2 * E * L (A: ELN, delta B u: 2 ELN, C h: 2 ELN, D skip and z gate: EL
  each), SCAttn's two Linears once (on the pooled vector, no L), out_proj, one norm as L * D;
  plus the patch-embedding conv and the head. Because x_proj, dt_proj and conv1d run once
  per direction (K = 4), this undercounts the real work; the traced count of the same
  model (same rules as LocalVMamba) is reported next to it by `models/info.py`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.models import registry
from localmamba_jax.models.local_vim import LocalVimConfig
from localmamba_jax.ops.depthwise_conv import CALL_NAME as DEPTHWISE_CONV_CALL_NAME

SCAN_CALL_NAME = "selective_scan_core"    # the jitted scan in ops/selective_scan.py
NORM_FLOPS_PER_ELEMENT = 5               # fvcore's LayerNorm rule (affine)
_CALL_PRIMITIVES = ("jit", "pjit")


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs (1 multiply-add = 1) of a program, by kind."""

  matmul: int = 0    # dot_general (Linear, einsum, matmul)
  conv: int = 0      # conv_general_dilated
  norm: int = 0      # LayerNorm / RMSNorm, 5 per normalised element
  scan: int = 0      # selective scans, VMamba's formula

  @property
  def total(self) -> int:
    return self.matmul + self.conv + self.norm + self.scan

  def __add__(self, other: "FlopCount") -> "FlopCount":
    return FlopCount(*(a + b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))

  def scaled(self, times: int) -> "FlopCount":
    return FlopCount(*(times * a for a in dataclasses.astuple(self)))


def selective_scan_flops(batch: int, length: int, channels: int, d_state: int) -> int:
  """VMamba's `flops_selective_scan_fn(with_D=True, with_Z=False)`: 9 BLDN + BDL."""
  return 9 * batch * length * channels * d_state + batch * channels * length


# ---- the jaxpr walker ----------------------------------------------------------------------

def _numel(var) -> int:
  return int(np.prod(var.aval.shape, dtype=np.int64))


def _is_literal(var) -> bool:
  return not hasattr(var, "count") and hasattr(var, "val")


def _dot_general_macs(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  contracted = int(np.prod([lhs_shape[i] for i in lhs_contract], dtype=np.int64))
  return _numel(eqn.outvars[0]) * contracted


def _conv_macs(eqn) -> int:
  # every output element reads (in_features / groups) * prod(kernel) weights once
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  return _numel(eqn.outvars[0]) * (int(np.prod(rhs, dtype=np.int64)) // out_features)


def _normalized_elements(eqn, producers) -> int:
  """Elements normalised by an `rsqrt(statistic + eps)`: the size of the tensor the
  statistic was reduced from (follows eps adds, divisions and casts back to the reduction)."""
  var = eqn.invars[0]
  for _ in range(16):
    producer = producers.get(var)
    if producer is None:
      return 0
    if producer.primitive.name.startswith("reduce_"):
      return _numel(producer.invars[0])
    operands = [v for v in producer.invars if not _is_literal(v)]
    if not operands:
      return 0
    if producer.primitive.name in _CALL_PRIMITIVES:   # e.g. jnp.mean traced as jit[name=_mean]
      return max(_numel(v) for v in operands)
    var = max(operands, key=_numel)
  return 0


def _sub_jaxprs(eqn) -> Iterator[tuple[Any, int]]:
  """(sub-jaxpr, times it runs) for control flow and calls; `cond` yields its costliest branch."""
  name = eqn.primitive.name
  if name == "while":
    raise ValueError("count_jaxpr_flops: the program has a while loop, whose trip count is "
                     "unknown; count it analytically (as the selective scan is) or use lax.scan.")
  if name == "cond":
    branches = eqn.params["branches"]
    yield max(branches, key=lambda b: count_jaxpr_flops(b).total), 1
    return
  times = int(eqn.params["length"]) if name == "scan" else 1
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns"):
        yield item, times


def count_jaxpr_flops(jaxpr) -> FlopCount:
  """FLOPs of a (closed) jaxpr under the rules of the module docstring, sub-jaxprs included
  (scan bodies times their length)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  producers = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
  total = FlopCount()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _CALL_PRIMITIVES and eqn.params.get("name") == SCAN_CALL_NAME:
      batch, length, channels = eqn.invars[0].aval.shape       # u
      d_state = eqn.invars[2].aval.shape[1]                    # A [channels, N]
      total += FlopCount(scan=selective_scan_flops(batch, length, channels, d_state))
      continue                                                 # its inside is the formula
    if name == "dot_general":
      total += FlopCount(matmul=_dot_general_macs(eqn))
    elif name == "conv_general_dilated":
      total += FlopCount(conv=_conv_macs(eqn))
    elif name in _CALL_PRIMITIVES and eqn.params.get("name") == DEPTHWISE_CONV_CALL_NAME:
      # the shifted depthwise conv: fvcore counts the conv it replaces, k_h * k_w multiply-adds
      # per output element (kernel [k_h, k_w, 1, E]); its inside (elementwise) is not counted
      k_h, k_w = eqn.invars[1].aval.shape[:2]
      total += FlopCount(conv=_numel(eqn.outvars[0]) * k_h * k_w)
      continue
    elif name == "rsqrt":
      total += FlopCount(norm=NORM_FLOPS_PER_ELEMENT * _normalized_elements(eqn, producers))
    for sub, times in _sub_jaxprs(eqn):
      total += count_jaxpr_flops(sub).scaled(times)
  return total


# ---- models --------------------------------------------------------------------------------

def _hw(resolution: Union[int, Sequence[int]]) -> tuple[int, int]:
  hw = (resolution, resolution) if isinstance(resolution, (int, np.integer)) else tuple(resolution)
  if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
    raise ValueError(f"resolution must be a positive integer or (height, width), got "
                     f"{resolution!r}.")
  return int(hw[0]), int(hw[1])


def abstract_model(name: str, **overrides) -> nnx.Module:
  """The registered model with abstract (ShapeDtypeStruct) parameters: nothing is allocated.
  The scan runs the XLA path ("associative"), whose call the walker recognises."""
  overrides.setdefault("scan_impl", "associative")
  return nnx.eval_shape(lambda: registry.create_model(name, **overrides))


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def traced_flops(model: nnx.Module, resolution: Union[int, Sequence[int]] = 224,
                 batch: int = 1) -> FlopCount:
  """FLOPs of model(images [batch, H, W, C]) in eval mode, from its traced program.

  `model` may be abstract (see `abstract_model`); its scan_impl must not be "pallas_gpu"
  (a Pallas call is not recognised as a scan).
  """
  height, width = _hw(resolution)
  model.eval()
  graphdef, state = nnx.split(model)

  def forward(state, images):
    return nnx.merge(graphdef, state)(images)

  images = jax.ShapeDtypeStruct((batch, height, width, model.config.in_chans), jnp.float32)
  return count_jaxpr_flops(jax.make_jaxpr(forward)(state, images))


def official_local_vim_flops(config: LocalVimConfig, resolution: Union[int, Sequence[int]] = 224,
                             batch: int = 1) -> int:
  """The official `VisionMamba.flops` formula (see the module docstring), at the token grid
  of `resolution` (the official method uses the init-time grid for L; the same at 224)."""
  height, width = _hw(resolution)
  p = config.patch_size
  grid_h, grid_w = math.ceil(height / p), math.ceil(width / p)   # dynamic_img_pad
  dim, inner, rank, state = config.embed_dim, config.inner_dim, config.dt_rank, config.d_state
  length = grid_h * grid_w + int(config.middle_cls_token)
  reduced = int(inner * 0.125)
  flops = grid_h * grid_w * dim * config.in_chans * p * p        # patch_embed conv (hook)
  for layer in range(config.depth):
    num_dirs = len(config.layer_directions(layer))
    flops += dim * 2 * inner * length                            # in_proj
    flops += (length + config.d_conv - 1) * inner * config.d_conv  # causal conv1d
    flops += length * inner * (rank + 2 * state)                 # x_proj_0
    flops += length * rank * inner                               # dt_proj_0
    flops += num_dirs * (5 * inner * length * state + 2 * inner * length)   # scans
    flops += 2 * inner * reduced                                 # SCAttn Linears
    flops += length * inner * dim                                # out_proj
    flops += length * dim                                        # "layer norm"
  flops += dim * config.num_classes                              # head (official: 1000)
  return batch * flops


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  name: str
  family: str
  resolution: tuple[int, int]
  params: int
  traced: FlopCount          # this program, LocalVMamba's (fvcore) rules
  paper_flops: int           # the published convention of the model's family
  convention: str


def model_info(name: str, resolution: Union[int, Sequence[int]] = 224, **overrides) -> ModelInfo:
  """Parameters and FLOPs (batch 1) of a registered model; `overrides` as in create_model."""
  hw = _hw(resolution)
  model = abstract_model(name, **overrides)
  traced = traced_flops(model, hw)
  if isinstance(model.config, LocalVimConfig):
    paper, convention = official_local_vim_flops(model.config, hw), "VisionMamba.flops formula"
  else:
    paper, convention = traced.total, "fvcore (VSSM.flops)"
  return ModelInfo(name, registry.model_spec(name).family, hw, count_params(model), traced,
                   paper, convention)

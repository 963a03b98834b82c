"""`recompute_scan=True`: each selective scan keeps only its inputs for the backward and
recomputes its forward there. Same parameters, values and gradients; fewer residual bytes.

The XLA scan path (CPU) does it with jax.checkpoint around the scan; the GPU kernel rebuilds
only its state checkpoints (tests/ops/test_selective_scan_gpu.py checks that in interpret
mode; here, that the option reaches it), and on its path both models recompute Delta from dt
instead of keeping it (ops.selective_scan.recompute_delta_projection; here, with the kernel in
interpret mode). Tolerance as tests/models/test_remat.py: every gradient leaf within
1e-6 * max|leaf| (the kernel-path comparison: tests/model_comparison.py's).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models.local_vim import LocalVim, LocalVimConfig
from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from localmamba_jax.ops import multi_direction_selective_scan, selective_scan
from localmamba_jax.ops.kernels import selective_scan_gpu
from localmamba_jax.ops.scan_orders import stacked_scan_orders
from localmamba_jax.training.model_factory import build_model, model_kwargs
from localmamba_jax.training.recipes import imagenet_config
from tests.model_comparison import assert_same_loss_and_grads, loss_and_grads
from tests.models.test_remat import (FAST_COMPILE, VIM_DIRECTIONS, VMAMBA_DIRECTIONS,
                                     assert_tree_close, loss_fn, loss_scale)


def build(family, recompute_scan, abstract=False):
  if family == "local_vmamba":
    config = LocalVMambaConfig(dims=(16, 32), depths=(2, 1), directions=VMAMBA_DIRECTIONS,
                               num_classes=10, drop_path_rate=0.5, scan_impl="associative",
                               scan_chunk_size=8, recompute_scan=recompute_scan)
    make = lambda: LocalVMamba(config, rngs=nnx.Rngs(0))
  else:
    config = LocalVimConfig.tiny_test(depth=3, directions=VIM_DIRECTIONS, drop_path_rate=0.5,
                                      scan_impl="associative", recompute_scan=recompute_scan)
    make = lambda: LocalVim(config, rngs=nnx.Rngs(0))
  return nnx.eval_shape(make) if abstract else make()


def image_size(family):
  return 32 if family == "local_vmamba" else 64


# LocalVim's scans take the same selective_scan(recompute=True) path (its residuals: below;
# its kernel option: test_ops_pass_recompute_to_the_gpu_kernel); one family compiled here.
@pytest.mark.parametrize("family", ["local_vmamba"])
def test_recompute_scan_keeps_parameters_values_and_gradients(family):
  images = jax.random.normal(jax.random.key(1), (2, image_size(family), image_size(family), 3))
  key = jax.random.key(3)
  results = {}
  for recompute in (False, True):
    model = build(family, recompute)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grad = jax.value_and_grad(loss_fn(graphdef, rest), has_aux=True)
    (loss, logits), grads = jax.jit(grad).lower(params, images, key).compile(FAST_COMPILE)(
        params, images, key)
    results[recompute] = dict(params=params, loss=loss, logits=logits, grads=grads)
  for name in ("params", "loss", "logits", "grads"):
    assert_tree_close(name, results[True][name], results[False][name],
                      scale=loss_scale(results[False]["logits"]) if name == "loss" else None)


@pytest.mark.parametrize("family", ["local_vmamba", "local_vim"])
def test_recompute_scan_holds_fewer_residuals(family):
  """Bytes of the residuals jax.vjp holds for the backward (abstract, no compile): the scans'
  chunk-boundary states (and the other per-step values of the XLA path) are not among them."""
  def residual_bytes(recompute):
    graphdef, params, rest = nnx.split(build(family, recompute, abstract=True), nnx.Param, ...)
    loss = loss_fn(graphdef, rest)
    size = image_size(family)
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    leaves = jax.eval_shape(
        lambda p, x, k: jax.tree.leaves(jax.vjp(lambda q: loss(q, x, k)[0], p)[1]),
        params, images, jax.random.key(0))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)

  plain, recompute = residual_bytes(False), residual_bytes(True)
  assert recompute < 0.9 * plain, (family, plain, recompute)


def test_ops_pass_recompute_to_the_gpu_kernel(monkeypatch):
  """Both ops hand `recompute` to the GPU kernel as recompute_checkpoints (interpret mode),
  also with scan-order tables passed as data (LocalVMamba's scan_blocks)."""
  seen = []
  original = selective_scan_gpu._scan
  monkeypatch.setattr(selective_scan_gpu, "_scan", lambda cfg, *a: seen.append(
      cfg.recompute_checkpoints) or original(cfg, *a))
  rng = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  u, a = f32(1, 12, 16), -jnp.ones((16, 4), jnp.float32)
  orders = stacked_scan_orders(3, 4, ("h", "v"))
  tables = (jnp.asarray(orders.gather), jnp.asarray(orders.merge))  # as data (scan_blocks)
  for recompute in (False, True):
    selective_scan(u, u, a, f32(1, 12, 2, 4), f32(1, 12, 2, 4), impl="pallas_gpu",
                   recompute=recompute)
    for given in (None, tables):
      multi_direction_selective_scan(
          f32(1, 12, 8), f32(1, 12, 2, 8), -jnp.ones((2, 8, 4)), f32(1, 12, 2, 4),
          f32(1, 12, 2, 4), grid_hw=(3, 4), directions=("h", "v"), impl="pallas_gpu",
          tables=given, recompute=recompute)
  assert seen == [False] * 3 + [True] * 3


def test_recompute_scan_config_and_training_path():
  config = imagenet_config("local_vssm_tiny", drop_path_rate=0.1)
  assert model_kwargs(config)["recompute_scan"] is False   # so --config.model.recompute_scan works
  config.model.recompute_scan = True
  model = nnx.eval_shape(lambda: build_model(config, 10, nnx.Rngs(0)))
  assert model.config.recompute_scan is True
  assert all(block.op.recompute_scan for stage in model.layers for block in stage.blocks)
  for config_class in (LocalVMambaConfig, LocalVimConfig):
    with pytest.raises(ValueError, match="recompute_scan must be True"):
      config_class(recompute_scan="yes")


def _kernel_model(recompute_scan, **overrides):
  """A small LocalVMamba on the GPU kernel's path (interpret mode on this CPU)."""
  kwargs = dict(dims=(16, 32), depths=(1, 1), directions=VMAMBA_DIRECTIONS[:1] + (
      ("v_flip", "h", "w2", "h_flip"),), num_classes=5, drop_path_rate=0.2,
      scan_impl="pallas_gpu", recompute_scan=recompute_scan)
  kwargs.update(overrides)
  return LocalVMamba(LocalVMambaConfig(**kwargs), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_recompute_scan_on_the_gpu_kernel_keeps_no_delta(scan_blocks):
  """With recompute_scan the GPU kernel keeps only its inputs, and SS2D recomputes the largest,
  Delta [b, HW, K, E], from dt and the dt projection (SS2D._scan). Abstract: the residuals
  jax.vjp holds, by shape, for a bf16 model; without recompute_scan Delta is among them."""
  batch, size = 2, 16
  def residual_shapes(recompute):
    overrides = dict(dtype=jnp.bfloat16)
    if scan_blocks:  # blocks as a lax.scan, their scan-order tables as data
      overrides.update(depths=(2, 1), scan_blocks=True, directions=(
          VMAMBA_DIRECTIONS[0], ("v_flip", "h", "w2", "h_flip"), VMAMBA_DIRECTIONS[0]))
    model = nnx.eval_shape(lambda: _kernel_model(recompute, **overrides))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    key = jax.random.key(0)
    loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x, key=key).astype(jnp.float32))
    leaves = jax.eval_shape(lambda p, x: jax.tree.leaves(jax.vjp(lambda q: loss(q, x), p)[1]),
                            params, images)
    return {(leaf.shape, jnp.dtype(leaf.dtype)) for leaf in leaves}

  # Delta per stage: [b, HW, K=4, E] and the kernel's flat view [b, HW, K*E] (E = 2 * dim)
  deltas = {((batch, hw, 4, e), jnp.dtype(jnp.bfloat16)) for hw, e in ((16, 32), (4, 64))}
  deltas |= {((batch, hw, 4 * e), jnp.dtype(jnp.bfloat16)) for hw, e in ((16, 32), (4, 64))}
  if scan_blocks:  # stage 1's two blocks: stacked residuals with a leading block axis
    deltas |= {((2,) + shape, dtype) for shape, dtype in deltas}
  assert residual_shapes(False) & deltas
  assert not residual_shapes(True) & deltas


def test_recompute_scan_on_the_gpu_kernel_keeps_values_and_gradients():
  """The GPU kernel (interpret mode) with recompute_scan against without: its states rebuilt
  in the backward and Delta recomputed there. Drop path on, as in training."""
  images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 16, 16, 3)), jnp.float32)
  got, want = (loss_and_grads(_kernel_model(recompute), images, "selective_scan")
               for recompute in (True, False))
  assert got[1] and want[1]  # the kernel ran
  assert_same_loss_and_grads(got[0], want[0])


@pytest.mark.parametrize("family", ["local_vmamba", "local_vim"])
def test_recomputing_delta_saves_its_bytes(monkeypatch, family):
  """Both model families on the GPU kernel's path, bf16, recompute_scan: the residuals saved
  for the backward shrink by Delta's bytes (one [b, Lmax, K, E] bf16 per block) against the
  same model with recompute_delta_projection switched off. Abstract, no compile. (jax's
  residual listing, `saved_residuals`, is what `jax.ad_checkpoint.print_saved_residuals`
  prints. It lists a reshaped view apart from its source, a bitcast to XLA; LocalVim's listing
  also loses such views of u and z, so there the check is a lower bound, H*W <= Lmax.)"""
  from jax._src.ad_checkpoint import saved_residuals
  import localmamba_jax.models.local_vim.model as vim_model
  import localmamba_jax.models.local_vmamba.model as vmamba_model
  module = vim_model if family == "local_vim" else vmamba_model
  batch, size = 2, image_size(family)
  if family == "local_vim":
    config = LocalVimConfig.tiny_test(depth=3, directions=VIM_DIRECTIONS, dtype=jnp.bfloat16,
                                      scan_impl="pallas_gpu", recompute_scan=True)
    make = lambda: LocalVim(config, rngs=nnx.Rngs(0))
    tokens = (size // config.patch_size) ** 2
    delta_bytes = sum(batch * tokens * len(d) * 2 * config.embed_dim * 2  # E = 2 * dim
                      for d in VIM_DIRECTIONS)
  else:
    make = lambda: _kernel_model(True, dtype=jnp.bfloat16)
    # stage 1: 8 x 8 tokens, E = 32; stage 2: 4 x 4, E = 64; K = 4 directions, bf16
    delta_bytes = batch * 4 * (64 * 32 + 16 * 64) * 2

  def residual_bytes():
    graphdef, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    key = jax.random.key(0)
    loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x, key=key).astype(jnp.float32))
    residuals = saved_residuals(loss, params,
                                jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    return sum(aval.size * aval.dtype.itemsize for aval, _ in residuals)

  recomputed = residual_bytes()
  monkeypatch.setattr(module, "recompute_delta_projection", lambda fn, path: fn)
  saved = residual_bytes() - recomputed
  if family == "local_vim":
    assert saved >= delta_bytes, (saved, delta_bytes)
  else:
    assert saved == delta_bytes, (saved, delta_bytes)

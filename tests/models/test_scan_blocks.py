"""LocalVMamba `scan_blocks=True`: each stage's blocks of equal scan-table layout run as one
jax.lax.scan, their directions, drop-path rates and parameters passed as data.

Checks: the same parameter tree; training-mode (drop path on) and eval-mode values, every
block's output and the gradients match the unrolled model, with remat off and on, for the
plain-JAX scan (the GPU kernel with tables as data: at op level, in interpret mode), the
scanned model with the depthwise conv's GPU backward kernel (interpret mode); the
traced program holds one block body instead of one per block; the runs split where scan-table
layouts differ; the scan-order tables as data give the op's own result; bad uses are refused
with a clear error. Golden parity with scanned blocks: test_local_vmamba.py.

Tolerance: float32 throughout; the scan reorders nothing within a block, but XLA fuses the
scanned body differently from the unrolled blocks, so sums may reassociate: values within
1e-6 relative, gradients within 2e-6 * max|leaf| (measured <= 8e-7).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from localmamba_jax.models.local_vmamba.model import _shared_program_runs
from localmamba_jax.ops import multi_direction_selective_scan
from localmamba_jax.ops.scan_orders import stacked_scan_orders

FAST_COMPILE = {"xla_backend_optimization_level": 0}
# stage 2 has 4 blocks with 4 different direction lists (one run); drop path 0.4 acts in all
DIRECTIONS = (("h", "v", "w2", "w2_flip"),
              ("h", "h_flip", "w2", "v_flip"), ("v", "v_flip", "w2_flip", "h"),
              ("h_flip", "w2", "v", "h"), ("w2", "w2_flip", "h", "v"))


def config(scan_blocks, **overrides):
  kwargs = dict(dims=(16, 32), depths=(1, 4), directions=DIRECTIONS, num_classes=10,
                drop_path_rate=0.4, scan_impl="associative", scan_blocks=scan_blocks)
  kwargs.update(overrides)
  return LocalVMambaConfig(**kwargs)


def run(model, images, key):
  """(loss, every block's output, grads) in training mode and the eval-mode logits."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, images, key):
    logits, out = nnx.merge(graphdef, params, rest).forward_with_features(images, key=key)
    return jnp.sum(logits ** 2), out

  grad = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, out), grads = jax.jit(grad).lower(params, images, key).compile(FAST_COMPILE)(
      params, images, key)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  eval_logits = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))(params, images)
  model.train()
  return dict(loss=loss, out=out, grads=grads, eval_logits=eval_logits)


def assert_close(name, got, want, rel):
  for path, g, w in zip(jax.tree_util.tree_leaves_with_path(want),
                        jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.max(jnp.abs(w))) + 1e-12
    err = float(jnp.max(jnp.abs(g - w)))
    assert err <= rel * scale, (name, jax.tree_util.keystr(path[0]), err, scale)


# The GPU kernel with tables as data is checked at the op level below and under a mesh in
# tests/ops/test_kernel_sharding.py (a whole-model interpret-mode run here cost ~50 s of CI).
# Scanned blocks without remat are checked against the official golden logits and gradients
# (test_local_vmamba.py::test_golden_with_scanned_blocks); the training-mode case here (drop
# path keys and rates reaching the scanned blocks) runs with remat, which wraps the same block
# program (the remat-off twin cost ~70 s of CI for no path of its own).
@pytest.mark.parametrize("impl,remat", [("associative", True)])
def test_scanned_blocks_match_unrolled_blocks(impl, remat):
  unrolled = LocalVMamba(config(False, scan_impl=impl, remat=remat), rngs=nnx.Rngs(0))
  # the scanned twin runs the mixer's conv as a GPU does ("pallas_gpu": the backward kernel,
  # interpret mode here) inside the scanned, rematerialised body; the unrolled one the CPU's
  scanned = LocalVMamba(config(True, scan_impl=impl, remat=remat,
                               depthwise_conv_impl="pallas_gpu"), rngs=nnx.Rngs(0))
  # one parameter tree: checkpoints and converted weights load either way
  assert jax.tree.structure(nnx.state(scanned, nnx.Param)) == \
      jax.tree.structure(nnx.state(unrolled, nnx.Param))
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))  # 4x4 and 2x2 grids
  key = jax.random.key(3)
  want, got = run(unrolled, images, key), run(scanned, images, key)
  # drop path acted in training mode (the key reached the scanned blocks' rates)
  eval_loss = float(jnp.sum(want["eval_logits"] ** 2))
  assert abs(float(want["loss"]) - eval_loss) > 1e-5 * eval_loss  # float noise: ~1e-7
  assert sorted(got["out"]) == sorted(want["out"])
  for name in ("loss", "eval_logits", "out"):
    assert_close(name, got[name], want[name], 1e-6)
  assert_close("grads", got["grads"], want["grads"], 2e-6)


def count_equations(jaxpr) -> int:
  """Equations of a jaxpr and, recursively, of every sub-jaxpr (each use counted)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += count_equations(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += count_equations(sub)
  return total


def test_the_scanned_program_traces_one_block_body():
  images = jnp.zeros((1, 32, 32, 3))
  counts = {}
  for scan_blocks in (False, True):
    model = LocalVMamba(config(scan_blocks), rngs=nnx.Rngs(0))
    model.eval()
    counts[scan_blocks] = count_equations(jax.make_jaxpr(lambda x: model(x))(images).jaxpr)
  # unrolled: 5 block bodies; scanned: 1 (stage 1) + 1 (stage 2's 4 blocks) and the stacking
  assert counts[True] < 0.6 * counts[False], counts


def test_runs_split_where_table_layouts_differ():
  # on a 7x7 grid w2 pads to 8x8 = 64 steps, h has 49: different layouts, separate programs
  model = LocalVMamba(config(True, dims=(16,), depths=(5,), drop_path_rate=0.0,
                             directions=(("h", "v", "h_flip", "v_flip"),
                                         ("h_flip", "v_flip", "v", "h"),
                                         ("w2", "h", "v", "h_flip"),
                                         ("w2_flip", "v", "h", "v_flip"),
                                         ("h", "v", "h_flip", "v_flip"))),
                      rngs=nnx.Rngs(0))
  blocks = list(model.layers[0].blocks)
  assert _shared_program_runs(blocks, 7, 7) == [[0, 1], [2, 3], [4]]
  # on an 8x8 grid nothing pads: one run
  assert _shared_program_runs(blocks, 8, 8) == [[0, 1, 2, 3, 4]]
  images = jax.random.normal(jax.random.key(0), (1, 28, 28, 3))
  unrolled = LocalVMamba(config(False, dims=(16,), depths=(5,), drop_path_rate=0.0,
                                directions=model.config.directions), rngs=nnx.Rngs(0))
  model.eval()
  unrolled.eval()
  np.testing.assert_allclose(model(images), unrolled(images), rtol=1e-6, atol=1e-7)


def test_tables_as_data_give_the_directions_result():
  rng = np.random.default_rng(0)
  height = width = 6
  batch, num_dirs, channels, num_state = 2, 4, 8, 4
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  u, delta = normal(batch, 36, channels), normal(batch, 36, num_dirs, channels)
  A = -jnp.exp(normal(num_dirs, channels, num_state))
  B, C = normal(batch, 36, num_dirs, num_state), normal(batch, 36, num_dirs, num_state)
  D, bias = normal(num_dirs, channels), normal(num_dirs, channels)
  static_dirs, data_dirs = ("h", "v_flip", "w2", "w3_flip"), ("v", "h_flip", "w3", "w2_flip")
  orders = stacked_scan_orders(height, width, data_dirs)
  assert orders.table_layout() == stacked_scan_orders(height, width, static_dirs).table_layout()
  for impl in ("associative", "pallas_gpu"):
    want = multi_direction_selective_scan(u, delta, A, B, C, D, bias, grid_hw=(6, 6),
                                          directions=data_dirs, impl=impl)
    got = jax.jit(lambda g, m: multi_direction_selective_scan(
        u, delta, A, B, C, D, bias, grid_hw=(6, 6), directions=static_dirs, impl=impl,
        tables=(g, m)))(jnp.asarray(orders.gather), jnp.asarray(orders.merge))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=impl)


def test_bad_uses_are_refused():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 36, 1, 8)), jnp.float32)
  A, B = -jnp.ones((1, 8, 4)), jnp.ones((1, 36, 1, 4))
  orders = stacked_scan_orders(7, 7, ["w2"])  # the tables of another grid
  with pytest.raises(ValueError, match=r"tables\[gather\] must have the shape \(1, 36\)"):
    multi_direction_selective_scan(x, x, A, B, B, grid_hw=(6, 6), directions=["h"],
                                   impl="associative", tables=(orders.gather, orders.merge))
  good = stacked_scan_orders(6, 6, ["v"])
  with pytest.raises(ValueError, match="not supported by the TPU kernel"):
    multi_direction_selective_scan(x, x, A, B, B, grid_hw=(6, 6), directions=["h"],
                                   impl="pallas_tpu", tables=(good.gather, good.merge))
  with pytest.raises(ValueError, match="scan_blocks must be True"):
    config("yes")

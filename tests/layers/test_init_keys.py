"""layers.init_keys: the same keys and parameters as nnx.Rngs, without its per-key cost under a
trace (the message JAX builds when flax asks a tracer for `.sharding` walks the whole jaxpr)."""
import contextlib

import jax
import numpy as np
import pytest
from flax import nnx

import localmamba_jax.models.local_vim.model as local_vim_model
import localmamba_jax.models.local_vmamba.model as local_vmamba_model
from localmamba_jax.layers.init_keys import init_keys
from localmamba_jax.models.registry import create_model


def _key_data(key):
  return np.asarray(jax.random.key_data(key))


@pytest.mark.parametrize("streams", [dict(default=0), dict(params=3), dict(params=3, dropout=5)])
def test_keys_and_final_count_equal_the_stream(streams):
  direct, wrapped = nnx.Rngs(**streams), nnx.Rngs(**streams)
  direct.params()                                   # a stream that has been used already
  wrapped.params()
  expected = [_key_data(direct.params()) for _ in range(7)]
  with init_keys(wrapped) as keys:
    got = [_key_data(keys.params()) for _ in range(7)]
  np.testing.assert_array_equal(np.stack(got), np.stack(expected))
  assert int(wrapped.params.count[...]) == int(direct.params.count[...]) == 8
  # the next key after the block is the one the plain stream gives next
  np.testing.assert_array_equal(_key_data(wrapped.params()), _key_data(direct.params()))


def test_nested_blocks_share_one_counter_and_bad_rngs_is_named():
  rngs = nnx.Rngs(0)
  with init_keys(rngs) as outer:
    outer.params()
    with init_keys(outer) as inner:
      assert inner is outer
      inner.params()
  assert int(rngs.params.count[...]) == 2
  with pytest.raises(ValueError, match="must be an nnx.Rngs, got 0 of type int"):
    with init_keys(0):
      pass


def _passthrough(rngs):
  return contextlib.nullcontext(rngs)


@pytest.mark.parametrize("name,overrides", [
    ("local_vssm_tiny", dict(dims=[8, 16], depths=[1, 2], directions=[["h", "v"]] * 3,
                             num_classes=5)),
    ("local_vim_tiny", dict(embed_dim=16, depth=2, img_size=32, num_classes=5,
                            directions=[["h", "v_flip"]] * 2)),
])
def test_models_get_the_parameters_plain_rngs_give(monkeypatch, name, overrides):
  rngs_new = nnx.Rngs(0)
  new = nnx.state(create_model(name, rngs=rngs_new, **overrides), nnx.Param)
  with monkeypatch.context() as patch:              # the models as they were: rngs used directly
    patch.setattr(local_vmamba_model, "init_keys", _passthrough)
    patch.setattr(local_vim_model, "init_keys", _passthrough)
    rngs_old = nnx.Rngs(0)
    old = nnx.state(create_model(name, rngs=rngs_old, **overrides), nnx.Param)
  leaves_new, leaves_old = jax.tree.leaves(new), jax.tree.leaves(old)
  assert len(leaves_new) == len(leaves_old) > 10
  for a, b in zip(leaves_new, leaves_old):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(rngs_new.params.count[...]) == int(rngs_old.params.count[...]) > 10


def test_abstract_build_does_not_walk_the_jaxpr_per_key(monkeypatch):
  """Building under nnx.eval_shape: at most two tracer error messages (the final counter
  update asks both the old and the new count for `.sharding`), where drawing every key from
  the traced nnx.Rngs built two per key."""
  from jax._src.interpreters import partial_eval
  tracer_type = getattr(partial_eval, "DynamicJaxprTracer", None)
  if tracer_type is None or not hasattr(tracer_type, "_origin_msg"):
    pytest.skip("this JAX has no DynamicJaxprTracer._origin_msg to count")
  calls = []
  original = tracer_type._origin_msg

  def counting(self):
    calls.append(1)
    return original(self)

  monkeypatch.setattr(tracer_type, "_origin_msg", counting)
  overrides = dict(dims=[8, 16], depths=[1, 2], directions=[["h", "v"]] * 3, num_classes=5)
  build = lambda: create_model("local_vssm_tiny", rngs=nnx.Rngs(0), **overrides)
  with monkeypatch.context() as patch:              # the models as they were
    patch.setattr(local_vmamba_model, "init_keys", _passthrough)
    nnx.eval_shape(build)
  built_plainly = len(calls)
  if built_plainly == 0:
    pytest.skip("this JAX builds no such message when flax probes a tracer (jax >= 0.11): "
                "there is no per-key cost to avoid")
  calls.clear()
  nnx.eval_shape(build)
  assert len(calls) <= 2 < built_plainly, (len(calls), built_plainly)

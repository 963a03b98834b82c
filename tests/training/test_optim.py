"""The reference no-decay rule and the warm-up (quantised to epochs) + cosine schedule."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localmamba_jax.training.config_schema import base_config
from localmamba_jax.training.optim import decay_mask, is_decayed, lr_schedule, make_optimizer


@pytest.mark.parametrize("name, ndim, decayed", [
    ("layers/0/mixer/in_proj/kernel", 2, True),
    ("layers/0/mixer/in_proj/bias", 1, False),
    ("head/bias", 1, False),
    ("norm/scale", 1, False),                          # 1-D
    ("layers/0/mixer/A_log_0", 2, True),               # A_log is decayed (reference §6)
    ("layers/0/mixer/D_0", 1, False),
    ("layers/0/blocks/0/op/A_logs", 3, True),
    ("layers/0/blocks/0/op/Ds", 2, False),             # official Ds is [K*E]: 1-D
    ("layers/0/blocks/0/op/dt_projs_bias", 2, True),   # official name has no '.bias'
    ("layers/0/blocks/0/op/x_proj_weight", 3, True),
    ("pos_embed", 3, False),
    ("cls_token", 3, False),
    ("layers/0/mixer/branch_merge/weights", 1, True),  # official [8,1,1,1]: decayed (§5)  # search weights are decayed (§5)
    ("conv/kernel", 4, True),
])
def test_no_decay_rule(name, ndim, decayed):
  assert is_decayed(name, ndim) == decayed


def test_decay_mask_on_a_tree():
  params = {"pos_embed": jnp.zeros((1, 4, 8)), "blk": {0: {"kernel": jnp.zeros((8, 8)),
                                                          "bias": jnp.zeros(8)}}}
  mask = decay_mask(params)
  assert mask == {"pos_embed": False, "blk": {0: {"kernel": True, "bias": False}}}


def test_schedule_warmup_is_quantised_to_epochs_then_cosine():
  sched = lr_schedule(lr=1e-3, warmup_lr=1e-7, min_lr=1e-6, warmup_epochs=20,
                      steps_per_epoch=10, total_steps=300 * 10)
  values = np.array([sched(s) for s in (0, 9, 10, 19, 199, 200, 3000 - 1, 3000)])
  expected_epoch1 = 1e-7 + (1e-3 - 1e-7) / 20
  np.testing.assert_allclose(values[:4], [1e-7, 1e-7, expected_epoch1, expected_epoch1], rtol=1e-5)
  np.testing.assert_allclose(values[4], 1e-7 + (1e-3 - 1e-7) * 19 / 20, rtol=1e-5)
  np.testing.assert_allclose(values[5], 1e-3, rtol=1e-6)   # cosine starts at the peak
  np.testing.assert_allclose(values[7], 1e-6, rtol=1e-4)   # and ends at min_lr
  mid = sched(200 + 1400)
  np.testing.assert_allclose(mid, 1e-6 + 0.5 * (1e-3 - 1e-6), rtol=1e-4)


def test_adamw_decays_only_masked_params():
  c = base_config().optim
  c.lr, c.weight_decay = 0.1, 0.5
  tx = make_optimizer(c, lambda step: c.lr)
  params = {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  grads = {"w": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"], 1 - 0.1 * 0.5)   # decoupled decay lr * wd * p
  np.testing.assert_allclose(new["bias"], 1.0)


def test_grad_clipping_option():
  c = base_config().optim
  c.clip_grad_norm = 1.0
  tx = make_optimizer(c, lambda step: 1.0)
  state = tx.init({"w": jnp.zeros(3)})
  assert isinstance(state, tuple) and len(state) == 2   # clip, then adamw


def test_global_norm_of_the_logged_metrics_matches_float64():
  """train_step.global_norm (one sum per group of equal-shape, equal-dtype leaves, stacked)
  against numpy: groups of several leaves, a shape shared by two dtypes, scalars, bf16."""
  import jax
  from localmamba_jax.training.train_step import global_norm
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  tree = {"a": normal(3, 5), "a2": normal(3, 5), "a3": 100 * normal(3, 5),
          "b": [normal(7), normal(2, 2, 2).astype(jnp.bfloat16),
                normal(2, 2, 2), normal(2, 2, 2).astype(jnp.bfloat16)],
          "c": np.float32(3.0), "c2": np.float32(-4.0)}
  want = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                     for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(float(global_norm(tree)), want, rtol=1e-6)
  assert float(global_norm({})) == 0.0

"""The paper's ImageNet-1k recipe (reference §6) as a config, and big_vision's `runlocal`.

Shared by configs/localvim_*.py and configs/localvmamba_*.py; base_config() already holds
the recipe's optimizer, schedule, augmentation and loss values, so this adds only the model.
"""
from __future__ import annotations

from localmamba_jax.training.config_schema import base_config


def imagenet_config(model_name: str, *, drop_path_rate: float, model_dtype: str = "float32",
                    variant: str | None = None):
  """`variant`: None / '' (the full 300-epoch run) or a comma list with 'runlocal' (a 20-step
  run at batch 16 that checks a machine and a dataset end to end)."""
  variants = set(filter(None, (variant or "").split(",")))
  if not variants <= {"runlocal"}:
    raise ValueError(f"unknown config variant(s) {sorted(variants - {'runlocal'})}; "
                     f"allowed: 'runlocal' (e.g. configs/localvmamba_t.py:runlocal)")
  c = base_config()
  c.model_name = model_name
  c.model.drop_path_rate = drop_path_rate
  c.model.directions = ""  # "" = the registered lists; a path = a direction file (search.py)
  c.model_dtype = model_dtype
  c.num_classes = 1000
  c.eval_every_epochs = 10.0
  c.checkpoint_every_steps = 1000
  if "runlocal" in variants:
    c.total_steps = 20
    c.input.batch_size = 16
    c.input.workers = 2
    c.log_every_steps = 1
    c.eval_every_epochs = 0.0  # evaluates once, at the end
    c.checkpoint_every_steps = 10
  return c

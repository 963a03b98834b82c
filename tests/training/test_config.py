"""Config files load, validate, and bad configs fail with a clear message before anything runs."""
import importlib.util
import pathlib
import re

import ml_collections
import pytest

from localmamba_jax.training.config_schema import base_config, validate_config

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


TRAIN_CONFIGS = ["demo", "localvmamba_t", "localvmamba_s", "localvim_t", "localvim_t_midcls",
                 "localvim_s"]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_every_config_file_validates(name):
  validate_config(load(name))


@pytest.mark.parametrize("name", ["localvmamba_t", "localvmamba_s", "localvim_t",
                                  "localvim_t_midcls", "localvim_s"])
def test_paper_recipe_and_runlocal(name):
  c = load(name)
  assert (c.total_epochs, c.input.batch_size, c.optim.lr, c.optim.weight_decay) == (300, 1024, 1e-3, 0.04)
  assert (c.optim.warmup_epochs, c.optim.warmup_lr, c.optim.min_lr) == (20, 1e-7, 1e-6)
  assert (c.augment.mixup_alpha, c.augment.cutmix_alpha, c.augment.switch_prob) == (0.2, 1.0, 0.5)
  assert (c.augment.label_smoothing, c.augment.random_erase_prob) == (0.1, 0.25)
  assert c.input.randaugment == "rand-m9-mstd0.5" and c.input.image_size == 224
  small = load(name, "runlocal")
  validate_config(small)
  assert small.input.batch_size < c.input.batch_size and small.total_steps > 0


def test_unknown_key_names_the_closest_known_key():
  c = base_config()
  c.optim.weight_decya = 0.1
  with pytest.raises(ValueError, match=r"unknown config key 'optim.weight_decya'.*'optim.weight_decay'"):
    validate_config(c)


def test_wrong_types_and_values_are_all_reported():
  c = base_config()
  # ConfigDict refuses a retyped field; a config file can still replace a whole sub-dict
  c.input = ml_collections.ConfigDict({**c.input.to_dict(), "batch_size": "128"})
  c.model_dtype = "float16"
  with pytest.raises(ValueError) as info:
    validate_config(c)
  message = str(info.value)
  assert "config.input.batch_size='128' has type str; expected int" in message
  assert "model_dtype='float16' is not one of ('float32', 'bfloat16')" in message
  c = base_config()
  c.augment.mix_prob = 1.5
  c.optim.ema_decay = 1.0
  with pytest.raises(ValueError) as info:
    validate_config(c)
  assert "mix_prob=1.5 must be in [0, 1]" in str(info.value)
  assert "ema_decay=1.0 must be in [0, 1)" in str(info.value)


def test_choice_values_are_checked():
  c = base_config()
  c.sharding.strategy = "zero3"
  with pytest.raises(ValueError, match=r"sharding.strategy='zero3' is not one of \('data', 'fsdp'\)"):
    validate_config(c)


def test_batch_not_divisible_by_devices():
  c = base_config()
  c.input.batch_size = 100
  with pytest.raises(ValueError, match="batch_size=100 is not divisible by the 8 devices.*e.g. 96"):
    validate_config(c, num_devices=8)


def test_image_folder_without_folder_names_the_key():
  c = base_config()
  c.input.source = "image_folder"
  with pytest.raises(ValueError, match="needs config.input.folder"):
    validate_config(c)


@pytest.mark.parametrize("name, params", [
    ("localvmamba_t", 25_527_160), ("localvmamba_s", 49_748_536), ("localvim_t", 7_994_152),
    ("localvim_t_midcls", 7_994_536), ("localvim_s", 27_783_784)])
def test_paper_configs_build_their_registered_model(name, params):
  """Shapes only (nnx.eval_shape): the config's model_name and overrides reach the registry,
  and the parameter count is the official one (reference §4)."""
  import jax
  import numpy as np
  from flax import nnx
  from localmamba_jax.training.model_factory import build_model
  from localmamba_jax.training.optim import decay_mask
  c = load(name)
  model = nnx.eval_shape(lambda: build_model(c, c.num_classes, nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) == params
  mask = jax.tree.leaves(decay_mask(state))
  assert 0 < sum(mask) < len(mask)  # both decayed and exempt parameters exist


def test_gpu_scheduler_memory_slop_is_checked_and_reaches_the_train_step_compile(monkeypatch):
  from localmamba_jax.training import train_step
  c = base_config()
  c.gpu_scheduler_memory_slop = -5
  with pytest.raises(ValueError, match="gpu_scheduler_memory_slop=-5 must be a percentage"):
    validate_config(c)
  c.gpu_scheduler_memory_slop = 0
  assert train_step.train_step_compiler_options(c) is None      # XLA's default
  c.gpu_scheduler_memory_slop = 22
  validate_config(c)
  assert train_step.train_step_compiler_options(c) == {"xla_gpu_memory_limit_slop_factor": 22}
  seen = []
  monkeypatch.setattr(train_step, "make_train_step_parts",
                      lambda *a: (lambda *args: args, lambda *args: args))
  monkeypatch.setattr(train_step.jax, "jit", lambda fn, **kw: seen.append(kw) or fn)
  monkeypatch.setattr(train_step.shd, "batch_sharding", lambda mesh: None)
  monkeypatch.setattr(train_step.shd, "replicated", lambda mesh: None)
  for split, programs in ((False, 1), (True, 2)):   # one program, or gradient + update
    c.split_train_step = split
    seen.clear()
    train_step.jit_train_step(None, None, None, c, 10, None, {"params": None})
    assert [kw["compiler_options"] for kw in seen] == (
        [{"xla_gpu_memory_limit_slop_factor": 22}] * programs)
  # a config built without base_config() and its split_train_step key gets the default: split
  with c.unlocked():
    del c["split_train_step"]
  seen.clear()
  train_step.jit_train_step(None, None, None, c, 10, None, {"params": None})
  assert len(seen) == 2


def test_every_documented_config_flag_exists_in_a_config():
  """Each `--config.PATH` that the README, docs/ or a config file tells users to pass names a
  field some config file defines: ml_collections refuses unknown keys on the command line
  (AttributeError), so a documented flag without its field fails at startup (as
  `--config.model.scattn_kernels` did until session 19)."""
  root = CONFIG_DIR.parent
  documents = [root / "README.md", *sorted((root / "docs").glob("*.md")),
               *sorted(CONFIG_DIR.glob("*.py"))]
  documented = {(path, doc.name) for doc in documents
                for path in re.findall(r"--config\.([a-z_][a-z_0-9.]*[a-z_0-9])",
                                       doc.read_text())}
  assert len(documented) > 20, "few documented --config flags found: the pattern is stale"
  configs = [load(path.stem) for path in sorted(CONFIG_DIR.glob("*.py"))]

  def defined(path):
    for config in configs:
      node = config
      for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          break
        node = node[part]
      else:
        return True
    return False

  missing = sorted((path, doc) for path, doc in documented if not defined(path))
  assert not missing, f"documented --config flags that no config defines: {missing}"

"""search -> export -> train, end to end on the digits with a tiny 2-stage supernet.

Each run compiles its steps (~10-20 s on 2 busy CPU cores); the compilation cache of
tests/training is shared.
"""
import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from localmamba_jax.models.registry import load_directions
from localmamba_jax.search.export import abstract_model_of, load_checkpoint_params
from localmamba_jax.search.run import export_and_draw, run_search
from localmamba_jax.training.loop import train_and_evaluate

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def mixer_directions(model):
  return [tuple(m.directions) for _, m in nnx.iter_modules(model)
          if hasattr(m, "directions") and hasattr(m, "in_proj")]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("search"))
  config = load_config(CONFIGS / "search_demo.py", "tiny")
  config.search.candidates = "h,v,v_flip,w2,w7"  # 5 branches: half the compile time of 8
  config.search.top_k = 3
  results, record = run_search(config, workdir, log=lambda *_: None)
  return workdir, results, record


def test_search_logs_probabilities_and_exports(searched):
  workdir, results, record = searched
  assert results["step"] == 4
  on_disk = json.load(open(os.path.join(workdir, "directions.json")))
  assert on_disk["step"] == 4 and on_disk["top_k"] == 3 and len(on_disk["directions"]) == 1
  assert on_disk["candidates"] == ["h", "v", "v_flip", "w2", "w7"]
  # the export is the top-3 of the checkpoint's own softmax weights, in canonical order
  for row, p in zip(on_disk["directions"], on_disk["probabilities"]):
    assert set(row) == {on_disk["candidates"][i] for i in np.argsort(p)[::-1][:3]}
    assert row == [n for n in on_disk["candidates"] if n in row]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  arch = [l for l in lines if "arch/layer_00/h" in l]
  assert [l["step"] for l in arch] == [1, 2, 3, 4]  # log_every_steps=1 in the tiny config
  assert abs(sum(v for k, v in arch[-1].items() if k.startswith("arch/layer_00/")) - 1) < 1e-5
  # the architecture weights train jointly with the network (reference): probabilities move
  first, last = (np.array([l[k] for k in sorted(l) if k.startswith("arch/")]) for l in
                 (arch[0], arch[-1]))
  assert np.max(np.abs(last - first)) > 1e-6
  for png in ("directions.png", "probabilities.png", "scan_orders.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 10_000, png


def test_export_from_checkpoint_with_other_k(searched):
  workdir, _, _ = searched
  record = export_and_draw(workdir, top_k=2, step=2, plots=False, log=lambda *_: None)
  assert record["step"] == 2 and all(len(r) == 2 for r in record["directions"])
  assert json.load(open(os.path.join(workdir, "directions.json")))["top_k"] == 2
  assert load_directions(os.path.join(workdir, "directions.json")) == tuple(
      map(tuple, record["directions"]))


def test_train_py_builds_the_exported_directions(searched, tmp_path):
  workdir, _, _ = searched
  path = os.path.join(workdir, "directions.json")
  argv = ["train.py", f"--config.model.directions={path}"]  # parsed as train.py parses flags
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", f"{CONFIGS / 'demo.py'}:tiny", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  config = values.config
  config.total_steps = 2
  retrain = str(tmp_path / "retrain")
  assert train_and_evaluate(config, retrain)["step"] == 2
  _, saved_config, _ = load_checkpoint_params(retrain)
  built = mixer_directions(abstract_model_of(saved_config))
  assert built == [tuple(r) for r in json.load(open(path))["directions"]]


def test_alternating_mode_trains_architecture_on_held_out_split(tmp_path):
  config = load_config(CONFIGS / "search_demo.py", "tiny")
  config.search.mode = "alternating"
  config.search.candidates = "h,v,w2,w3"
  config.search.top_k = 2
  config.search.arch_lr = 0.05
  config.search.plots = False
  config.input.train_split = "train[:50%]"
  config.search.arch_split = "train[50%:]"
  # preempted at step 2, then resumed: the architecture optimizer state is in the checkpoint
  assert run_search(config, str(tmp_path), stop_at_step=2, log=lambda *_: None) is None
  _, record = run_search(config, str(tmp_path), log=lambda *_: None)
  assert record["step"] == 4 and record["candidates"] == ["h", "v", "w2", "w3"]
  assert all(len(r) == 2 for r in record["directions"])
  with ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state",)) as manager:
    state = manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  counts = [int(np.asarray(v)) for path, v in jax.tree_util.tree_flatten_with_path(
      state["arch_opt_state"])[0] if "count" in jax.tree_util.keystr(path)]
  assert counts and set(counts) == {4}  # one architecture step per network step, across resume
  weights = lambda step: np.asarray(load_checkpoint_params(str(tmp_path), step)[0][
      "layers"]["0"]["blocks"]["0"]["op"]["branch_merge"]["weights"])
  assert np.max(np.abs(weights(4) - weights(2))) > 1e-5
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any("train/arch_loss" in l for l in lines)

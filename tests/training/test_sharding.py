"""Single device, data parallel and FSDP give the same training, on 8 simulated CPU devices.

Runs in a subprocess: --xla_force_host_platform_device_count must be set before jax starts,
and other tests must keep seeing one device. Each run trains the tiny demo config for 4 steps
(global batch 16: 2 images per device), stopping before the final eval to save compiles.
A third run trains 2 steps with FSDP on 8 devices, then resumes on 1 device: restoring a
checkpoint onto a different mesh. Tolerance: float32 reductions are reordered across devices,
so parameters agree to rtol 1e-4 / atol 1e-6 after 4 AdamW steps, losses to rtol 1e-5.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(r"""
  import json, os, sys
  import jax, numpy as np
  import orbax.checkpoint as ocp
  sys.path.insert(0, os.environ["REPO_ROOT"])
  from tests.training.test_train_loop import restored_state, tiny_config
  from localmamba_jax.training.loop import train_and_evaluate

  assert jax.device_count() == 8, jax.devices()
  jax.config.update("jax_compilation_cache_dir", os.path.join(sys.argv[1], "cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

  def run(name, num_devices, strategy, stop_at):
    c = tiny_config()
    c.sharding.num_devices, c.sharding.strategy = num_devices, strategy
    c.sharding.fsdp_min_size = 0  # the tiny model's arrays are all small: shard every one
    workdir = os.path.join(sys.argv[1], name)
    train_and_evaluate(c, workdir, stop_at_step=stop_at)
    return workdir

  dirs = {"single": run("single", 1, "data", 4), "data8": run("data8", 8, "data", 4),
          "fsdp8": run("fsdp8", 8, "fsdp", 4)}
  run("fsdp_then_single", 8, "fsdp", 2)
  dirs["fsdp_then_single"] = run("fsdp_then_single", 1, "data", 4)
  from localmamba_jax.training import sharding as shd
  fsdp_params = restored_state(dirs["fsdp8"], 4)["params"]
  shardings = shd.state_shardings(fsdp_params, shd.make_mesh(), "fsdp", fsdp_min_size=0)
  specs = jax.tree.leaves(shardings)
  out = {"fsdp_sharded_arrays": sum(s.spec != jax.sharding.PartitionSpec() for s in specs)}
  # the logged norms stay local to each shard (a scalar all-reduce, no all-gather of the leaves)
  from localmamba_jax.training.train_step import global_norm
  lowered = jax.jit(global_norm).lower(jax.device_put(fsdp_params, shardings))
  out["norm_all_gathers"] = lowered.compile().as_text().count("all-gather")
  for name, workdir in dirs.items():
    params = restored_state(workdir, 4)["params"]
    losses = [json.loads(l)["train/loss"] for l in open(os.path.join(workdir, "metrics.jsonl"))
              if "train/loss" in l]
    out[name] = {"params": [np.asarray(x).tolist() for x in jax.tree.leaves(params)],
                 "losses": losses}
  json.dump(out, open(os.path.join(sys.argv[1], "out.json"), "w"))
""")


def test_single_device_data_parallel_and_fsdp_agree(tmp_path):
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                          "--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", REPO_ROOT=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.load(open(tmp_path / "out.json"))
  assert out.pop("fsdp_sharded_arrays") >= 10  # FSDP really splits most parameters
  assert out.pop("norm_all_gathers") == 0
  reference = out.pop("single")
  assert len(reference["losses"]) == 4
  for name, run in out.items():
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5, err_msg=name)
    assert len(run["params"]) == len(reference["params"])
    for got, want in zip(run["params"], reference["params"]):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6,
                                 err_msg=name)


def test_fsdp_rule_splits_the_largest_divisible_dim_of_large_arrays_only():
  from jax.sharding import PartitionSpec as P
  from localmamba_jax.training import sharding as shd
  mesh = shd.make_mesh(jax.devices()[:1])
  tree = {"kernel": jax.ShapeDtypeStruct((384, 768), np.float32),
          "scale": jax.ShapeDtypeStruct((768,), np.float32)}
  # one device: nothing to split
  assert all(s.spec == P() for s in jax.tree.leaves(shd.state_shardings(tree, mesh, "fsdp")))
  # the rule itself, for 4 devices: the largest dim the count divides, else the next one
  assert shd._fsdp_spec((384, 768), 4) == P(None, "data")
  assert shd._fsdp_spec((384, 770), 4, min_size=0) == P("data", None)
  assert shd._fsdp_spec((5, 7), 4, min_size=0) == P()
  # below fsdp_min_size elements (default 16,384): replicated, however divisible
  assert shd._fsdp_spec((768,), 4) == P()
  assert shd._fsdp_spec((768,), 4, min_size=0) == P("data")
  assert shd._fsdp_spec((128, 128), 4) == P("data", None)  # exactly 16,384: split

"""Two processes joined by jax.distributed train like one process with the same global batch.

Each process runs in its own subprocess with 2 simulated CPU devices (XLA_FLAGS must be set
before jax starts), joined over localhost by `jax.distributed.initialize` with gloo CPU
collectives: a 4-device mesh over 2 processes. The reference is one process with 4 simulated
devices. All runs train `configs/demo.py:tiny` (global batch 16) and stop at step 4 (checkpoints
2 and 4, no eval compile).

Same global batch: each host reads `source[p::2]`, shuffles its own shard and emits 8 rows; the
global batch is host 0's rows then host 1's. A single process reading the whole split would see
other batches by design (another shuffle, other augmentation seeds), so the reference process
is fed `build_train_input(config, shard=(0, 2))` and `(1, 2)` concatenated: the same global
batches, one host. Both shard iterators advance together, so their grain states are equal and
the reference saves one state, as a host of either topology does; that is what the restore across
process counts relies on (checkpointing.py).

Tolerance: the global batch is the same, but float32 reductions over the batch (mean loss,
gradients) are ordered differently across 2 processes x 2 devices than within one process, so
losses agree to rtol 1e-5 and parameters after 4 AdamW steps to rtol 1e-4 / atol 1e-6 (as
test_sharding.py).
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(r"""
  import json, os, sys
  import numpy as np
  sys.path.insert(0, os.environ["REPO_ROOT"])
  import jax
  args = json.loads(sys.argv[1])
  jax.config.update("jax_compilation_cache_dir", args["cache"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from localmamba_jax.training import loop, sharding
  from localmamba_jax.training.data import pipeline
  from tests.training.test_train_loop import tiny_config

  # Evidence of what this process read: every train record index it fetched from the source,
  # and the local batches it handed to the devices, in order (the first ones are steps 1, 2..).
  reads, local_batches = [], []

  class RecordingSource:
    def __init__(self, source):
      self._source = source
      self.num_classes = getattr(source, "num_classes", None)
    def __len__(self):
      return len(self._source)
    def __repr__(self):
      return repr(self._source)
    def __getitem__(self, index):
      reads.append(int(index))
      return self._source[index]

  real_build_source = pipeline.build_source
  def build_source(input_config, split):
    source = real_build_source(input_config, split)
    return RecordingSource(source) if split == input_config.train_split else source
  pipeline.build_source = build_source

  real_to_global = sharding.to_global_batch
  def to_global_batch(local, mesh):
    local_batches.append({k: np.asarray(v).copy() for k, v in local.items()})
    return real_to_global(local, mesh)
  sharding.to_global_batch = to_global_batch

  class ConcatenatedShards:
    # The reference host: shard 0's rows then shard 1's, as the two-process global batch.
    def __init__(self, datasets):
      self._iterators = [iter(d) for d in datasets]
    def __iter__(self):
      return self
    def __next__(self):
      parts = [next(it) for it in self._iterators]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    def get_state(self):
      states = [it.get_state() for it in self._iterators]
      assert all(s == states[0] for s in states), states
      return states[0]
    def set_state(self, state):
      for it in self._iterators:
        it.set_state(state)

  if args["reference_shards"]:
    real_build_train_input = pipeline.build_train_input
    def build_train_input(config):
      inputs = [real_build_train_input(config, shard=(i, args["reference_shards"]))
                for i in range(args["reference_shards"])]
      class Concatenated:
        def __iter__(self):
          return ConcatenatedShards([i.dataset for i in inputs])
      return pipeline.TrainInput(Concatenated(), inputs[0].num_records, inputs[0].num_classes,
                                 inputs[0].steps_per_epoch, inputs[0].source)
    pipeline.build_train_input = build_train_input

  config = tiny_config()
  if args["coordinator"]:
    config.sharding.distributed = True
    config.sharding.coordinator_address = args["coordinator"]
    config.sharding.num_processes = 2
    config.sharding.process_id = args["process_id"]
  for workdir in args["workdirs"]:
    reads.clear(); local_batches.clear()
    loop.train_and_evaluate(config, workdir, stop_at_step=4)
    assert jax.device_count() == 4 and jax.local_device_count() == args["local_devices"]
    tag = os.path.join(workdir, f"evidence_{jax.process_index()}")
    json.dump(sorted(set(reads)), open(tag + "_reads.json", "w"))
    np.savez(tag + "_batches.npz", **{f"{i}_{k}": v for i, b in enumerate(local_batches)
                                      for k, v in b.items()})
  print("worker done", flush=True)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, local_devices):
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                          f"--xla_force_host_platform_device_count={local_devices}",
             JAX_PLATFORMS="cpu", REPO_ROOT=str(ROOT))
  args = dict(args, local_devices=local_devices)
  return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_processes(workdir, cache):
  """Both hosts of one 2-process run (process 0 is the coordinator)."""
  coordinator = f"localhost:{_free_port()}"
  return [_start({"cache": cache, "coordinator": coordinator, "process_id": p,
                  "workdirs": [workdir], "reference_shards": 0}, local_devices=2)
          for p in (0, 1)]


def _one_process(workdirs, cache):
  return [_start({"cache": cache, "coordinator": "", "process_id": 0, "workdirs": workdirs,
                  "reference_shards": 2}, local_devices=4)]


def _finish(procs, timeout=300):
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      outputs.append((out, err))
  finally:
    for proc in procs:  # a host whose peer died waits in a collective: end it
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0 and "worker done" in out, err[-4000:]
  return outputs


def _copy_step(source_workdir, destination, step=2):
  shutil.copytree(os.path.join(source_workdir, "checkpoints", str(step)),
                  os.path.join(destination, "checkpoints", str(step)))
  return str(destination)


def _losses(workdir):
  return {l["step"]: l["train/loss"] for l in map(json.loads, open(workdir / "metrics.jsonl"))
          if "train/loss" in l}


def _params(workdir, step=4):
  """The parameters of a step, restored onto this (1-device) test process: written by 4
  devices, they need a target with this process's sharding."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          saved)
    return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path, target)["params"])]


def test_two_processes_train_like_one_and_checkpoints_restore_across(tmp_path):
  cache = str(tmp_path / "cache")
  two, one = tmp_path / "two", tmp_path / "one"
  two_then_one, one_then_two = tmp_path / "two_then_one", tmp_path / "one_then_two"
  # phase 1: the 2-process run and the 1-process reference side by side (3 processes)
  phase1 = _two_processes(str(two), cache) + _one_process([str(one)], cache)
  (out0, _), (out1, _), _ = _finish(phase1)
  # phase 2: each run's step-2 checkpoint resumed on the other topology, to step 4
  _copy_step(two, two_then_one)
  _copy_step(one, one_then_two)
  (resumed0, _), _, (resumed_one, _) = _finish(
      _two_processes(str(one_then_two), cache) + _one_process([str(two_then_one)], cache))
  for out, workdir in ((resumed0, one_then_two), (resumed_one, two_then_one)):
    assert f"resumed from {workdir}/checkpoints/2 " in out, out

  # ---- each process reads only its own shard, and together they make the global batch -----
  reads = [set(json.load(open(two / f"evidence_{p}_reads.json"))) for p in (0, 1)]
  assert all(i % 2 == 0 for i in reads[0]) and all(i % 2 == 1 for i in reads[1])
  assert min(len(r) for r in reads) >= 4 * 8  # 4 steps x 8 local rows (more were prefetched)
  local = [np.load(two / f"evidence_{p}_batches.npz") for p in (0, 1)]
  reference = np.load(one / "evidence_0_batches.npz")
  for step in range(4):
    for key in ("image", "label", "valid"):
      assert local[0][f"{step}_{key}"].shape[0] == 8
      np.testing.assert_array_equal(
          np.concatenate([local[0][f"{step}_{key}"], local[1][f"{step}_{key}"]]),
          reference[f"{step}_{key}"], err_msg=f"global batch of step {step + 1}, {key}")

  # ---- only process 0 logs ------------------------------------------------------------------
  assert "over 2 process(es)" in out0 and "step 4/4" in out0
  assert "step " not in out1 and "devices:" not in out1, out1
  assert [json.loads(l)["step"] for l in open(two / "metrics.jsonl")] == [1, 2, 3, 4]
  for step in ("2", "4"):  # every host saved its own iterator state
    files = os.listdir(two / "checkpoints" / step / "data_iter")
    assert sorted(f for f in files if f.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

  # ---- same losses and parameters as one process with the same global batch ---------------
  want_losses, want_params = _losses(one), _params(one)
  assert sorted(want_losses) == [1, 2, 3, 4]
  moved = max(np.abs(a - b).max() for a, b in zip(want_params, _params(one, step=2)))
  assert moved > 1e-4  # steps 3 and 4 changed the weights: agreeing is not trivial
  np.testing.assert_allclose([_losses(two)[s] for s in range(1, 5)],
                             [want_losses[s] for s in range(1, 5)], rtol=1e-5)
  for name in ("two", "two_then_one", "one_then_two"):
    run = tmp_path / name
    got_losses = _losses(run)
    if name != "two":  # resumed runs log steps 3 and 4 only
      assert sorted(got_losses) == [3, 4], (name, got_losses)
    np.testing.assert_allclose([got_losses[s] for s in sorted(got_losses)],
                               [want_losses[s] for s in sorted(got_losses)], rtol=1e-5,
                               err_msg=name)
    got_params = _params(run)
    assert len(got_params) == len(want_params) > 10
    for got, want in zip(got_params, want_params):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
  # the resumed runs really restored step 2 (not a fresh start): their iterators continued at
  # local batch 2 of each shard, which the global-batch equality of steps 3, 4 above shows
  resumed_local = [np.load(one_then_two / f"evidence_{p}_batches.npz") for p in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([resumed_local[0]["0_label"], resumed_local[1]["0_label"]]),
      reference["2_label"])
  np.testing.assert_array_equal(
      np.load(two_then_one / "evidence_0_batches.npz")["0_label"], reference["2_label"])

"""The benchmark command on a tiny LocalVMamba (1 block, 8x8 images), CPU: the JSON line;
and the profile summary's kernel categories.

One train run of 2 timed steps (compiles the real train step on 2 shared CPU cores).
"""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest

from localmamba_jax import benchmark

_SUMMARY = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "profile_summary.py"

# one stage, one block, four directions (two of them local 2x2 windows) on a 2x2 grid
TINY = ["--override", "dims=[8]", "--override", "depths=[1]",
        "--override", 'directions=[["h","v_flip","w2","w2_flip"]]',
        "--image-size", "8", "--num-classes", "10", "--batch", "4", "--scan-impl", "associative"]


def test_train_run_appends_a_json_line(tmp_path, capsys, monkeypatch):
  from localmamba_jax.training import gpu_xla_flags
  # as at the start of a process (XLA_FLAGS restored after the test): the pruning and
  # deterministic-ops flags added, asked for with --pruned-autotuning and --deterministic-ops
  # (off by default, as in train.py)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  monkeypatch.setattr(gpu_xla_flags, "_backend_initialized", lambda: False)
  monkeypatch.setattr(gpu_xla_flags, "_cuda_plugin_installed", lambda: True)
  results = tmp_path / "bench.jsonl"
  results.write_text('{"earlier": "line"}\n')  # appended to, not overwritten
  code = benchmark.main(["--model", "local_vssm_tiny", "--mode", "train", "--dtype", "fp32",
                         "--steps", "2", "--warmup", "1", "--results", str(results),
                         "--gpu-scheduler-memory-slop", "22", "--pruned-autotuning",
                         "--deterministic-ops", *TINY])
  assert code == 0
  lines = results.read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "line"}
  record = json.loads(lines[1])
  assert record["model"] == "local_vssm_tiny" and record["mode"] == "train"
  assert record["batch"] == 4 and record["image_size"] == 8 and record["dtype"] == "fp32"
  assert record["steps_timed"] == 2 and record["warmup"] == 1
  assert record["scan_impl_used"] == "associative"
  # a GPU-only XLA option: accepted (and ignored) by the CPU compiler, recorded
  assert record["gpu_scheduler_memory_slop"] == 22
  assert record["step_ms_min"] <= record["step_ms"] <= record["step_ms_max"]
  assert record["img_per_s"] == pytest.approx(4 / (record["step_ms"] / 1e3), rel=1e-2)
  assert record["compile_s"] > 0 and record["lower_s"] > 0 and record["setup_s"] > 0
  # the initial state's program, compiled and run once (a cold start's second compile)
  assert record["init_s"] > 0
  # traced as train.py does; the XLA flags in force recorded, the user's first
  assert record["threefry_gpu_kernel"] is True
  assert record["optimizer"] == "adamw"   # train.py's, unless --optimizer sgd (below)
  assert record["xla_flags"].split() == ["--xla_cpu_enable_fast_math=false",
                                         *gpu_xla_flags.PRUNED_AUTOTUNING_FLAGS,
                                         *gpu_xla_flags.DETERMINISTIC_OPS_FLAGS]
  # then as many steps timed as train.py's loop runs them (one step in flight)
  assert record["pipelined_steps"] == 2 and record["pipelined_step_ms"] > 0
  assert record["pipelined_img_per_s"] == pytest.approx(4 / (record["pipelined_step_ms"] / 1e3),
                                                        rel=1e-2)
  assert record["jax"] and record["device"] and record["num_devices"] >= 1
  assert record["source_hash"] == benchmark._source_hash()
  assert len(record["source_hash"]) == 12 and int(record["source_hash"], 16) >= 0
  # CPU: no cache of ours; one the user set for JAX would be named
  assert record["compilation_cache"] == jax.config.jax_compilation_cache_dir
  # the tiny model's parameter count (not the full LocalVMamba-T's 25.5M): overrides applied
  assert 0 < record["params_m"] < 0.1
  assert record["loss"] == pytest.approx(record["loss"]) and 0 < record["loss"] < 10
  # every step's loss, warm-up first, the last one being the reported loss
  assert len(record["losses"]) == 3 and record["losses"][-1] == pytest.approx(record["loss"],
                                                                              abs=1e-4)
  # XLA's memory plan of each of the split step's programs (CPU has one too): temporaries in
  # the gradient program; the state donated to (aliased in) the update program
  assert record["split_train_step"] is True   # the training config's default
  mem = record["xla_memory_bytes"]
  assert mem["gradient_temp"] > 0 and mem["gradient_argument"] > 0
  assert 0 < mem["update_alias"] <= mem["update_argument"]
  for part in ("gradient", "update"):
    assert mem[f"{part}_planned"] == (mem[f"{part}_argument"] + mem[f"{part}_output"]
                                      - mem[f"{part}_alias"] + mem[f"{part}_temp"])
  out = capsys.readouterr().out
  assert "img/s" in out and "XLA memory plan per device" in out
  assert "pipelined as train.py's loop" in out
  assert "initial state compiled and made in" in out


def test_pipelined_timing_keeps_one_step_in_flight():
  """Step i + 1 is dispatched before step i's metrics are fetched, as in training.loop."""
  events = []
  def dispatch():
    events.append(("dispatch", len([e for e in events if e[0] == "dispatch"])))
    return events[-1][1]
  def fetch(step):
    events.append(("fetch", step))
  intervals = benchmark.time_pipelined(dispatch, fetch, steps=3)
  assert len(intervals) == 3 and all(t >= 0 for t in intervals)
  assert events == [("dispatch", 0), ("dispatch", 1), ("fetch", 0), ("dispatch", 2),
                    ("fetch", 1), ("dispatch", 3), ("fetch", 2), ("fetch", 3)]
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--pipelined-steps", "-2"])


def test_barrier_waits_for_every_process(tmp_path, capsys):
  path = tmp_path / "compiled"
  path.write_text("111\n222\n")  # two processes already arrived; this one is the third
  assert benchmark.wait_at_barrier(f"{path}:3", timeout_s=5) < 1.0
  assert len(path.read_text().splitlines()) == 3
  # a fourth never comes: it warns (naming the count) and goes on after the timeout
  waited = benchmark.wait_at_barrier(f"{path}:5", timeout_s=0.3, poll_s=0.05)
  assert waited >= 0.3 and "only 4 of 5" in capsys.readouterr().err


def test_barrier_stops_waiting_for_a_process_that_exited(tmp_path, capsys):
  """A process that registered and then exited before arriving (XLA aborts at start on an
  unknown flag) is not waited for; one that is alive is, up to the timeout."""
  import subprocess
  import sys
  path = tmp_path / "compiled"
  exited = subprocess.Popen([sys.executable, "-c", "pass"])
  exited.wait()
  (tmp_path / "compiled.started").write_text(f"{exited.pid}\n")
  waited = benchmark.wait_at_barrier(f"{path}:2", timeout_s=30, poll_s=0.05)
  assert waited < 5 and f"process(es) {exited.pid} exited before arriving" in (
      capsys.readouterr().err)
  # alive and not arrived: waited for until the timeout
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    path.write_text("")
    (tmp_path / "compiled.started").write_text(f"{sleeper.pid}\n")
    waited = benchmark.wait_at_barrier(f"{path}:2", timeout_s=0.5, poll_s=0.05)
    assert waited >= 0.5 and "only 1 of 2" in capsys.readouterr().err
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_benchmark_aborted_by_xla_registers_at_the_barrier_first(tmp_path, capsys):
  """Session 22: XLA aborted two of three processes at start on a flag it no longer knew, and
  the third waited at the barrier until the call's time ran out."""
  import os
  import subprocess
  import sys
  path = tmp_path / "compiled"
  run = subprocess.run(
      [sys.executable, "-m", "localmamba_jax.benchmark", "--model", "local_vssm_tiny",
       "--barrier", f"{path}:2", *TINY],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS="--xla_no_such_flag_localmamba=1"))
  assert run.returncode != 0 and "Unknown flag" in run.stderr
  assert len((tmp_path / "compiled.started").read_text().split()) == 1  # registered, then died
  waited = benchmark.wait_at_barrier(f"{path}:2", timeout_s=60, poll_s=0.05)
  assert waited < 5 and "exited before arriving" in capsys.readouterr().err


def _try_lock(path):
  """Whether another process can take the flock on `path` right now."""
  import subprocess
  import sys
  code = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
          "try:\n  fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
          "except BlockingIOError:\n  print('held')")
  return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                        text=True, check=True).stdout.strip()


def test_device_lock_is_released_after_the_block_or_held_until_exit(tmp_path, monkeypatch):
  path = tmp_path / "lock"
  with benchmark.device_lock(str(path)) as waited:
    assert waited >= 0 and _try_lock(path) == "held"
  assert _try_lock(path) == "free"
  # until_exit: the process keeps its device memory until it exits, so the lock stays too
  monkeypatch.setattr(benchmark, "_HELD_UNTIL_EXIT", {})
  with benchmark.device_lock(str(path), until_exit=True):
    pass
  assert _try_lock(path) == "held"
  with benchmark.device_lock(str(path)) as waited:   # taken again here: no wait on itself
    assert waited == 0.0
  assert _try_lock(path) == "held"
  benchmark._HELD_UNTIL_EXIT.pop(str(path)).close()   # what the exit does
  assert _try_lock(path) == "free"


@pytest.mark.parametrize("spec", ["nocount", "/tmp/x:", "/tmp/x:zero", "/tmp/x:0", ":3"])
def test_malformed_barrier_is_reported(spec):
  with pytest.raises(ValueError, match="expected FILE:N"):
    benchmark.wait_at_barrier(spec)


def test_bad_model_name_is_reported():
  with pytest.raises(ValueError, match="local_vssm_tiny"):
    benchmark.resolve_models("local_vssm_tinny")
  with pytest.raises(ValueError, match="matches no registered model"):
    benchmark.resolve_models("nothing*")
  assert benchmark.resolve_models("all") == list(benchmark.ALL_MODELS)
  assert benchmark.resolve_models("local_vssm_t*") == ["local_vssm_tiny", "local_vssm_tiny_search"]


def test_bad_override_is_reported():
  with pytest.raises(ValueError, match="KEY=VALUE"):
    benchmark.parse_overrides(["depths"])
  assert benchmark.parse_overrides(["depths=[1,2]", "scan_impl=reference"]) == {
      "depths": (1, 2), "scan_impl": "reference"}


def test_subprocess_argv_drops_model_and_timeout():
  argv = ["--model", "all", "--timeout=30", "--batch", "8", "--timeout", "5", "--model=x"]
  assert benchmark._subprocess_argv(argv, "local_vim_tiny")[-4:] == [
      "--model", "local_vim_tiny", "--batch", "8"]


def test_profile_categories():
  spec = importlib.util.spec_from_file_location("profile_summary", _SUMMARY)
  ps = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ps)
  assert ps.categorize("selective_scan_bwd__4") == "scan"
  assert ps.categorize("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
  assert ps.categorize("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN") == "matmul"
  assert ps.categorize("conv2d_c1_k1_nhwc_specialized") == "conv"
  assert ps.categorize("loop_convert_fusion_10") == "elementwise"  # a cast, not a conv
  assert ps.categorize("loop_gather_fusion_3") == "gather/scatter"
  assert ps.categorize("input_reduce_fusion_211") == "reduce/norm"
  assert ps.categorize("fusion_3509") == "fusion (unnamed)"
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name",
             "args": {"name": "Stream #7(Compute)"}},
            {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "X", "pid": 1, "tid": 7, "ts": 0.0, "dur": 3000.0, "name": "selective_scan_fwd"},
            {"ph": "X", "pid": 1, "tid": 7, "ts": 3000.0, "dur": 1000.0, "name": "nvjet_x"},
            # the op line spans the same kernels: must not be counted again
            {"ph": "X", "pid": 1, "tid": 8, "ts": 0.0, "dur": 4000.0, "name": "fusion.1"}]
  summary = ps.summarize(events, steps=2)
  assert summary["kernel_ms_per_step"] == pytest.approx(2.0)
  assert summary["categories"]["scan"]["share"] == pytest.approx(0.75)
  assert summary["busy_fraction"] == pytest.approx(1.0)


def test_profile_traces_the_timed_mode(tmp_path):
  """--profile traces the mode that was timed (infer here; with --mode both, one subdirectory
  per mode), so the eval step can be profiled too."""
  code = benchmark.main(["--model", "local_vssm_tiny", "--mode", "infer", "--dtype", "fp32",
                         "--steps", "1", "--warmup", "0", "--results", "",
                         "--profile", str(tmp_path / "trace"), "--profile-steps", "1", *TINY])
  assert code == 0
  assert list((tmp_path / "trace").rglob("*.json.gz")), "no Perfetto trace written"


_LIVE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "hlo_live_buffers.py"
_TINY_HLO = """HloModule m

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %a = f32[256]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(f)/saved"}
  %t = (f32[1024]{0}, bf16[64]{0}) custom-call(%p), metadata={op_name="jit(f)/pair"}
  %v = f32[1024]{0} bitcast(%t#0)
  %b = f32[8]{0} fusion(%v), kind=kLoop, metadata={op_name="jit(f)/reads_first"}
  %c = f32[16]{0} fusion(%t#1, %a), kind=kLoop, metadata={op_name="jit(f)/reads_second"}
  ROOT %r = f32[4]{0} fusion(%b, %c), kind=kLoop
}
"""


def test_hlo_live_buffers_follows_tuple_elements_and_aliases():
  """The peak is at %b: `a` (1 KiB), the pair's first element (4 KiB, read through a bitcast
  by %b) and its second (128 B, read later by %c) and %b's own output are live; the first
  element dies at %b, so at %c only `a`, the second element, b and c are."""
  spec = importlib.util.spec_from_file_location("hlo_live_buffers", _LIVE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  peak, line, live = module.live_at_peak(_TINY_HLO)
  assert peak == 1024 + 4096 + 128 + 32
  assert "%b =" in line
  assert [(size, name) for size, name, _ in live] == [(4096, "t#0"), (1024, "a"), (128, "t#1"),
                                                       (32, "b")]
  assert live[0][2] == "jit(f)/pair"


_COMPILE_SUMMARY = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
                    / "compile_profile_summary.py")


def _load_compile_summary():
  spec = importlib.util.spec_from_file_location("compile_profile_summary", _COMPILE_SUMMARY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compile_summary_counts_self_time_once():
  """A pipeline spanning two passes costs only its own gap; a second thread (autotuning
  running in parallel) adds busy time but not wall time; device lines are ignored."""
  cs = _load_compile_summary()
  events = [{"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "X", "pid": 2, "tid": 1, "ts": 0.0, "dur": 9e6, "name": "kernel"},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 10e6, "name": "$stages.py compile"},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 1e6, "dur": 8e6, "name": "optimization"},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 1e6, "dur": 3e6, "name": "algsimp"},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 5e6, "dur": 4e6, "name": "gemm-fusion-autotuner"},
            {"ph": "X", "pid": 1, "tid": 2, "ts": 5e6, "dur": 2e6, "name": "ptxas"}]
  s = cs.summarize(events)
  assert s["wall_s"] == pytest.approx(10.0)
  assert s["busy_s_all_threads"] == pytest.approx(12.0)
  self_s = {r["name"]: r["self_s"] for r in s["top_self"]}
  assert self_s == {"$stages.py compile": 2.0, "optimization": 1.0, "algsimp": 3.0,
                    "gemm-fusion-autotuner": 4.0, "ptxas": 2.0}
  assert s["kinds"]["autotuning"]["s"] == pytest.approx(4.0)
  assert s["kinds"]["llvm/ptx codegen"]["s"] == pytest.approx(2.0)
  assert s["kinds"]["hlo passes / other"]["s"] == pytest.approx(4.0)
  assert s["longest_thread_outermost"] == [{"name": "$stages.py compile", "s": 10.0, "calls": 1}]


def test_profile_compile_traces_the_compile(tmp_path):
  """--compile-only --profile-compile records the compile (no step) and writes a trace of it
  that the summary can read."""
  results = tmp_path / "bench.jsonl"
  code = benchmark.main(["--model", "local_vssm_tiny", "--mode", "infer", "--dtype", "fp32",
                         "--compile-only", "--results", str(results),
                         "--profile-compile", str(tmp_path / "ctrace"), *TINY])
  assert code == 0
  (record,) = [json.loads(line) for line in results.read_text().splitlines()]
  assert record["compile_only"] and record["compile_s"] > 0 and "img_per_s" not in record
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--compile-only", "--barrier", "/tmp/b:2"])
  with pytest.raises(SystemExit):  # a traced compile is not followed by timed steps
    benchmark.parse_args(["--profile-compile", str(tmp_path / "t")])
  cs = _load_compile_summary()
  s = cs.summarize(cs.load_events(cs.find_trace(str(tmp_path / "ctrace"))))
  assert s["busy_s_all_threads"] > 0
  assert any(r["name"].startswith("$") for r in s["top_self"])  # jax's compile frames


def test_compile_lock_serialises_compiles(tmp_path, monkeypatch):
  """--compile-lock holds its flock exactly around the compile (taken there, released after),
  records the wait, and must not be the --device-lock file (held until exit)."""
  import fcntl
  lock = tmp_path / "compile.lock"
  seen = []
  original = benchmark.device_lock

  def watching_lock(path, until_exit=False):
    seen.append((path, until_exit))
    return original(path, until_exit)
  monkeypatch.setattr(benchmark, "device_lock", watching_lock)
  results = tmp_path / "bench.jsonl"
  code = benchmark.main(["--model", "local_vssm_tiny", "--mode", "infer", "--dtype", "fp32",
                         "--compile-only", "--compile-lock", str(lock), "--results",
                         str(results), "--no-threefry-gpu-kernel", *TINY])
  assert code == 0 and seen == [(str(lock), False)]
  (record,) = [json.loads(line) for line in results.read_text().splitlines()]
  assert record["compile_lock_wait_s"] >= 0
  assert record["threefry_gpu_kernel"] is False and "init_s" not in record  # compile only
  assert jax.config.jax_threefry_gpu_kernel_lowering is False  # JAX's value back
  with open(lock) as f:  # released: another process can take it at once
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--compile-lock", "/tmp/l", "--device-lock", "/tmp/l"])


def test_autotuning_is_full_unless_pruning_is_asked_for():
  """As train.py (config.gpu_pruned_autotuning=False): the pruning costs ~1.2% per step."""
  from localmamba_jax.training.config_schema import base_config
  assert benchmark.parse_args([]).pruned_autotuning is False
  assert base_config().gpu_pruned_autotuning is False
  assert benchmark.parse_args(["--pruned-autotuning"]).pruned_autotuning is True
  assert benchmark.parse_args(["--no-pruned-autotuning"]).pruned_autotuning is False


def test_init_beside_step_compiles_the_initial_state_on_a_second_thread(tmp_path, capsys,
                                                                         monkeypatch):
  """--init-beside-step: as train.py's loop on a fresh run, the initial state's program is
  compiled by one background thread while the step compiles (submitted before the step's
  compile starts), and the record says so; the state it makes trains as without the flag."""
  from concurrent.futures import ThreadPoolExecutor
  events = []
  original_submit = ThreadPoolExecutor.submit

  def submit(self, fn, *args, **kwargs):
    events.append(("submitted", self._thread_name_prefix))
    return original_submit(self, fn, *args, **kwargs)

  monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
  losses = {}
  for beside in (False, True):
    results = tmp_path / f"bench_{beside}.jsonl"
    argv = ["--model", "local_vssm_tiny", "--mode", "train", "--dtype", "fp32", "--steps", "1",
            "--warmup", "1", "--pipelined-steps", "0", "--results", str(results), *TINY]
    assert benchmark.main(argv + (["--init-beside-step"] if beside else [])) == 0
    record = json.loads(results.read_text())
    assert record["init_beside_step"] is (True if beside else None)
    losses[beside] = record["losses"]
  # the split step's update program on a thread of its own in both runs; the initial state
  # only with the flag, once, before the step's compile
  assert events == [("submitted", "compile-update-program"),
                    ("submitted", "compile-initial-state"),
                    ("submitted", "compile-update-program")]
  assert losses[True] == losses[False]
  out = capsys.readouterr().out
  assert "initial state made" in out and "(compiled beside it)" in out


def test_sgd_measures_the_optimizers_share(tmp_path):
  """--optimizer sgd: the same step with plain SGD, which keeps no state per parameter (an
  experiment on AdamW's share of the compile and the step); recorded in the JSON line."""
  from localmamba_jax.training.config_schema import base_config
  from localmamba_jax.training.optim import make_optimizer
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
  schedule = lambda step: 0.1
  optim = base_config().optim
  adamw = benchmark.benchmark_optimizer("adamw", optim, schedule)
  assert (jax.tree.structure(adamw.init(params))
          == jax.tree.structure(make_optimizer(optim, schedule).init(params)))
  sgd_state = benchmark.benchmark_optimizer("sgd", optim, schedule).init(params)
  assert not [x for x in jax.tree.leaves(sgd_state) if jnp.ndim(x) > 0]   # no mu, no nu
  with pytest.raises(ValueError, match="expected 'adamw' or 'sgd'"):
    benchmark.benchmark_optimizer("lion", optim, schedule)
  results = tmp_path / "sgd.jsonl"
  assert benchmark.main(["--model", "local_vssm_tiny", "--mode", "train", "--dtype", "fp32",
                         "--steps", "2", "--warmup", "1", "--results", str(results),
                         "--optimizer", "sgd", "--no-split-step", *TINY]) == 0
  record = json.loads(results.read_text())
  assert record["optimizer"] == "sgd" and record["compile_s"] > 0
  # --no-split-step: the train step as one program, with one memory plan
  assert record["split_train_step"] is False and record["xla_memory_bytes"]["temp"] > 0

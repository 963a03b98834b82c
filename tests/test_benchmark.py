"""The benchmark command on a tiny LocalVMamba (2 stages, 16x16 images), CPU: the JSON line.

One train run of 2 timed steps (compiles the real train step: ~15-40 s on 2 CPU cores).
"""
import json

import pytest

from localmamba_jax import benchmark

TINY = ["--override", "dims=[8,16]", "--override", "depths=[1,1]",
        "--override", 'directions=[["h","v_flip","w2","w2_flip"],["h","h_flip","v","v_flip"]]',
        "--image-size", "16", "--num-classes", "10", "--batch", "4", "--scan-impl", "associative"]


def test_train_run_appends_a_json_line(tmp_path, capsys):
  results = tmp_path / "bench.jsonl"
  results.write_text('{"earlier": "line"}\n')  # appended to, not overwritten
  code = benchmark.main(["--model", "local_vssm_tiny", "--mode", "train", "--dtype", "fp32",
                         "--steps", "2", "--warmup", "1", "--results", str(results), *TINY])
  assert code == 0
  lines = results.read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "line"}
  record = json.loads(lines[1])
  assert record["model"] == "local_vssm_tiny" and record["mode"] == "train"
  assert record["batch"] == 4 and record["image_size"] == 16 and record["dtype"] == "fp32"
  assert record["steps_timed"] == 2 and record["warmup"] == 1
  assert record["scan_impl_used"] == "associative"
  assert record["step_ms_min"] <= record["step_ms"] <= record["step_ms_max"]
  assert record["img_per_s"] == pytest.approx(4 / (record["step_ms"] / 1e3), rel=1e-2)
  assert record["compile_s"] > 0 and record["lower_s"] > 0
  assert record["jax"] and record["device"] and record["num_devices"] >= 1
  # the tiny model's parameter count (not the full LocalVMamba-T's 25.5M): overrides applied
  assert 0 < record["params_m"] < 0.1
  assert record["loss"] == pytest.approx(record["loss"]) and 0 < record["loss"] < 10
  assert "img/s" in capsys.readouterr().out


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

"""benchmarks/bench_forward_parts.py on the CPU (interpret mode): every config of the sweep
runs, really in parts where it says so, and agrees with the usual layout."""
from __future__ import annotations

import json
import os
import sys

import pytest

from localmamba_jax.ops.kernels import selective_scan_gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
bench_forward_parts = pytest.importorskip("bench_forward_parts")


def test_the_sweep_runs_each_config_and_records_it(tmp_path, monkeypatch):
  parts_seen = []
  real = selective_scan_gpu._forward_parts_call
  monkeypatch.setattr(selective_scan_gpu, "_forward_parts_call",
                      lambda cfg, *a: parts_seen.append(cfg.seq_parts) or real(cfg, *a))
  out = tmp_path / "sweep.json"
  assert bench_forward_parts.main(["--batches", "1", "--shapes", "tiny_fused,tiny",
                                   "--parts", "2", "--reps", "1", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [(r["shape"], r["config"]) for r in rows] == [
      (shape, config) for shape in ("tiny_fused", "tiny")
      for config in ("usual (tile 64, 1 part)", "auto", "tile 16, 1 part", "tile 16, 2 parts")]
  assert all(r["ms"] > 0 and r["rel_err_vs_usual"] < 1e-5 for r in rows)
  assert 2 in parts_seen   # the "2 parts" rows ran in parts

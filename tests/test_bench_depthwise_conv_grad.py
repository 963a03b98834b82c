"""benchmarks/bench_depthwise_conv_grad.py on the CPU (interpret mode, small grids): the tilings
it times are valid and start with the default, and each row it writes reports a time and the
kernel's agreement with the float32 reference."""
from __future__ import annotations

import json
import os
import sys

import pytest

from localmamba_jax.ops.kernels import depthwise_conv_gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
bench = pytest.importorskip("bench_depthwise_conv_grad")


def test_the_cases_are_valid_tilings_starting_with_the_default():
  for grid, channels in bench.STAGES:
    default = depthwise_conv_gpu.tiling(128, grid, grid, channels)
    cases = bench._kernel_cases(grid, channels, default)
    assert cases[0] == default and len(cases) == len({tuple(c.items()) for c in cases}) >= 3
    for case in cases:
      assert depthwise_conv_gpu.tiling(128, grid, grid, channels, **case) == case


def test_rows_report_times_and_the_kernel_agrees_with_float32(monkeypatch, tmp_path):
  monkeypatch.setattr(bench, "STAGES", ((6, 16),))
  results = tmp_path / "grad.jsonl"
  monkeypatch.setattr(sys, "argv", ["bench", "--batch", "1", "--iters", "1",
                                    "--results", str(results)])
  bench.main()
  rows = [json.loads(line) for line in results.read_text().splitlines()]
  assert rows[0]["case"] == "cudnn" and len(rows) >= 4
  for row in rows:
    assert "error" not in row and row["ms"] > 0 and row["floor_ms"] >= 0   # rounded: 0 here
    if row["case"].startswith("kernel"):
      dx, dk, db = row["max_rel_diff_vs_f32"]
      assert dx < 8e-3 and dk < 1e-5 and db < 1e-5     # dx rounded to bf16; sums in float32

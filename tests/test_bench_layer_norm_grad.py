"""benchmarks/bench_layer_norm_grad.py on the CPU (interpret mode): it checks both paths against
float64, writes its JSON, and rejects unknown shapes."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
bench = pytest.importorskip("bench_layer_norm_grad")


def test_checks_times_and_writes_json(tmp_path, monkeypatch):
  monkeypatch.setitem(bench.SHAPES, "tiny", (12, 24))
  out = tmp_path / "ln.json"
  bench.main(["--batch", "2", "--reps", "1", "--shapes", "tiny", "--json", str(out)])
  (row,) = json.loads(out.read_text())["rows"]
  assert (row["b"], row["L"], row["C"]) == (2, 12, 24)
  for path in ("xla", "kernel"):
    assert row[f"{path}_fwd_bwd_ms"] > 0
    assert max(row[f"{path}_{p}_err"] for p in ("dx", "dscale", "dbias")) < 1e-5


def test_unknown_shapes_are_refused():
  with pytest.raises(SystemExit):
    bench.main(["--shapes", "stage9"])

"""benchmarks/bench_row_norm.py on the CPU (interpret mode): the block-size variants it times
are parsed strictly, applied while timing, and the kernel module's defaults restored after."""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import pytest

from localmamba_jax.ops.kernels import row_norm_gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
bench_row_norm = pytest.importorskip("bench_row_norm")


def test_variants_are_parsed_strictly():
  assert bench_row_norm.parse_variants("max_rows=8,NUM_WARPS=8; MAX_BLOCK_ELEMENTS=8192") == [
      {"MAX_ROWS": 8, "NUM_WARPS": 8}, {"MAX_BLOCK_ELEMENTS": 8192}]
  assert bench_row_norm.parse_variants("") == []
  for bad in ("ROWS=3", "MAX_ROWS=0", "NUM_WARPS=four"):
    with pytest.raises(SystemExit, match="NAME=POSITIVE_INT"):
      bench_row_norm.parse_variants(bad)


def test_a_variant_is_applied_while_timing_and_the_defaults_come_back(monkeypatch):
  monkeypatch.setattr(bench_row_norm, "SHAPES", {"tiny": (16, 2, 48)})
  seen = []
  real = row_norm_gpu._rows_per_block
  monkeypatch.setattr(row_norm_gpu, "_rows_per_block",
                      lambda length, features: seen.append(row_norm_gpu.MAX_ROWS)
                      or real(length, features))
  defaults = (row_norm_gpu.MAX_ROWS, row_norm_gpu.NUM_WARPS)
  rows = bench_row_norm.bench_variants(2, 1, [jnp.float32], [{"MAX_ROWS": 2, "NUM_WARPS": 2}])
  assert [r["variant"] for r in rows] == [{"MAX_ROWS": 2, "NUM_WARPS": 2}]
  assert rows[0]["kernels_fwd_ms"] > 0 and rows[0]["kernels_fwd_bwd_ms"] > 0
  assert seen and set(seen) == {2}
  assert (row_norm_gpu.MAX_ROWS, row_norm_gpu.NUM_WARPS) == defaults

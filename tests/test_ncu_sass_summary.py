"""benchmarks/ncu_sass_summary.py on a small CSV in the layout of ncu's SASS source page."""
from __future__ import annotations

import gzip
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import ncu_sass_summary  # noqa: E402

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)",'
          '"Warp Stall Sampling (Not-issued Samples)","Instructions Executed","stall_long_sb",'
          '"stall_wait","stall_long_sb (Not Issued)"')


def write_csv(path):
  lines = ['"Kernel Name","fwd",', HEADER,
           '"0x0","      LDG.E.U16 R1, desc[UR4][R2.64]","3","3","100","1","2","1"',
           '"0x10","      SHF.L.U32 R1, R1, 0x10, RZ","7","7","100","7","0","7"',
           '"Kernel Name","bwd",', HEADER,
           '"0x0","@P0   FFMA R1, R2, R3, R4","4","4","300","0","4","0"',
           '"0x10","      FFMA R5, R2, R3, R4","0","0","300","0","0","0"',
           '"0x20","      MUFU.EX2 R6, R1","4","4","200","4","0","4"']
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines) + "\n")


def test_counts_per_kernel_reason_and_opcode(tmp_path, capsys):
  path = str(tmp_path / "sass.csv.gz")
  write_csv(path)
  kernels = ncu_sass_summary.read_kernels(path)
  assert [name for name, _ in kernels] == ["fwd", "bwd"]
  bwd = ncu_sass_summary.summarise(kernels[1][1])
  assert bwd["executed"] == 800 and bwd["samples"] == 8 and bwd["static"] == 3
  assert bwd["ops"] == {"FFMA": 600, "MUFU": 200}            # predicate guard skipped
  assert bwd["stalls"]["long_sb"] == 4 and bwd["stalls"]["wait"] == 4
  assert "long_sb (Not Issued)" not in {k for k in bwd["stalls"]}
  assert ncu_sass_summary.main([path, "--per-step", "10", "--per-step", "100"]) == 0
  out = capsys.readouterr().out
  assert "== fwd: 200 warp instructions executed" in out and "20 per warp-step" in out
  assert "== bwd: 800 warp instructions executed" in out and "8 per warp-step" in out
  assert re.search(r"stall long_sb +80\.0%", out) and re.search(r"stall long_sb +50\.0%", out)

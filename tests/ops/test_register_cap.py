"""ops/kernels/register_cap.py: the cap travels in the kernel's name, and bad caps are refused.
That the lowered Triton IR carries it is tested in tests/test_kernel_registers.py (a lowering for
CUDA on the CPU), and that the PTX does, on the GPU, by benchmarks/register_cap_check.py."""
from __future__ import annotations

import numpy as np
import pytest

from localmamba_jax.ops.kernels import register_cap


def test_name_carries_the_cap_and_round_trips():
  assert register_cap.kernel_name("selective_scan_bwd", None) == "selective_scan_bwd"
  assert register_cap.cap_of("selective_scan_bwd") is None
  name = register_cap.kernel_name("selective_scan_bwd", 168)
  assert name == "selective_scan_bwd_maxnreg168"
  assert register_cap.cap_of(name) == 168
  # 0 and None both mean no cap; numpy ints are taken
  assert register_cap.kernel_name("k", 0) == "k"
  assert register_cap.checked_cap(np.int64(160)) == 160


@pytest.mark.parametrize("bad", [23, 256, -1, True, 128.0, "128"])
def test_bad_caps_are_refused_with_the_expected_range(bad):
  with pytest.raises(ValueError, match=r"max_registers=.*expected an int in \[24, 255\]"):
    register_cap.kernel_name("k", bad)

"""benchmarks/kernel_registers.py: the Triton IR of both scan kernels is extracted from a
lowering for CUDA on this CPU machine (the part that needs neither triton nor ptxas)."""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
kernel_registers = pytest.importorskip("kernel_registers")


@pytest.mark.parametrize("shape,options,bwd_name", [
    # the plain order's row-kernel backward (lanes off) runs uncapped
    ("tiny", {"keep_dl": 0, "lanes": 0}, "selective_scan_bwd"),
    # the fused path's lanes backward is capped at 168 registers by default (register_cap),
    # as every lanes backward is
    ("tiny_fused", {}, "selective_scan_bwd_maxnreg168")])
def test_both_kernels_lower_to_triton_ir_without_a_gpu(shape, options, bwd_name):
  kernels = kernel_registers.triton_kernels(shape, 2, jnp.dtype("float32"), options)
  assert [name for name, _, _ in kernels] == ["selective_scan_fwd", bwd_name]
  for name, num_warps, text in kernels:
    assert num_warps >= 1
    signature = next(line for line in text.splitlines() if f"tt.func public @{name}" in line)
    # the forward's arguments: u, delta, A, B, C, D, delta_bias (+ the scan-order table for
    # the fused path, + z for `tiny`) and its three outputs; the backward has more
    assert signature.count("!tt.ptr") >= 10


def test_options_are_checked():
  assert kernel_registers.parse_options("keep_dl=0,chunk=4") == {"keep_dl": 0, "chunk": 4}
  with pytest.raises(SystemExit, match="NAME=INT"):
    kernel_registers.parse_options("keep_dl=yes")


def test_register_cap_reaches_the_triton_ir_of_the_capped_kernel_only():
  """The cap is an `nvvm.maxnreg` attribute on the kernel function (ops/kernels/register_cap.py);
  Triton turns it into PTX's .maxnreg (checked on the H100 by benchmarks/register_cap_check.py).
  The uncapped kernel must not get it."""
  kernels = dict((name, text) for name, _, text in kernel_registers.triton_kernels(
      "tiny", 2, jnp.dtype("float32"), {"bwd_max_registers": 144}))
  assert sorted(kernels) == ["selective_scan_bwd_maxnreg144", "selective_scan_fwd"]
  header = lambda text: next(line for line in text.splitlines() if "tt.func public" in line)
  assert "nvvm.maxnreg = 144 : i32" in header(kernels["selective_scan_bwd_maxnreg144"])
  assert "maxnreg" not in kernels["selective_scan_fwd"]


def test_sass_mix_counts_opcodes_and_skips_predicates_and_other_lines():
  listing = "\n".join([
      "        code for sm_90a",
      "        Function : selective_scan_bwd",
      "        /*0000*/                   LDC R1, c[0x0][0x28] ;   /* 0x00000a00ff017b82 */",
      "        /*0010*/                   FFMA R2, R3, R4, R5 ;",
      "        /*0020*/              @!P0 FFMA.FTZ R2, R3, R4, R5 ;",
      "        /*0030*/               @P1 SHFL.BFLY PT, R6, R7, 0x10, 0x1f ;",
      "        /*0040*/                   EXIT ;",
      "        .L_x_0:"])
  assert kernel_registers.sass_mix(listing) == {"LDC": 1, "FFMA": 2, "SHFL": 1, "EXIT": 1}

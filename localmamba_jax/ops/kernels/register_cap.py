"""A per-kernel register cap for Pallas Triton kernels (PTX's `.maxnreg`).

Why: the scan backward runs one warp per program, and ptxas gives it 239-255 registers, because
the kernel's PTX says `.reqntid 32` (one warp per block) and nothing else. Then only 8 warps fit
on an H100 SM (65536 registers), and each step's latency is exposed (BENCHMARKS.md, "Where the
scan backward stands"). A cap trades a few spills for more resident warps: offline (triton 3.9,
ptxas 13.0, stage-1 fused backward, bf16) 168 registers cost 56 bytes of spills and let 12 warps
fit; 128 cost 432 bytes and let 16 fit.

Neither obvious switch works. Pallas's Triton `CompilerParams` (jax 0.10-0.11) has only
`num_warps` and `num_stages`. XLA's `--xla_gpu_asm_extra_flags=-maxrregcount=N` is ignored for
these kernels, as ptxas ignores -maxrregcount for a function that carries `.reqntid` (checked
offline). What does work is an `nvvm.maxnreg` attribute on the kernel function in the Triton IR:
Triton carries it to the LLVM function and from there to PTX's `.maxnreg`. Checked with the pip
triton 3.9 offline, and on an H100 with jax 0.11.2, which compiles Pallas kernels with jaxlib's
Triton (benchmarks/register_cap_check.py: the PTX carries the cap, results are bit-identical).
jax 0.10 hands the Triton IR to XLA's Triton instead; that path carries the attribute in the IR
(tests/test_kernel_registers.py) but was not run on a GPU.

How: the kernel's name carries the cap (`<name>_maxnreg<N>`, `kernel_name`), so the cap is part
of the `pallas_call`'s parameters (jit traces and compiles each cap apart, and profiles name
it), and a wrapper around Pallas's Triton lowering puts the attribute on the function it lowers.
The wrapper replaces a private jax function (`jax._src.pallas.triton.lowering.
lower_jaxpr_to_triton_module`, present in jax 0.10 and 0.11); where that is missing, asking for a
cap raises an error that says so, and the uncapped kernels are unaffected. The wrapper is
installed on the first capped kernel only, and it changes nothing for kernels whose name has no
cap.
"""
from __future__ import annotations

import functools
import re

import jax
import numpy as np

# ptxas's own bounds for .maxnreg on sm_80/sm_90: fewer than 24 registers cannot hold the
# kernels' address arithmetic, and 255 is the per-thread maximum.
MIN_REGISTERS = 24
MAX_REGISTERS = 255
_SUFFIX = re.compile(r"_maxnreg(\d+)$")
_installed = False


def checked_cap(value, option: str = "max_registers") -> int | None:
  """A register cap as an int (numpy ints too), None for none (None or 0), or a ValueError
  naming `option`, the range and how to ask for no cap."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
    value = int(value)
    if value == 0:
      return None
    if MIN_REGISTERS <= value <= MAX_REGISTERS:
      return value
  elif value is None:
    return None
  raise ValueError(f"{option}={value!r}: expected an int in [{MIN_REGISTERS}, {MAX_REGISTERS}] "
                   f"(registers per thread), or 0 / None for no cap.")


def kernel_name(name: str, max_registers) -> str:
  """`name`, with the register cap appended when there is one (installs the lowering hook)."""
  max_registers = checked_cap(max_registers)
  if max_registers is None:
    return name
  install()
  return f"{name}_maxnreg{max_registers}"


def cap_of(name: str) -> int | None:
  """The register cap a kernel name carries (None: none)."""
  match = _SUFFIX.search(name or "")
  return int(match.group(1)) if match else None


def set_max_registers(module, max_registers: int) -> int:
  """Put `nvvm.maxnreg = max_registers` on every `tt.func` of a Triton MLIR module; the count."""
  from jax._src.lib.mlir import ir
  attribute = ir.IntegerAttr.get(ir.IntegerType.get_signless(32, context=module.context),
                                 max_registers)
  count = 0
  for op in module.body.operations:
    if op.operation.name == "tt.func":
      op.operation.attributes["nvvm.maxnreg"] = attribute
      count += 1
  return count


def install() -> None:
  """Wrap Pallas's Triton lowering so that capped kernel names get the attribute (idempotent)."""
  global _installed
  if _installed:
    return
  try:
    from jax._src.pallas.triton import lowering
    original = lowering.lower_jaxpr_to_triton_module
  except (ImportError, AttributeError) as e:
    raise ValueError(
        f"max_registers needs jax's private Pallas Triton lowering "
        f"(jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module), which jax "
        f"{jax.__version__} does not have; pass max_registers=None (no cap).") from e

  @functools.wraps(original)
  def lower_with_register_cap(jaxpr, *args, **kwargs):
    result = original(jaxpr, *args, **kwargs)
    debug_info = getattr(jaxpr, "debug_info", None)
    cap = cap_of(getattr(debug_info, "func_name", "") or "")
    if cap is not None and not set_max_registers(result.module, cap):
      raise RuntimeError(f"register cap {cap}: no tt.func in the lowered Triton module of "
                         f"{debug_info.func_name}; this jax's Pallas lowering changed.")
    return result

  lowering.lower_jaxpr_to_triton_module = lower_with_register_cap
  _installed = True

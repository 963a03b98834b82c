"""Registers and spills of the Pallas GPU scan kernels, without a GPU (a few seconds per variant).

    PYTHONPATH=. python benchmarks/kernel_registers.py --shape stage1_fused \
        --options keep_dl=0 --options keep_dl=1 [--triton-python /path/to/venv/bin/python]

Each `--options` set (kernel options as NAME=INT, comma-separated; none = the defaults) is
lowered for CUDA on this machine (`lowering_platforms=("cuda",)`: no GPU needed), the Triton
IR of its forward and backward kernels is taken from the lowered module, compiled to PTX for
sm_90a by the `triton` Python package (in `--triton-python`, e.g. a separate venv with
`pip install triton`), and assembled by `ptxas -v` (`--ptxas`, e.g. a CUDA toolkit's), which
reports registers and spill bytes per thread.

Why: register pressure decides most kernel-option experiments (BENCHMARKS.md, issue 7), and
a device call costs minutes. Caveats: the GPU runs the kernels through XLA's own copy of
Triton, which allocates registers differently from the pip package: the one-channel-per-lane
forward (commit ed4d344) came out at 167 registers here (triton 3.9.0, ptxas 13.0) against
128 under ncu on the H100. Read the numbers as a hint to check on the device, not as a
measurement. Spill bytes are static counts, not the dynamic spill traffic ncu measures (the
plain-order backward with keep_dl spills 236 bytes here and was measured faster than without). When ptxas is
older than the PTX that Triton emits, the PTX's `.version` line is lowered to the newest one
ptxas accepts.

`--sass-mix TOP` (with `--cuobjdump`, e.g. the one in the triton package's
backends/nvidia/bin) also assembles a cubin and adds the kernel's static SASS: its
instruction count and its TOP most frequent opcodes. Static, not executed: a change to the
backward's per-step code shows up once per loop body (session 17: the lanes backward runs
~600 instructions per warp-step and is issue-bound, so its instruction count is what a
variant has to cut; ncu measures the executed count on the GPU).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_selective_scan import (FLAG_OPTIONS, INPUT_NAMES, SHAPES, fwd_bwd_fn,  # noqa: E402
                                  scan_fn, shape_inputs)

_COMPILE_TO_PTX = r"""
import sys, triton
from triton.backends.compiler import GPUTarget
path, num_warps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=num_warps, num_stages=1))
open(out, "w").write(kernel.asm["ptx"])
"""


def parse_options(text):
  options = {}
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    if not value.lstrip("-").isdigit():
      raise SystemExit(f"kernel option {item!r}: expected NAME=INT")
    options[name] = int(value)
  return options


def triton_calls(lowered):
  """[(kernel name, backend_config DictAttr)] of the Triton custom calls in a lowered jit."""
  from jax._src.lib.mlir import ir
  found = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          if (inner.name == "stablehlo.custom_call"
              and "triton" in str(inner.attributes["call_target_name"])):
            key = ("mhlo.backend_config" if "mhlo.backend_config" in inner.attributes
                   else "backend_config")
            config = ir.DictAttr(inner.attributes[key])
            name = str(config["name"]).strip('"') if "name" in config else "kernel"
            found.append((name, config))
          walk(inner)
  walk(lowered.compiler_ir("stablehlo").operation)
  return found


def triton_ir_text(config):
  """The Triton IR (text) that jax <= 0.10.2 passes to XLA in a custom call's "ir" field."""
  from jax._src.lib import triton as jax_triton
  from jax._src.lib.mlir import ir
  with ir.Context() as ctx:
    jax_triton.dialect.register_dialect(ctx)
    return str(ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes))


def triton_kernels(shape_name, batch, dtype, options):
  """[(name, num_warps, TTIR text)] of the kernels in grad(sum(scan * w)) lowered for CUDA."""
  from jax._src.lib.mlir import ir
  # the benchmark's own inputs, of which only shapes and dtypes are used (nothing runs)
  inputs, fused = shape_inputs(SHAPES[shape_name], batch, dtype, np.random.default_rng(0))
  options = {k: bool(v) if k in FLAG_OPTIONS else v for k, v in options.items()}
  fn = scan_fn("pallas_gpu", fused, interpret=False, **options)
  args = [None if inputs[k] is None else jax.ShapeDtypeStruct(inputs[k].shape, inputs[k].dtype)
          for k in INPUT_NAMES]
  weight = jax.ShapeDtypeStruct(args[1].shape, dtype)
  lowered = jax.jit(fwd_bwd_fn(fn)).trace(*args, weight).lower(lowering_platforms=("cuda",))
  return [(name, ir.IntegerAttr(config["num_warps"]).value, triton_ir_text(config))
          for name, config in triton_calls(lowered)]


def assemble(ptx_path, ptxas, cubin=os.devnull):
  """(registers, spill store bytes, spill load bytes) from `ptxas -v`; the cubin goes to
  `cubin` (discarded by default)."""
  for _ in range(2):
    result = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", "-o", cubin, ptx_path],
                            capture_output=True, text=True)
    too_new = re.search(r"Unsupported \.version [\d.]+; current version is '([\d.]+)'",
                        result.stderr)
    if not too_new:
      break
    text = open(ptx_path).read()
    open(ptx_path, "w").write(re.sub(r"^\.version [\d.]+", f".version {too_new.group(1)}", text,
                                     count=1, flags=re.M))
  if result.returncode:
    raise RuntimeError(f"ptxas failed: {result.stderr[-800:]}")
  number = lambda pattern: int(re.search(pattern, result.stderr).group(1))
  return (number(r"Used (\d+) registers"), number(r"(\d+) bytes spill stores"),
          number(r"(\d+) bytes spill loads"))


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def sass_mix(text):
  """Counter of opcodes (the mnemonic before the first '.') over the SASS lines of a
  `cuobjdump -sass` listing; a predicate guard (@P0, @!PT) is skipped."""
  counts = collections.Counter()
  for line in text.splitlines():
    match = _SASS_LINE.search(line)
    if match:
      counts[match.group(1).split(".")[0]] += 1
  return counts


def static_sass(cubin, cuobjdump):
  """Opcode Counter of the kernel in a cubin (`assemble`'s), disassembled."""
  listing = subprocess.run([cuobjdump, "-sass", cubin], check=True, capture_output=True,
                           text=True).stdout
  return sass_mix(listing)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="stage1", choices=tuple(SHAPES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--options", action="append", default=None,
                      help="kernel options NAME=INT,...; repeat for several variants")
  parser.add_argument("--triton-python", default=sys.executable,
                      help="a Python interpreter that can `import triton`")
  parser.add_argument("--ptxas", default="ptxas")
  parser.add_argument("--keep", default=None, help="directory to keep the TTIR and PTX files in")
  parser.add_argument("--sass-mix", type=int, default=0, metavar="TOP",
                      help="also report the static SASS: instruction count and TOP opcodes")
  parser.add_argument("--cuobjdump", default="cuobjdump")
  args = parser.parse_args(argv)
  workdir = args.keep or tempfile.mkdtemp(prefix="kernel_registers_")
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for variant in args.options or [""]:
    options = parse_options(variant)
    for i, (name, num_warps, text) in enumerate(
        triton_kernels(args.shape, args.batch, jnp.dtype(args.dtype), options)):
      stem = os.path.join(workdir, f"{args.shape}_{variant.replace('=', '').replace(',', '_')}"
                                   f"_{i}_{name}")
      with open(stem + ".ttir", "w") as f:
        f.write(text)
      compiled = subprocess.run(
          [args.triton_python, "-c", _COMPILE_TO_PTX, stem + ".ttir", str(num_warps),
           stem + ".ptx"], capture_output=True, text=True,
          env=dict(os.environ, TRITON_DEFAULT_FP_FUSION="1"))
      if compiled.returncode:
        raise RuntimeError(f"triton could not compile {name}: {compiled.stderr[-800:]}")
      registers, spill_stores, spill_loads = assemble(
          stem + ".ptx", args.ptxas, stem + ".cubin" if args.sass_mix else os.devnull)
      row = dict(shape=args.shape, dtype=args.dtype, options=variant or "defaults", kernel=name,
                 num_warps=num_warps, registers=registers, spill_store_bytes=spill_stores,
                 spill_load_bytes=spill_loads)
      if args.sass_mix:
        mix = static_sass(stem + ".cubin", args.cuobjdump)
        row.update(static_instructions=sum(mix.values()),
                   top_opcodes=dict(mix.most_common(args.sass_mix)))
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


if __name__ == "__main__":
  main()

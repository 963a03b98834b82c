"""Prints a model's parameter count and FLOPs (1 multiply-add = 1 FLOP, batch 1).

    python -m localmamba_jax.models.info --model local_vssm_tiny --resolution 224
    python -m localmamba_jax.models.info --model all
    python -m localmamba_jax.models.info --model 'local_vim*' --resolution 384

Columns: `FLOPs` is the paper's convention for the model's family (the number the
official code prints and the README reports; see models/flops.py), `traced` is the count
of this JAX program under LocalVMamba's (fvcore) rules, split into matmul, conv, norm and
scan. For LocalVMamba both are the same; for LocalVim the official formula counts x_proj,
dt_proj and conv1d once per layer instead of once per direction. Nothing is allocated:
the models are built with jax.eval_shape and traced on abstract inputs.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from localmamba_jax.models import flops as flops_lib
from localmamba_jax.models import registry


def _giga(value: int) -> str:
  return f"{value / 1e9:.3f}G"


def format_table(infos: Sequence[flops_lib.ModelInfo]) -> str:
  header = ("model", "resolution", "params", "FLOPs", "convention", "traced", "matmul", "conv",
            "norm", "scan")
  rows = [header]
  for info in infos:
    t = info.traced
    rows.append((info.name, "x".join(map(str, info.resolution)), f"{info.params / 1e6:.3f}M",
                 _giga(info.paper_flops), info.convention, _giga(t.total), _giga(t.matmul),
                 _giga(t.conv), _giga(t.norm), _giga(t.scan)))
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _parse_resolution(text: str):
  try:
    values = [int(v) for v in text.lower().replace(",", "x").split("x")]
  except ValueError:
    values = []
  if len(values) not in (1, 2) or min(values) < 1:
    raise argparse.ArgumentTypeError(f"--resolution must be a positive integer or HxW such as "
                                     f"224 or 224x320, got {text!r}.")
  return values[0] if len(values) == 1 else tuple(values)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m localmamba_jax.models.info",
      description="Parameter count and FLOPs (1 multiply-add = 1 FLOP, batch 1) of registered "
                  "models, in the paper's convention.")
  parser.add_argument("--model", default="all",
                      help="a registered name, a glob pattern (e.g. 'local_vssm*') or 'all'")
  parser.add_argument("--resolution", type=_parse_resolution, default=224,
                      help="input size: 224 or HxW (default 224)")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="override the head size (default: the registered 1000)")
  args = parser.parse_args(argv)
  names = registry.list_models("*" if args.model == "all" else args.model)
  overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
  infos = []
  try:
    if not names:
      registry.model_spec(args.model)        # raises with close matches and the valid names
    for name in names:
      infos.append(flops_lib.model_info(name, args.resolution, **overrides))
      if len(names) > 1:
        print(f"counted {name}", file=sys.stderr, flush=True)
  except ValueError as e:
    parser.error(str(e))
  print(format_table(infos))
  return 0


if __name__ == "__main__":
  sys.exit(main())

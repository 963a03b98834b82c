r"""Convert an official LocalMamba checkpoint to an Orbax checkpoint.

  python -m localmamba_jax.convert --checkpoint local_vim_tiny.ckpt --output ckpt/local_vim_tiny
  python -m localmamba_jax.convert --model local_vssm_small --checkpoint local_vssm_small.ckpt \
      --output ckpt/local_vssm_small
  python -m localmamba_jax.convert --checkpoint sd.npz --output out --directions dirs.json

--model is inferred from the keys when left out. .ckpt/.pth files need PyTorch
(pip install 'localmamba-jax[torch]'); .npz and .safetensors need nothing extra.
The output is read by load_pretrained(DIR), eval.py --checkpoint DIR and
train.py --config.init=DIR.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m localmamba_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True,
                      help="official checkpoint: .ckpt/.pth (needs torch), .npz or .safetensors")
  parser.add_argument("--output", required=True, help="directory for the Orbax checkpoint")
  parser.add_argument("--model", default=None,
                      help="registry name (see localmamba_jax.models.list_models()); default: "
                           "inferred from the keys")
  parser.add_argument("--directions", default=None,
                      help="direction JSON file (one list per layer/block), for models whose "
                           "directions differ from the registered ones")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
  args = parser.parse_args(argv)

  from localmamba_jax.convert import convert_file
  overrides = {"directions": args.directions} if args.directions else {}
  if args.directions:
    from localmamba_jax.models.registry import load_directions
    overrides["directions"] = load_directions(args.directions)
  try:
    model, resolved = convert_file(args.checkpoint, args.output, model=args.model,
                                   overwrite=args.overwrite, **overrides)
  except (ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import jax
  from flax import nnx
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  shown = {k: v for k, v in resolved.overrides.items() if k != "directions"}
  print(f"model: {resolved.name}" + (f" with {shown}" if shown else "")
        + (" (directions from --directions)" if args.directions else ""))
  print(f"parameters: {count:,}")
  for note in resolved.notes:
    print(f"note: {note}")
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

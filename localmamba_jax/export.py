r"""Serialized inference: a checkpoint -> one StableHLO file that runs without this package.

  python -m localmamba_jax.export --checkpoint ckpt/local_vssm_tiny --model local_vssm_tiny \
      --output local_vssm_tiny.jaxexport
  python -m localmamba_jax.export --checkpoint workdir/demo --output demo.jaxexport
  python -m localmamba_jax.export --checkpoint ckpt/local_vim_tiny --output lvim_t.jaxexport \
      --platforms cpu,cuda,tpu --uint8-input

--checkpoint is anything `convert.load_pretrained` reads: a converted official checkpoint
(`python -m localmamba_jax.convert`) or a train.py workdir (its latest checkpoint's params;
`--ema` for the EMA weights). The file is `jax.export` output (`Exported.serialize()`: the
StableHLO module with the weights inside as constants) for a symbolic batch dimension, so
one file serves every batch size. Loading needs only jax (no flax, no localmamba_jax):

  import jax, numpy as np
  exported = jax.export.deserialize(bytearray(open("lvm_t.jaxexport", "rb").read()))
  logits = exported.call(images)   # images: float32 [batch, R, R, 3], see below

Input: NHWC, [batch, R, R, 3] with R = --resolution, as the evaluation preprocessing leaves
it (shorter side resized to R / crop_pct bicubic, center crop R; crop_pct 0.875 for ImageNet
models). By default the function takes float32 pixels already normalised,
(x / 255 - mean) / std; with --uint8-input it takes the uint8 crop and normalises inside.
mean/std are the training run's (`config.input.mean/std`) for a workdir, ImageNet's for a
converted checkpoint, or --mean/--std. Output: float32 logits [batch, num_classes].
FILE.json, written next to FILE, records all of this (and the class count, platforms, jax
version) for the consumer.

The selective scan is exported on its XLA path ("reference" or "associative"), which lowers
for every platform; the Pallas kernels are chosen per backend at trace time, so they are not
what a multi-platform file should carry. LocalVMamba's depthwise conv ("auto" in its config)
is fixed for the file's platforms: fused multiply-adds in a CPU-only file, XLA's conv (cuDNN
on a GPU) otherwise (FILE.json's "depthwise_conv_impl").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "localmamba_jax.exported"
FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SCAN_IMPLS = ("reference", "associative")      # the XLA paths: portable across platforms
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_PCT = 0.875                       # resize 256 + center crop 224 (reference §6)


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  if isinstance(platforms, str):
    platforms = [p for p in platforms.split(",") if p]
  platforms = tuple(p.strip().lower() for p in platforms)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown or len(set(platforms)) != len(platforms):
    raise ValueError(f"platforms={list(platforms)!r}: give one or more distinct names of "
                     f"{list(PLATFORMS)}, e.g. --platforms cpu,cuda.")
  return platforms


def _check_stats(name: str, values) -> tuple[float, float, float]:
  values = tuple(float(v) for v in values)
  if len(values) != 3 or (name == "std" and min(values) <= 0):
    raise ValueError(f"{name}={list(values)!r}: give 3 per-channel values (R, G, B)"
                     + (", all positive" if name == "std" else "") + ".")
  return values


def export_model(model, *, resolution: int, platforms: Sequence[str] = ("cpu",),
                 uint8_input: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """`jax.export.Exported` of `model`'s eval-mode forward for images [b, R, R, 3], b symbolic.

  The parameters become constants of the module. With `uint8_input` the function takes uint8
  pixels and applies (x / 255 - mean) / std itself (the training step's normalisation);
  otherwise it takes float32 pixels already normalised and `mean`/`std` are unused.

  The model is traced as on a CPU (ops.kernels.common.traced_for), whatever the host: its
  "auto" ops take their XLA paths, which lower for every platform. On a GPU host "auto" would
  pick the Pallas kernels, which cannot be exported with a symbolic batch (jax.export refused
  them, session 25). A model built with a kernel scan_impl is refused with that advice.
  """
  from flax import nnx

  from localmamba_jax.ops.kernels.common import traced_for
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
      or resolution < 1:
    raise ValueError(f"resolution={resolution!r}: give the square input size in pixels, "
                     f"e.g. 224.")
  platforms = _check_platforms(platforms)
  mean, std = _check_stats("mean", mean), _check_stats("std", std)
  scan_impl = getattr(getattr(model, "config", None), "scan_impl", "auto")
  if scan_impl not in ("auto", *SCAN_IMPLS):
    raise ValueError(f"export_model: the model's scan_impl={scan_impl!r} runs a Pallas kernel, "
                     f"which a file with a symbolic batch cannot carry; build the model with "
                     f"scan_impl='auto' or one of {list(SCAN_IMPLS)} (the same parameters).")
  model.eval()                            # drop path off: inference is deterministic
  graphdef, state = nnx.split(model)
  state = jax.tree.map(jnp.asarray, state)

  def infer(images):
    if uint8_input:
      images = (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) \
          / jnp.asarray(std, jnp.float32)
    logits = nnx.merge(graphdef, state)(images)
    return logits.astype(jnp.float32)

  batch, = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, int(resolution), int(resolution), 3),
                              jnp.uint8 if uint8_input else jnp.float32)
  with traced_for("cpu"):   # "auto" ops on their XLA paths (docstring)
    return jax.export.export(jax.jit(infer), platforms=platforms)(spec)


def eval_preprocessing(checkpoint) -> dict:
  """How images reach the model of `checkpoint` at evaluation: {'image_size', 'crop_pct',
  'mean', 'std'} from a train.py run's config.input, or ImageNet's (224, 0.875) for a
  converted checkpoint (LocalVim: its img_size). Pixels: (x / 255 - mean) / std."""
  from localmamba_jax.convert import pretrained
  meta = pretrained.read_meta(checkpoint)
  if meta.get("format") == pretrained.FORMAT:
    _, config = pretrained.model_config_of(checkpoint)
    return {"image_size": int(getattr(config, "img_size", 224)), "crop_pct": IMAGENET_CROP_PCT,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
  config = meta.get("config")
  run_input = (json.loads(config) if isinstance(config, str) else (config or {})).get("input", {})
  return {"image_size": int(run_input.get("image_size", 224)),
          "crop_pct": float(run_input.get("eval_crop_pct", IMAGENET_CROP_PCT)),
          "mean": tuple(run_input.get("mean", IMAGENET_MEAN)),
          "std": tuple(run_input.get("std", IMAGENET_STD))}


def export_checkpoint(checkpoint, output, *, model_name: str | None = None,
                      resolution: int | None = None, platforms: Sequence[str] = ("cpu",),
                      uint8_input: bool = False, mean=None, std=None,
                      scan_impl: str | None = None, dtype: str = "float32",
                      ema: bool = False) -> dict:
  """Writes the serialized inference function of `checkpoint` to `output` and its description
  to `output`.json; returns that description (a dict)."""
  from localmamba_jax.convert import pretrained
  located = pretrained.locate(checkpoint)
  stored_name, config = pretrained.model_config_of(checkpoint)
  if model_name is not None and model_name != stored_name:
    raise ValueError(f"--model {model_name!r} does not match the checkpoint, which holds "
                     f"{stored_name!r} ({str(located.path)}); drop --model or pass "
                     f"--model {stored_name}.")
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: allowed {list(DTYPES)}.")
  if scan_impl is None:
    scan_impl = config.scan_impl if config.scan_impl in SCAN_IMPLS else "associative"
  if scan_impl not in SCAN_IMPLS:
    raise ValueError(f"scan_impl={scan_impl!r}: an exported file runs the XLA path, one of "
                     f"{list(SCAN_IMPLS)} ('associative' is the fast one on accelerators).")
  preprocessing = eval_preprocessing(checkpoint)
  resolution = preprocessing["image_size"] if resolution is None else resolution
  crop_pct = preprocessing["crop_pct"]
  default_mean, default_std = preprocessing["mean"], preprocessing["std"]
  mean = _check_stats("mean", default_mean if mean is None else mean)
  std = _check_stats("std", default_std if std is None else std)
  platforms = _check_platforms(platforms)

  overrides = {}
  conv_impl = getattr(config, "depthwise_conv_impl", None)   # LocalVMamba's mixer conv
  if conv_impl == "auto":
    # "auto" resolves on the machine that traces, but the file runs where it is loaded: the
    # shifted form (faster on CPUs) only in a CPU-only file, cuDNN's conv wherever a GPU may
    # run it (what "auto" runs on a GPU without a derivative: ops/depthwise_conv.py); an
    # explicit choice in the config is kept
    conv_impl = overrides["depthwise_conv_impl"] = ("shifted" if platforms == ("cpu",)
                                                    else "lax")
  model = pretrained.load_pretrained(checkpoint, ema=ema, scan_impl=scan_impl,
                                     dtype=DTYPES[dtype], **overrides)
  exported = export_model(model, resolution=resolution, platforms=platforms,
                          uint8_input=uint8_input, mean=mean, std=std)
  data = exported.serialize()
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_bytes(data)
  description = {
      "format": FORMAT, "version": FORMAT_VERSION,
      "model_name": stored_name, "num_classes": int(model.config.num_classes),
      "checkpoint": str(located.path), "checkpoint_kind": located.kind, "ema": ema,
      "input": {
          "shape": ["batch", int(resolution), int(resolution), 3], "layout": "NHWC",
          "dtype": "uint8" if uint8_input else "float32",
          "normalization": {"mean": list(mean), "std": list(std),
                            "applied_inside": uint8_input,
                            "formula": "(x / 255 - mean) / std"},
          "preprocessing": (f"shorter side resized to floor({resolution} / {crop_pct}) "
                            f"(bicubic), center crop {resolution}x{resolution}, RGB"),
          "crop_pct": crop_pct},
      "output": {"shape": ["batch", int(model.config.num_classes)], "dtype": "float32",
                 "meaning": "logits (apply softmax for probabilities)"},
      "platforms": list(exported.platforms), "scan_impl": scan_impl, "compute_dtype": dtype,
      "depthwise_conv_impl": conv_impl,
      "jax_version": jax.__version__,
      "calling_convention_version": int(exported.calling_convention_version),
      "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
  }
  pathlib.Path(str(output) + ".json").write_text(json.dumps(description, indent=2) + "\n")
  return description


def load_exported(path):
  """The `jax.export.Exported` stored in `path` (what a consumer does; needs only jax)."""
  return jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, "
                                     f"e.g. 0.485,0.456,0.406") from None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m localmamba_jax.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True,
                      help="a converted checkpoint (python -m localmamba_jax.convert) or a "
                           "train.py workdir")
  parser.add_argument("--output", required=True, help="file to write (FILE.json goes beside)")
  parser.add_argument("--model", default=None,
                      help="expected model name (checked against the checkpoint's; default: "
                           "whatever the checkpoint holds)")
  parser.add_argument("--resolution", type=int, default=None,
                      help="square input size (default: the run's image_size, else the "
                           "model's img_size, else 224)")
  parser.add_argument("--platforms", default="cpu",
                      help=f"comma-separated, of {', '.join(PLATFORMS)} (default: cpu)")
  parser.add_argument("--uint8-input", action="store_true",
                      help="take uint8 pixels and normalise inside (default: float32, "
                           "normalised outside)")
  parser.add_argument("--mean", type=_floats, default=None, help="3 values, e.g. 0.5,0.5,0.5")
  parser.add_argument("--std", type=_floats, default=None, help="3 values")
  parser.add_argument("--scan-impl", default=None, choices=SCAN_IMPLS,
                      help="selective scan in the file (default: the checkpoint's if it is "
                           "an XLA path, else associative)")
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--ema", action="store_true", help="a train.py run's EMA weights")
  args = parser.parse_args(argv)
  try:
    description = export_checkpoint(
        args.checkpoint, args.output, model_name=args.model, resolution=args.resolution,
        platforms=args.platforms, uint8_input=args.uint8_input, mean=args.mean, std=args.std,
        scan_impl=args.scan_impl, dtype=args.dtype, ema=args.ema)
  except (ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  spec = description["input"]
  print(f"model: {description['model_name']} ({description['num_classes']} classes) from "
        f"{description['checkpoint']}")
  print(f"input: {spec['dtype']} {spec['shape']} NHWC, "
        + ("normalised inside" if spec["normalization"]["applied_inside"] else
           f"normalised outside with mean {spec['normalization']['mean']} std "
           f"{spec['normalization']['std']}"))
  print(f"platforms: {', '.join(description['platforms'])}; scan: {description['scan_impl']}")
  print(f"wrote {args.output} ({description['bytes']:,} bytes) and {args.output}.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())

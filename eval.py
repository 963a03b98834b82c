r"""Evaluate a pretrained LocalMamba checkpoint: top-1 / top-5 on an ImageNet-style val set.

  python -m localmamba_jax.convert --checkpoint local_vssm_small.ckpt --output ckpt/lvm_s
  python eval.py --checkpoint ckpt/lvm_s --config.input.source=image_folder \
      --config.input.folder=/data/imagenet --config.input.eval_split=val
  python eval.py --checkpoint ckpt/lvm_s --config.input.tfds_data_dir=/data/tfds  # imagenet2012
  python eval.py --checkpoint /ckpt/my_run --ema          # a train.py workdir (latest step, EMA)

Preprocessing is the reference evaluation (shorter side to 256 bicubic, center crop 224,
ImageNet mean/std: config.input.image_size / eval_crop_pct / mean / std). The batch is split
over all devices. Results are printed and written as JSON (--output).
"""
import json

from absl import app, flags
from ml_collections import config_flags

from localmamba_jax.training import entry_points
from localmamba_jax.training.config_schema import base_config


def eval_config():
  """The training config's keys; only input.*, model_dtype and sharding.* matter here."""
  c = base_config()
  c.input.batch_size = 256
  # one pass over a split (hundreds of steps): a ~1% slower step costs less than the autotuning
  # the pruning saves on a cold compile (training/gpu_xla_flags.py; reasoned from the train
  # step's figures, the eval step's are not measured)
  c.gpu_pruned_autotuning = True
  return c


_CONFIG = config_flags.DEFINE_config_dict("config", eval_config(), lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A converted checkpoint (python -m localmamba_jax.convert) or a train.py "
    "workdir / checkpoints folder / step folder.", required=True)
_OUTPUT = flags.DEFINE_string("output", "eval_results.json", "Where to write the results JSON.")
_EMA = flags.DEFINE_bool("ema", False, "Evaluate the EMA weights of a train.py checkpoint.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<key>=<value>")
  entry_points.start(_CONFIG.value)
  from localmamba_jax.convert.evaluate import evaluate_pretrained, write_results
  results = evaluate_pretrained(_CHECKPOINT.value, _CONFIG.value, ema=_EMA.value,
                                progress=_PROGRESS.value)
  write_results(results, _OUTPUT.value)
  print(f"{results['model_name']}: top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
        f"({results['count']} images, {results['images_per_s']} img/s)")
  print(json.dumps(results, indent=2))
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)

r"""Search the scan directions of every layer (paper Sec. 3.4), then retrain with them.

  python search.py                                    # CPU demo on the digits (configs/search_demo.py)
  python search.py --config configs/search_localvmamba_t.py --workdir /ckpt/search_lvm_t \
      --config.input.tfds_data_dir=/data/tfds         # the reference search: 100 epochs, ImageNet
  python search.py --export --workdir /ckpt/search_lvm_t [--top_k 4] [--step N]
  python train.py --config configs/localvmamba_t.py --workdir /ckpt/lvm_t \
      --config.model.directions=/ckpt/search_lvm_t/directions.json

Training is train.py's loop (checkpoints, resume, metrics); rerunning with the same --workdir
resumes. At the end, or with --export from any checkpoint, the top-k directions of every layer
go to WORKDIR/directions.json and are printed one list per line; WORKDIR/directions.png,
probabilities.png and scan_orders.png show the result. Options: see configs/search_demo.py.
"""
from absl import app, flags
from ml_collections import config_flags

from localmamba_jax.training import entry_points

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/search_demo.py", "Search config file (variants after ':').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, directions.json and pictures "
    "(default: ./workdir/<config file name>).")
_EXPORT = flags.DEFINE_bool(
    "export", False, "Only export: read a checkpoint of --workdir and write directions.json.")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Directions kept per layer for --export (default: the run's "
    "config.search.top_k, 4 as the reference).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --export (default: the latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<key>=<value>")
  entry_points.start(_CONFIG.value)
  from localmamba_jax.search.run import export_and_draw, run_search
  if _EXPORT.value:
    if not _WORKDIR.value:
      raise app.UsageError("--export needs --workdir (the directory of a search run)")
    export_and_draw(_WORKDIR.value, top_k=_TOP_K.value, step=_STEP.value)
    return
  if _TOP_K.value is not None or _STEP.value is not None:
    raise app.UsageError("--top_k and --step belong to --export; for a search run set "
                         "--config.search.top_k")
  workdir = _WORKDIR.value or entry_points.default_workdir()
  run_search(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)

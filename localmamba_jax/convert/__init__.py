"""Official LocalMamba checkpoints -> localmamba-jax models and Orbax checkpoints.

    python -m localmamba_jax.convert --checkpoint local_vssm_small.ckpt --output ckpt/lvm_s

    from localmamba_jax.convert import from_torch_state_dict, load_pretrained
    model = from_torch_state_dict("local_vim_tiny", state_dict)   # str -> numpy array
    model = load_pretrained("ckpt/lvm_s")                          # a converted checkpoint

Reading files: `read_checkpoint` (.npz, .safetensors, and .ckpt/.pth via PyTorch). Orbax
functions (save_pretrained, load_pretrained, init_params_from_pretrained) need the `train`
extra (orbax-checkpoint); they are imported on first use, so the state-dict path needs only
numpy, jax and flax.
"""
from localmamba_jax.convert.files import read_checkpoint, read_safetensors, unwrap_state_dict
from localmamba_jax.convert.official import (Inferred, check_family, detect_family,
                                             from_torch_state_dict, infer_model, resolve_model)

_PRETRAINED = ("save_pretrained", "load_pretrained", "restore_params", "read_meta",
               "init_params_from_pretrained", "resize_pos_embed")


def __getattr__(name):
  if name in _PRETRAINED:
    from localmamba_jax.convert import pretrained
    return getattr(pretrained, name)
  raise AttributeError(f"module 'localmamba_jax.convert' has no attribute {name!r}")


def convert_file(checkpoint, output, *, model: str | None = None, overwrite: bool = False,
                 **overrides):
  """Converts an official checkpoint file to an Orbax checkpoint in `output`.

  Returns (model, resolved) where `resolved` names the registry model and its overrides.
  """
  import hashlib
  import pathlib
  from localmamba_jax.convert import pretrained
  state_dict = read_checkpoint(checkpoint)
  resolved = resolve_model(model, state_dict, **overrides)
  net = from_torch_state_dict(resolved.name, state_dict, **resolved.overrides)
  digest = hashlib.sha256()
  with open(checkpoint, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  source = {"checkpoint": pathlib.Path(checkpoint).name, "sha256": digest.hexdigest(),
            "num_tensors": len(state_dict)}
  pretrained.save_pretrained(net, output, model_name=resolved.name, source=source,
                             notes=resolved.notes, overwrite=overwrite)
  return net, resolved

"""Builds the model named by the config.

`config.model_name` is either a registry name (`models.registry.list_models()`, e.g.
'local_vssm_tiny', with `config.model` as overrides such as drop_path_rate), or one of the
custom names below, which build the architecture straight from `config.model` (every field of
the model's config class); the CPU demo uses 'custom_local_vmamba'.

`config.model.directions` may name a direction file (search.py's export, read with
`models.registry.load_directions`): `--config.model.directions=WORKDIR/directions.json`. On the
command line a tuple-valued key turns the path into a 1-tuple; both forms are accepted. ""
means the registered model's own lists.
"""
from __future__ import annotations

import jax.numpy as jnp

CUSTOM = ("custom_local_vmamba", "custom_local_vim")
_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def model_kwargs(config) -> dict:
  kwargs = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  for key, value in kwargs.items():  # ConfigDict turns lists into tuples; keep nested lists
    if isinstance(value, list):
      kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
  kwargs["dtype"] = _DTYPES[config.model_dtype]
  directions = kwargs.get("directions")
  if isinstance(directions, tuple) and len(directions) == 1 and isinstance(directions[0], str):
    directions = directions[0]  # a path given on the command line for a tuple-valued key
  if directions == "":
    del kwargs["directions"]
  elif isinstance(directions, str):
    from localmamba_jax.models.registry import load_directions
    kwargs["directions"] = load_directions(directions)
  return kwargs


def build_model(config, num_classes: int, rngs):
  kwargs = model_kwargs(config)
  name = config.model_name
  if name == "custom_local_vmamba":
    from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
    return LocalVMamba(LocalVMambaConfig(num_classes=num_classes, **kwargs), rngs=rngs)
  if name == "custom_local_vim":
    from localmamba_jax.models.local_vim import LocalVim, LocalVimConfig
    return LocalVim(LocalVimConfig(num_classes=num_classes, **kwargs), rngs=rngs)
  from localmamba_jax.models import registry
  known = list(registry.list_models())
  if name not in known:
    raise ValueError(f"config.model_name={name!r} is not a registered model; registered: "
                     f"{known}, or one of {list(CUSTOM)} to build from config.model")
  if registry.model_spec(name).family == "local_vim" and "img_size" not in kwargs:
    # pos_embed / RoPE grid at the training resolution (224 in the recipe: unchanged); a
    # pretrained 224 table is resized once at init (config.init), DeiT-style fine-tuning
    kwargs["img_size"] = config.input.image_size
  return registry.create_model(name, num_classes=num_classes, rngs=rngs, **kwargs)

"""Reading official checkpoint files into a flat {key: numpy array} state dict.

Formats: `.npz` (numpy), `.safetensors` (read here with numpy: the format is an 8-byte header
length, a JSON header and raw little-endian tensors, so no package is needed), and the
official `torch.save` files (`.ckpt`, `.pth`, `.pt`, `.bin`), which need PyTorch (the
`torch` extra) and are loaded with `weights_only=True`, so no pickled code ever runs.

Wrappers are removed: the release format `{'state_dict': ...}` (official
`tools/convert_ckpt.py`), a training checkpoint's `{'model': ...}`, and the `module.` prefixes
of DDP / EMA wrappers (`module.module.` in unconverted official training checkpoints).
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Mapping

import numpy as np

TORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
SUPPORTED_SUFFIXES = (".npz", ".safetensors") + TORCH_SUFFIXES
# keys under which checkpoints nest the weights, tried in this order
WRAPPER_KEYS = ("state_dict", "model")
MODULE_PREFIX = "module."


def _is_array(value) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy array or a (CPU or GPU) torch tensor; half types -> float32."""
  if type(value).__module__.startswith("torch"):
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
      value = value.float()          # numpy has no bfloat16; float16 is widened for uniformity
    value = value.numpy()
  array = np.asarray(value)
  if array.dtype.kind == "f" and array.dtype != np.float64 and array.dtype.itemsize < 4:
    array = array.astype(np.float32)
  elif array.dtype.kind == "V" or array.dtype.name == "bfloat16":
    array = array.astype(np.float32)
  return array


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, np.ndarray]:
  """The flat state dict inside a checkpoint object, as numpy arrays.

  Accepts a plain state dict, `{'state_dict': sd}`, `{'model': sd}` (nested any number of
  times) and keys with one or more `module.` prefixes.
  """
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"checkpoint must be a dict of arrays or a dict holding one under "
                     f"{' / '.join(map(repr, WRAPPER_KEYS))}, got {type(checkpoint).__name__}.")
  seen = []
  while not any(_is_array(v) for v in checkpoint.values()):
    inner = next((k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
    if inner is None:
      raise ValueError(f"checkpoint holds no arrays and none of the wrapper keys "
                       f"{list(WRAPPER_KEYS)} (keys found: {sorted(map(str, checkpoint))[:10]}); "
                       f"pass the state dict itself (key -> array).")
    seen.append(inner)
    checkpoint = checkpoint[inner]
  out, not_arrays = {}, []
  for key, value in checkpoint.items():
    if not _is_array(value):
      not_arrays.append(str(key))
      continue
    name = str(key)
    while name.startswith(MODULE_PREFIX):
      name = name[len(MODULE_PREFIX):]
    if name in out:
      raise ValueError(f"state dict has {name!r} both with and without a 'module.' prefix; "
                       f"remove the duplicate before converting.")
    out[name] = to_numpy(value)
  if not_arrays:
    where = "".join(f"[{k!r}]" for k in seen) or "the top level"
    raise ValueError(f"state dict at {where} has non-array entries {not_arrays[:10]}; a state "
                     f"dict must map every key to a tensor/array.")
  return out


# ----------------------------------------------------------------------------------------------
# safetensors, read with numpy
# ----------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?", "BF16": "bf16",
}


def read_safetensors(path) -> dict[str, np.ndarray]:
  """{name: array} from a .safetensors file (BF16 / F16 widened to float32)."""
  data = pathlib.Path(path).read_bytes()
  if len(data) < 8:
    raise ValueError(f"{str(path)!r} is too short to be a safetensors file.")
  (header_len,) = struct.unpack("<Q", data[:8])
  if header_len > len(data) - 8:
    raise ValueError(f"{str(path)!r}: safetensors header length {header_len} exceeds the file "
                     f"size; the file is truncated or not safetensors.")
  header = json.loads(data[8:8 + header_len])
  body = memoryview(data)[8 + header_len:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    kind = _SAFETENSORS_DTYPES.get(info["dtype"])
    if kind is None:
      raise ValueError(f"{str(path)!r}: tensor {name!r} has dtype {info['dtype']}, which this "
                       f"reader does not handle ({sorted(_SAFETENSORS_DTYPES)}).")
    begin, end = info["data_offsets"]
    raw = bytes(body[begin:end])
    if kind == "bf16":   # the top 16 bits of a float32
      array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
      array = np.frombuffer(raw, np.dtype(kind))
    out[name] = to_numpy(array.reshape(info["shape"]))
  return out


# ----------------------------------------------------------------------------------------------
# torch files
# ----------------------------------------------------------------------------------------------

def _torch_load(path):
  try:
    import torch
  except ImportError:
    raise ImportError(
        f"reading {str(path)!r} needs PyTorch (torch.save format). Install it with "
        f"`pip install 'localmamba-jax[torch]'` (CPU wheels: `pip install torch --index-url "
        f"https://download.pytorch.org/whl/cpu`), or convert the file elsewhere to .npz "
        f"(`np.savez(out, **{{k: v.numpy() for k, v in sd.items()}})`) or .safetensors and "
        f"pass that.") from None
  # weights_only=True: tensors and plain containers only; a pickle that would run code fails
  return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path) -> dict[str, np.ndarray]:
  """The flat numpy state dict of a checkpoint file (.npz, .safetensors, .ckpt/.pth/.pt/.bin)."""
  path = pathlib.Path(os.fspath(path))
  if not path.is_file():
    raise ValueError(f"checkpoint {str(path)!r} does not exist (or is not a file); pass the "
                     f"path of an official checkpoint ({', '.join(SUPPORTED_SUFFIXES)}).")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      raw = {k: data[k] for k in data.files}
  elif suffix == ".safetensors":
    raw = read_safetensors(path)
  elif suffix in TORCH_SUFFIXES:
    raw = _torch_load(path)
  else:
    raise ValueError(f"checkpoint {str(path)!r} has suffix {suffix!r}; supported: "
                     f"{', '.join(SUPPORTED_SUFFIXES)}.")
  return unwrap_state_dict(raw)

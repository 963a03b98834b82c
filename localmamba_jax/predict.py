"""Inference in this process: a model's forward as one compiled program per batch size.

  from localmamba_jax.predict import Predictor
  predictor = Predictor.from_checkpoint("ckpt/local_vssm_tiny", uint8_input=True)
  logits = predictor(crops)                     # uint8 [batch, 224, 224, 3] -> float32 logits
  probabilities, classes = predictor.top_k(crops, k=5)

Why not `model(images)`: called eagerly, the model runs op by op, each dispatched from Python
(hundreds per forward); under `nnx.jit` every call walks the module's ~300 variables to split
and merge them. The predictor splits the model once, keeps its state on the device as a flat
list of arrays and calls a `jax.jit` program on (state, images): one dispatch per call. One
H200, LocalVMamba-T bf16, one image (BENCHMARKS.md session 27): eager 298 ms, nnx.jit 20.8 ms,
the predictor 3.1 ms, then still taking the state as an nnx.State (the flat list took ~0.4 ms
of host time off each call on a 2-core CPU) and copying the images to the host to read their
dtype (fixed since); neither fix re-timed on the GPU. Of the benchmark's
~2.4 ms eval step at batch 1, ~1.5 ms are kernels, the rest the host's dispatch.

Each new batch size compiles a new program. For a stream of requests of varying size give
`batch_buckets`: a batch is padded to the smallest bucket that holds it (larger batches go in
chunks of the largest bucket), so at most len(batch_buckets) programs are compiled; `warmup()`
compiles them up front. Padding rows are zeros and are dropped from the result (rows do not
interact: normalisation is per token, the scans per image).

Input: NHWC images, [batch, H, W, 3], or one image [H, W, 3] (then the result has no batch
axis), as the evaluation preprocessing leaves them (`export.eval_preprocessing` gives the size,
crop and statistics; `training.data.transforms.EvalTransform` does the resize and crop).
float32 pixels already normalised, (x / 255 - mean) / std; or, with `uint8_input=True`, the
uint8 crop, normalised inside the program with `mean` / `std` (a checkpoint's own with
`from_checkpoint`). Output: float32 logits.

Several devices (`devices="all"` or a list): the weights are replicated on each, the batch is
split over them (padded to a multiple of their count), and the scan kernels run once per
device's share of the batch (`ops.kernels.common.shard_over_batch`, under the predictor's
mesh), as in eval.py's data-parallel evaluation.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from localmamba_jax.export import IMAGENET_MEAN, IMAGENET_STD, _check_stats

BATCH_AXIS = "batch"


def _pad_rows(images, rows: int):
  """images [b, H, W, C] with zero rows appended up to `rows` (numpy stays numpy)."""
  if images.shape[0] == rows:
    return images
  padding = [(0, rows - images.shape[0])] + [(0, 0)] * (images.ndim - 1)
  return jnp.pad(images, padding) if isinstance(images, jax.Array) else np.pad(images, padding)


def _devices(devices) -> list:
  if devices is None:
    return [jax.devices()[0]]
  if isinstance(devices, str):
    if devices != "all":
      raise ValueError(f"devices={devices!r}: give None (one device), 'all' (every local "
                       f"device) or a list of jax devices.")
    return list(jax.local_devices())
  devices = list(devices)
  if not devices or not all(isinstance(d, jax.Device) for d in devices) \
      or len(set(devices)) != len(devices):
    raise ValueError(f"devices={devices!r}: give distinct jax devices, e.g. "
                     f"jax.local_devices()[:2], or None / 'all'.")
  return devices


def _check_buckets(batch_buckets) -> tuple[int, ...] | None:
  if batch_buckets is None:
    return None
  buckets = tuple(batch_buckets)
  if not buckets or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                        for b in buckets):
    raise ValueError(f"batch_buckets={batch_buckets!r}: give positive batch sizes, e.g. "
                     f"(1, 8, 32, 128), or None to compile one program per batch size.")
  return tuple(sorted(set(int(b) for b in buckets)))


class Predictor:
  """A model's eval-mode forward, compiled once per batch size (or bucket); see the module
  docstring. `model` is an nnx model of this package (any of `models.create_model`'s or
  `convert.load_pretrained`'s); it is put in eval mode, and later changes to it are not seen
  (the predictor keeps the state it had). devices: None = the default device; "all" = every
  local device; or a list of jax devices (the batch is split over them)."""

  def __init__(self, model: nnx.Module, *, uint8_input: bool = False,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               batch_buckets: Sequence[int] | None = None, devices=None):
    if not isinstance(model, nnx.Module):
      raise TypeError(f"Predictor: model must be an nnx.Module of this package (e.g. "
                      f"models.create_model(...) or convert.load_pretrained(DIR)), got "
                      f"{type(model).__name__}.")
    model.eval()                            # drop path off: inference is deterministic
    self.uint8_input = bool(uint8_input)
    self.mean, self.std = _check_stats("mean", mean), _check_stats("std", std)
    self.batch_buckets = _check_buckets(batch_buckets)
    self.devices = _devices(devices)
    # the checkpoint's evaluation input (`from_checkpoint`; None for a model given directly)
    self.image_size: int | None = None
    self.crop_pct: float | None = None
    graphdef, state = nnx.split(model)
    # The state goes in as a flat list of arrays, put on the device once: jit flattens an
    # nnx.State argument in Python on every call (LocalVMamba-T's 302 leaves: ~490 us per call
    # against ~90 us for the list on a 2-core CPU, session 27), a list in C++.
    leaves, treedef = jax.tree.flatten(state)
    self._mesh = None
    if len(self.devices) > 1:
      from jax.sharding import NamedSharding, PartitionSpec as P
      self._mesh = jax.make_mesh((len(self.devices),), (BATCH_AXIS,), devices=self.devices,
                                 axis_types=(jax.sharding.AxisType.Auto,))
      replicated = NamedSharding(self._mesh, P())
      split = NamedSharding(self._mesh, P(BATCH_AXIS))
      self._leaves = jax.device_put(leaves, replicated)
      shardings = dict(in_shardings=(replicated, split), out_shardings=split)
      self._split = split
    else:
      self._leaves = jax.device_put(leaves, self.devices[0])
      shardings = {}
    mean_arr, std_arr = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)

    def forward(leaves, images):
      if self.uint8_input:  # the training step's normalisation (training.augment)
        images = (images.astype(jnp.float32) / 255.0 - mean_arr) / std_arr
      model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
      return model(images).astype(jnp.float32)

    self._forward = jax.jit(forward, **shardings)
    self.compiled_batch_sizes: set[int] = set()  # batch sizes run so far (one program each)

  @classmethod
  def from_checkpoint(cls, directory, *, ema: bool = False, uint8_input: bool = False,
                      batch_buckets: Sequence[int] | None = None, devices=None,
                      **overrides) -> "Predictor":
    """The model stored in `directory` (a converted checkpoint or a train.py run, as
    `convert.load_pretrained` reads it; `overrides` as there, e.g. dtype=jnp.bfloat16), with
    the checkpoint's own normalisation statistics (`export.eval_preprocessing`)."""
    from localmamba_jax.convert import load_pretrained
    from localmamba_jax.export import eval_preprocessing
    preprocessing = eval_preprocessing(directory)
    predictor = cls(load_pretrained(directory, ema=ema, **overrides), uint8_input=uint8_input,
                    mean=preprocessing["mean"], std=preprocessing["std"],
                    batch_buckets=batch_buckets, devices=devices)
    predictor.image_size = preprocessing["image_size"]
    predictor.crop_pct = preprocessing["crop_pct"]
    return predictor

  # ------------------------------------------------------------------------------- calling

  def _checked(self, images):
    if not hasattr(images, "dtype"):  # a list: to numpy (a jax or numpy array stays where it is)
      images = np.asarray(images)
    shape, dtype = images.shape, np.dtype(images.dtype)
    if len(shape) not in (3, 4) or shape[-1] != 3:
      raise ValueError(f"Predictor: images must be NHWC [batch, H, W, 3] or one image "
                       f"[H, W, 3], got shape {tuple(shape)}.")
    if self.uint8_input and dtype != np.uint8:
      raise ValueError(f"Predictor(uint8_input=True): images must be uint8 pixels, got "
                       f"{dtype}; pass the uint8 crop, or build the predictor with "
                       f"uint8_input=False for normalised float pixels.")
    if not self.uint8_input and not np.issubdtype(dtype, np.floating):
      raise ValueError(f"Predictor: images have dtype {dtype}; pass float pixels normalised "
                       f"as (x / 255 - mean) / std, or build the predictor with "
                       f"uint8_input=True to pass uint8 pixels.")
    if len(shape) == 4 and shape[0] == 0:
      raise ValueError("Predictor: an empty batch (batch size 0); pass at least one image.")
    if self.uint8_input:
      return images
    # float32, where the images already are (a host array is sent once, at the call)
    return (images.astype(jnp.float32) if isinstance(images, jax.Array)
            else np.asarray(images, np.float32))

  def _run(self, images):
    batch = images.shape[0]
    if self._mesh is None:
      self.compiled_batch_sizes.add(batch)
      return self._forward(self._leaves, images)
    padded = -(-batch // len(self.devices)) * len(self.devices)   # an equal share per device
    # each device gets its share of the rows directly
    images = jax.device_put(_pad_rows(images, padded), self._split)
    self.compiled_batch_sizes.add(padded)
    with jax.set_mesh(self._mesh):  # the kernels split their calls by the mesh when traced
      return self._forward(self._leaves, images)[:batch]

  def __call__(self, images) -> jax.Array:
    """float32 logits [batch, num_classes] (or [num_classes] for one image [H, W, 3])."""
    images = self._checked(images)
    if images.ndim == 3:
      return self(images[None])[0]
    if self.batch_buckets is None:
      return self._run(images)
    largest = self.batch_buckets[-1]
    pieces = []
    for start in range(0, images.shape[0], largest):
      chunk = images[start:start + largest]
      bucket = next(b for b in self.batch_buckets if b >= chunk.shape[0])
      pieces.append(self._run(_pad_rows(chunk, bucket))[:chunk.shape[0]])
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)

  def top_k(self, images, k: int = 5) -> tuple[jax.Array, jax.Array]:
    """(softmax probabilities, class indices) of the k most likely classes, each
    [batch, k] (or [k] for one image)."""
    logits = self(images)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
        or not 1 <= k <= logits.shape[-1]:
      raise ValueError(f"top_k: k={k!r}; give an integer from 1 to the {logits.shape[-1]} "
                       f"classes.")
    probabilities = jax.nn.softmax(logits, axis=-1)
    return jax.lax.top_k(probabilities, int(k))

  def warmup(self, image_size: int | None = None, batch_sizes: Sequence[int] | None = None):
    """Compiles the program of each batch size (default: the buckets) for square images of
    `image_size` (default: the checkpoint's, else 224), so that no request waits on it."""
    sizes = batch_sizes if batch_sizes is not None else self.batch_buckets
    if not sizes:
      raise ValueError("warmup: give batch_sizes, or build the predictor with batch_buckets.")
    size = int(image_size or self.image_size or 224)
    dtype = np.uint8 if self.uint8_input else np.float32
    for batch in _check_buckets(sizes):
      jax.block_until_ready(self(np.zeros((batch, size, size, 3), dtype)))
    return self

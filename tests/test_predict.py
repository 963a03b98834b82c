"""localmamba_jax.predict.Predictor: the model's eval forward as one compiled program per batch
size or bucket. Equal to calling the model (1e-5 absolute on logits of order 1: the same
float32 XLA ops, compiled as one program instead of run one by one), with the uint8 path's
normalisation, buckets that pad and drop rows, one program per bucket, and clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax import convert
from localmamba_jax.models import create_model
from localmamba_jax.predict import Predictor

ATOL = 1e-5
ARCH = dict(dims=(8, 16), depths=(1, 1), directions=(("h", "w2_flip"), ("v", "h_flip")),
            drop_path_rate=0.1, scan_impl="reference")


@pytest.fixture(scope="module")
def model():
  return create_model("local_vssm_tiny", num_classes=10, rngs=nnx.Rngs(3), **ARCH)


def images(batch, size=16, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def test_logits_equal_the_model_one_image_and_batches(model):
  predictor = Predictor(model)
  for batch in (1, 3):
    x = images(batch, seed=batch)
    out = predictor(x)
    assert out.shape == (batch, 10) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(x)), rtol=0, atol=ATOL)
  one = predictor(images(3, seed=3)[1])                  # one image [H, W, 3]: no batch axis
  np.testing.assert_allclose(np.asarray(one), np.asarray(model(images(3, seed=3)))[1],
                             rtol=0, atol=ATOL)
  assert predictor.compiled_batch_sizes == {1, 3}
  as_list = predictor(images(1, seed=1).tolist())        # nested lists are taken as arrays
  np.testing.assert_allclose(np.asarray(as_list), np.asarray(model(images(1, seed=1))),
                             rtol=0, atol=ATOL)
  assert predictor.image_size is None                    # only a checkpoint knows its size
  # eval mode: drop path (0.1 here) is off, so two calls agree exactly
  np.testing.assert_array_equal(np.asarray(predictor(images(2))), np.asarray(predictor(images(2))))


def test_a_plain_model_with_a_middle_cls_token_too():
  """LocalVim (plain, RoPE, cls token in the middle): the predictor is model-agnostic."""
  vim = create_model("local_vim_tiny_middle_cls_token", num_classes=7, embed_dim=32, depth=2,
                     directions=(("h", "v_flip"), ("w2", "h_flip")), img_size=32,
                     patch_size=8, rngs=nnx.Rngs(4))
  x = images(2, size=32, seed=4)
  out = Predictor(vim)(x)
  assert out.shape == (2, 7)
  np.testing.assert_allclose(np.asarray(out), np.asarray(vim(x)), rtol=0, atol=ATOL)


def test_uint8_pixels_are_normalised_inside_with_the_given_statistics(model):
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  predictor = Predictor(model, uint8_input=True, mean=mean, std=std)
  pixels = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  expected = model((pixels.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
                   / np.asarray(std, np.float32))
  np.testing.assert_allclose(np.asarray(predictor(pixels)), np.asarray(expected), rtol=0,
                             atol=ATOL)
  probabilities, classes = predictor.top_k(pixels, k=3)
  assert probabilities.shape == classes.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(classes),
                                np.argsort(-np.asarray(expected), axis=-1)[:, :3])
  np.testing.assert_allclose(np.asarray(probabilities),
                             np.sort(np.asarray(jax.nn.softmax(expected)), axis=-1)[:, ::-1][:, :3],
                             rtol=1e-5)


def test_buckets_pad_drop_rows_and_bound_the_programs(model):
  predictor = Predictor(model, batch_buckets=(4, 2))
  x = images(7, seed=7)
  out = predictor(x)                      # chunks of the largest bucket: 4, then 3 -> 4
  assert out.shape == (7, 10)
  np.testing.assert_allclose(np.asarray(out), np.asarray(model(x)), rtol=0, atol=ATOL)
  predictor(x[:1])                        # 1 -> 2
  predictor(x[:2])
  assert predictor.compiled_batch_sizes == {2, 4}
  assert predictor._forward._cache_size() == 2
  warm = Predictor(model, batch_buckets=(1, 2)).warmup(image_size=16)
  assert warm.compiled_batch_sizes == {1, 2}


def test_from_checkpoint_takes_the_checkpoint_and_its_statistics(model, tmp_path):
  directory = tmp_path / "tiny"
  convert.save_pretrained(model, directory, model_name="local_vssm_tiny")
  predictor = Predictor.from_checkpoint(directory, uint8_input=True)
  assert (predictor.mean, predictor.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  assert (predictor.image_size, predictor.crop_pct) == (224, 0.875)
  pixels = np.full((1, 16, 16, 3), 128, np.uint8)
  reference = Predictor(model, uint8_input=True)
  np.testing.assert_allclose(np.asarray(predictor(pixels)), np.asarray(reference(pixels)),
                             rtol=0, atol=ATOL)


def test_bad_input_is_refused_with_what_to_do(model):
  floats, pixels = Predictor(model), Predictor(model, uint8_input=True)
  with pytest.raises(ValueError, match=r"uint8_input=True to pass uint8 pixels"):
    floats(np.zeros((1, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match=r"must be uint8 pixels, got float32"):
    pixels(np.zeros((1, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[batch, H, W, 3\].*got shape \(1, 3, 16, 16\)"):
    floats(np.zeros((1, 3, 16, 16), np.float32))        # NCHW
  with pytest.raises(ValueError, match="empty batch"):
    floats(np.zeros((0, 16, 16, 3), np.float32))
  for buckets in ((), (0, 4), (2.5,), (True,)):
    with pytest.raises(ValueError, match="batch_buckets="):
      Predictor(model, batch_buckets=buckets)
  with pytest.raises(ValueError, match="std="):
    Predictor(model, std=(0.2, 0.0, 0.3))
  with pytest.raises(ValueError, match="k=0"):
    floats.top_k(images(1), k=0)
  with pytest.raises(ValueError, match="give batch_sizes"):
    floats.warmup()
  with pytest.raises(TypeError, match="nnx.Module"):
    Predictor(lambda x: x)


MULTI_DEVICE = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from localmamba_jax.models import create_model
from localmamba_jax.predict import Predictor

assert jax.device_count() == 4, jax.devices()
model = create_model("local_vssm_tiny", num_classes=10, dims=(8, 16), depths=(1, 1),
                     directions=(("h", "w2_flip"), ("v", "h_flip")), drop_path_rate=0.0,
                     scan_impl="pallas_gpu", rngs=nnx.Rngs(5))   # the GPU kernel, interpreted
x = np.random.default_rng(5).standard_normal((6, 16, 16, 3)).astype(np.float32)
one = Predictor(model)
many = Predictor(model, devices="all")
expected = np.asarray(one(x))
shard_maps, real_shard_map = [], jax.shard_map
jax.shard_map = lambda f, **kw: shard_maps.append(kw["in_specs"]) or real_shard_map(f, **kw)
out = many(x)                                  # 6 images -> 8 rows, 2 per device (traced here)
jax.shard_map = real_shard_map
one_image = float(np.abs(np.asarray(many(x[0])) - expected[0]).max())  # 1 -> 4 rows
print(json.dumps(dict(
    err=float(np.abs(np.asarray(out) - expected).max()), shape=list(out.shape),
    sizes=sorted(many.compiled_batch_sizes),
    weights_on=len(many._leaves[0].sharding.device_set),
    kernel_calls_per_shard=len(shard_maps),
    one_image=one_image)))
"""


def test_several_devices_split_the_batch_and_match_one_device():
  """devices='all' on 4 simulated CPU devices: weights on each, 6 images padded to 8 (2 per
  device), the scan kernel called per device's share (a shard_map in the program), logits
  equal to one device's."""
  import json
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                          "--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, cwd=root,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["shape"] == [6, 10] and result["sizes"] == [4, 8]
  assert result["err"] < ATOL and result["one_image"] < ATOL
  assert result["weights_on"] == 4
  # the two blocks' kernel calls (4) each ran on every device's share, through a shard_map
  assert result["kernel_calls_per_shard"] == 4


def test_devices_are_checked(model):
  with pytest.raises(ValueError, match="devices='gpu'"):
    Predictor(model, devices="gpu")
  with pytest.raises(ValueError, match="distinct jax devices"):
    Predictor(model, devices=[jax.devices()[0], jax.devices()[0]])

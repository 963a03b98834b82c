"""The serialized inference file (localmamba_jax/export.py): written from a converted checkpoint
and from a train.py workdir, loaded and run by a process that has only jax and numpy, equal to
the live model at batch sizes 1 and 3 (one file, symbolic batch). Tolerance: 1e-5 absolute on
logits of order 1 (the same float32 XLA program compiled twice; measured ~1e-7)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from localmamba_jax import convert
from localmamba_jax import export
from localmamba_jax.models import create_model

ATOL = 1e-5
ARCH = dict(dims=(8, 16), depths=(1, 1), directions=(("h", "w2_flip"), ("v", "h_flip")),
            drop_path_rate=0.0, scan_impl="reference")

# Everything a consumer of the file needs; it must not import flax or this package.
CONSUMER = r"""
import sys
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
inputs = np.load(sys.argv[2])
outputs = {name: np.asarray(exported.call(inputs[name])) for name in inputs.files}
np.savez(sys.argv[3], **outputs)
leaked = sorted({m.split(".")[0] for m in sys.modules} & {"flax", "localmamba_jax", "orbax"})
assert not leaked, leaked
print("in_avals", exported.in_avals, "platforms", exported.platforms)
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  model = create_model("local_vssm_tiny", num_classes=10, rngs=nnx.Rngs(1), **ARCH)
  directory = tmp_path_factory.mktemp("converted") / "tiny_vssm"
  convert.save_pretrained(model, directory, model_name="local_vssm_tiny")
  return directory


def run_consumer(path, inputs: dict, tmp_path) -> dict:
  np.savez(tmp_path / "inputs.npz", **inputs)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # the file is run where it was exported for (the CPU; a GPU host's default backend would
  # refuse a CPU-only file)
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run([sys.executable, "-c", CONSUMER, str(path), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "outputs.npz")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "batch" in result.stdout
  with np.load(tmp_path / "outputs.npz") as data:
    return {k: data[k] for k in data.files}


def test_converted_checkpoint_runs_without_the_model_code(converted, tmp_path, capsys):
  output = tmp_path / "tiny.jaxexport"
  assert export.main(["--checkpoint", str(converted), "--model", "local_vssm_tiny",
                      "--output", str(output), "--resolution", "16"]) == 0
  assert f"wrote {output}" in capsys.readouterr().out
  description = json.loads((tmp_path / "tiny.jaxexport.json").read_text())
  assert description["input"]["shape"] == ["batch", 16, 16, 3]
  assert description["input"]["dtype"] == "float32"
  assert description["input"]["normalization"]["mean"] == list(export.IMAGENET_MEAN)
  assert description["output"]["shape"] == ["batch", 10]
  assert description["platforms"] == ["cpu"] and description["scan_impl"] == "reference"
  assert description["depthwise_conv_impl"] == "shifted"    # "auto" in a CPU-only file
  assert description["checkpoint_kind"] == "converted"
  assert export.eval_preprocessing(converted) == {      # ImageNet's, as the official eval
      "image_size": 224, "crop_pct": 0.875, "mean": export.IMAGENET_MEAN,
      "std": export.IMAGENET_STD}

  rng = np.random.default_rng(0)
  inputs = {f"batch{n}": rng.standard_normal((n, 16, 16, 3)).astype(np.float32) for n in (1, 3)}
  outputs = run_consumer(output, inputs, tmp_path)
  live = convert.load_pretrained(converted)
  for name, images in inputs.items():
    expected = np.asarray(live(images))
    assert outputs[name].shape == expected.shape and outputs[name].dtype == np.float32
    np.testing.assert_allclose(outputs[name], expected, rtol=0, atol=ATOL)
  # the batch rows are independent: row 0 of batch 3 is not batch 1's image, so compare apart
  assert np.abs(outputs["batch3"][0] - outputs["batch1"][0]).max() > 1e-3


def test_train_workdir_with_uint8_input_and_the_runs_normalisation(tmp_path):
  from configs import demo
  from localmamba_jax.training.loop import train_and_evaluate
  config = demo.get_config("tiny")
  config.total_steps = 1
  config.checkpoint_every_steps = 1
  workdir = tmp_path / "run"
  train_and_evaluate(config, str(workdir))

  output = tmp_path / "demo.jaxexport"
  description = export.export_checkpoint(workdir, output, uint8_input=True)
  assert description["checkpoint_kind"] == "training"
  assert description["model_name"] == "custom_local_vmamba"
  assert description["input"]["shape"] == ["batch", 8, 8, 3]        # the run's image_size
  assert description["input"]["dtype"] == "uint8"
  assert description["input"]["normalization"] == {
      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "applied_inside": True,
      "formula": "(x / 255 - mean) / std"}

  exported = export.load_exported(output)
  live = convert.load_pretrained(workdir)
  pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  expected = live((pixels.astype(np.float32) / 255 - 0.5) / 0.5)
  with jax.default_device(jax.devices("cpu")[0]):   # the file is for the CPU (the default)
    got = exported.call(pixels)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=ATOL)


def test_several_platforms_in_one_file(tmp_path):
  model = create_model("local_vim_tiny", num_classes=4, img_size=16, rngs=nnx.Rngs(2),
                       embed_dim=16, depth=1, patch_size=8, directions=(("h", "w2_flip"),),
                       drop_path_rate=0.0, scan_impl="associative")
  exported = export.export_model(model, resolution=16, platforms=("cpu", "cuda", "tpu"))
  assert exported.platforms == ("cpu", "cuda", "tpu")
  assert str(exported.in_avals[0].shape[0]) == "batch"
  loaded = jax.export.deserialize(exported.serialize())
  images = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(loaded.call(images)), np.asarray(model(images)),
                             rtol=0, atol=ATOL)


def test_a_default_model_exports_from_a_gpu_host():
  """On a GPU host (traced_for("gpu") stands in for one) a model built with the defaults
  ("auto") picks the Pallas kernels, which jax.export refused with a symbolic batch (session
  25, before export_model traced as on a CPU); now the file holds the XLA paths and equals the
  live model. A model built with a kernel scan_impl is refused, naming the fix."""
  from localmamba_jax.ops.kernels.common import traced_for
  model = create_model("local_vssm_tiny", num_classes=10, rngs=nnx.Rngs(1),
                       **dict(ARCH, scan_impl="auto"))
  images = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
  with traced_for("gpu"):
    exported = export.export_model(model, resolution=16, platforms=("cpu", "cuda"))
    assert "__gpu$xla.gpu.triton" not in exported.mlir_module()   # no Triton kernel call
  with jax.default_device(jax.devices("cpu")[0]):
    got = exported.call(images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(model(images)), rtol=0, atol=ATOL)
  kernel_model = create_model("local_vssm_tiny", num_classes=10, rngs=nnx.Rngs(1),
                              **dict(ARCH, scan_impl="pallas_gpu"))
  with pytest.raises(ValueError, match=r"scan_impl='pallas_gpu' runs a Pallas kernel.*"
                                       r"build the model with scan_impl='auto'"):
    export.export_model(kernel_model, resolution=16)


@pytest.mark.parametrize("args, message", [
    (["--model", "local_vim_tiny"], "does not match the checkpoint, which holds 'local_vssm_tiny'"),
    (["--platforms", "cpu,gpu"], "platforms=['cpu', 'gpu']"),
    (["--mean", "0.5,0.5"], "mean=[0.5, 0.5]: give 3 per-channel values"),
])
def test_bad_arguments_are_reported(converted, tmp_path, capsys, args, message):
  assert export.main(["--checkpoint", str(converted), "--output",
                      str(tmp_path / "x.jaxexport"), *args]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x.jaxexport").exists()


def test_pallas_scan_is_refused(converted, tmp_path):
  with pytest.raises(ValueError, match="an exported file runs the XLA path"):
    export.export_checkpoint(converted, tmp_path / "x.jaxexport", scan_impl="pallas_gpu")


def test_a_file_for_gpus_runs_the_conv_through_xla_conv(converted, tmp_path):
  """LocalVMamba's depthwise conv ("auto") is resolved for where the file will run, not for the
  exporting machine: XLA's conv (cuDNN) in a file that lists a GPU, and the same logits."""
  output = tmp_path / "tiny_multi.jaxexport"
  description = export.export_checkpoint(converted, output, resolution=16,
                                         platforms=("cpu", "cuda"))
  assert description["depthwise_conv_impl"] == "lax"
  exported = export.load_exported(output)
  assert "convolution" in exported.mlir_module()
  images = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exported.call(images)),
                             np.asarray(convert.load_pretrained(converted)(images)),
                             rtol=0, atol=ATOL)

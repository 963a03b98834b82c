"""End to end on CPU: a converted golden checkpoint through eval.py's path on a tiny image
folder, and train.py's fine-tuning start (`config.init`) with a new head and another
resolution. Slow part: compiling one eval step and one tiny train step (~10-30 s each)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from localmamba_jax import convert
from localmamba_jax.convert import pretrained
from localmamba_jax.convert.evaluate import evaluate_pretrained, write_results
from localmamba_jax.models import create_model
from localmamba_jax.training.config_schema import base_config


@pytest.fixture(scope="module")
def converted_vssm(tmp_path_factory, golden_npz, golden_json):
  state_dict = golden_npz("vssm_mini/state_dict.npz")
  directions = golden_json("vssm_mini/meta.json")["directions_per_layer"]
  model = convert.from_torch_state_dict(None, {"state_dict": state_dict}, directions=directions,
                                        scan_impl="reference")   # fastest to compile on CPU
  output = tmp_path_factory.mktemp("converted") / "vssm_mini"
  convert.save_pretrained(model, output, model_name="local_vssm_tiny")
  return output, model


def image_folder(root, classes=10, per_class=2, seed=0):
  """root/val/<class>/*.jpg of random sizes, plus one unreadable file."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    folder = root / "val" / f"n{c:08d}"
    folder.mkdir(parents=True)
    for i in range(per_class):
      size = (int(rng.integers(60, 100)), int(rng.integers(60, 100)), 3)
      Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"{i}.jpg")
  (root / "val" / "n00000000" / "broken.jpg").write_bytes(b"not an image")
  return root


def test_eval_on_an_image_folder(converted_vssm, tmp_path):
  directory, model = converted_vssm
  root = image_folder(tmp_path / "data")
  config = base_config()
  config.input.source = "image_folder"
  config.input.folder = str(root)
  config.input.eval_split = "val"
  config.input.image_size = 64                      # the golden model's resolution
  config.input.batch_size = 8
  config.input.workers = 0
  logs = []
  results = evaluate_pretrained(directory, config, progress=False, log=logs.append)
  assert results["count"] == 20 and results["unreadable_images"] == 1
  assert 0.0 <= results["top1"] <= results["top5"] <= 100.0
  assert any("class names are read from" in line for line in logs)   # no train/ folder

  # the same numbers by hand: the reference eval transform, normalise, model, argmax
  from localmamba_jax.training.data.sources import ImageFolderSource
  from localmamba_jax.training.data.transforms import EvalTransform
  source = ImageFolderSource(str(root), "val", class_split="val")
  transform = EvalTransform(64, 0.875)
  records = [transform.map(source[i]) for i in range(len(source))]
  records = [r for r in records if r["valid"]]
  images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
  images = (images - np.array(config.input.mean)) / np.array(config.input.std)
  labels = np.array([r["label"] for r in records])
  model.eval()   # ModelBridge.from_model (inside the evaluation) leaves models in train mode
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, images.astype(np.float32)))
  top1 = 100.0 * np.mean(np.argmax(logits, -1) == labels)
  top5 = 100.0 * np.mean(np.any(np.argsort(-logits, -1)[:, :5] == labels[:, None], -1))
  assert results["top1"] == pytest.approx(top1) and results["top5"] == pytest.approx(top5)

  write_results(results, tmp_path / "out" / "eval.json")
  assert json.loads((tmp_path / "out" / "eval.json").read_text())["top5"] == results["top5"]


def test_eval_rejects_a_dataset_with_other_classes(converted_vssm, tmp_path):
  directory, _ = converted_vssm
  config = base_config()
  config.input.source = "image_folder"
  config.input.folder = str(image_folder(tmp_path / "data", classes=3, per_class=1))
  config.input.eval_split = "val"
  with pytest.raises(ValueError, match="3 classes but the model's head has 10"):
    evaluate_pretrained(directory, config, progress=False, log=lambda _: None)


def test_train_from_pretrained_with_new_head_and_resolution(tmp_path, capsys):
  """config.init: a LocalVim pretrained at 32x32 with 5 classes, fine-tuned on a 10-class image
  folder at 16x16 -- head re-initialised, pos_embed resized 4x4 -> 2x2 tokens."""
  from localmamba_jax.training.loop import train_and_evaluate
  arch = dict(embed_dim=16, depth=1, patch_size=8, directions=(("h", "w2_flip"),),
              drop_path_rate=0.0, scan_impl="reference")
  source = create_model("local_vim_tiny", img_size=32, num_classes=5, rngs=nnx.Rngs(3), **arch)
  init_dir = tmp_path / "pretrained"
  convert.save_pretrained(source, init_dir, model_name="local_vim_tiny")

  root = image_folder(tmp_path / "data", classes=10, per_class=1)
  os.rename(root / "val" / "n00000000" / "broken.jpg", root / "broken.txt")
  os.symlink(root / "val", root / "train")
  config = base_config()
  config.model_name = "local_vim_tiny"
  config.model = arch
  config.init = str(init_dir)
  config.num_classes = 10
  config.total_steps = 1
  config.input.source = "image_folder"
  config.input.folder = str(root)
  config.input.eval_split = "val"
  config.input.image_size = 16                     # the model's img_size follows (grid 2)
  config.input.batch_size = 8
  config.input.workers = 0
  config.input.randaugment = ""
  config.augment.mixup_alpha = config.augment.cutmix_alpha = 0.0
  config.augment.random_erase_prob = 0.0
  config.optim.lr = 1e-12                          # one step leaves the weights as loaded
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.eval_every_epochs = 0.0
  config.param_table = config.tensorboard = False
  workdir = tmp_path / "run"
  train_and_evaluate(config, str(workdir))

  restored = pretrained.restore_params(
      workdir, pretrained.model_params(nnx.eval_shape(lambda: create_model(
          "local_vim_tiny", img_size=16, num_classes=10, **arch))))
  flat = pretrained.flatten(jax.device_get(restored))
  flat_source = pretrained.flatten(pretrained.model_params(source))
  assert flat_source["pos_embed"].shape == (1, 16, 16) and flat["pos_embed"].shape == (1, 4, 16)
  expected_pos = convert.resize_pos_embed(flat_source["pos_embed"], 4, middle_cls_token=False)
  np.testing.assert_allclose(flat["pos_embed"], expected_pos, rtol=0, atol=1e-5)
  assert flat["head.kernel"].shape == (16, 10)
  np.testing.assert_allclose(flat["layers.0.mixer.in_proj.kernel"],
                             flat_source["layers.0.mixer.in_proj.kernel"], rtol=0, atol=1e-6)
  run_model = convert.load_pretrained(workdir)      # a train.py workdir reads back as a model
  assert run_model.config.img_size == 16 and run_model.config.num_classes == 10
  np.testing.assert_array_equal(run_model.pos_embed[...], flat["pos_embed"])
  printed = capsys.readouterr().out
  assert "init: new classifier head" in printed
  assert "init: pos_embed resized (1, 16, 16) -> (1, 4, 16)" in printed

"""Search pieces without training: top-k export, the file format, supernet layers, options,
held-out split slices, direction files in training configs, the scan-order picture."""
import json

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from localmamba_jax.models.local_vim.model import LocalVim, LocalVimConfig
from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from localmamba_jax.models.registry import load_directions
from localmamba_jax.ops.scan_orders import ALL_CHOICES, scan_order
from localmamba_jax.search import plots
from localmamba_jax.search.architecture import layer_probabilities, search_layers
from localmamba_jax.search.export import format_directions, top_k_directions, write_directions
from localmamba_jax.search.options import split_config
from localmamba_jax.training.data.sources import build_source
from localmamba_jax.training.model_factory import model_kwargs

from tests.search.test_search_loop import CONFIGS, load_config


def test_top_k_is_sorted_in_the_reference_order():
  p = np.array([0.05, 0.30, 0.10, 0.20, 0.02, 0.08, 0.15, 0.10])  # v ties w7_flip: v wins
  assert top_k_directions([p], [ALL_CHOICES], 4) == [["h_flip", "v", "v_flip", "w7"]]
  # ties go to the earlier candidate; other window sizes sort by size, plain before flip
  cands = ("w14", "w3_flip", "h", "w3", "v_flip")
  assert top_k_directions([np.full(5, 0.2)], [cands], 3) == [["h", "w3_flip", "w14"]]
  assert top_k_directions([[0.1, 0.2, 0.3, 0.25, 0.15]], [cands], 2) == [["h", "w3"]]
  with pytest.raises(ValueError, match="top_k=9"):
    top_k_directions([p], [ALL_CHOICES], 9)


def test_directions_file_round_trip_and_printout(tmp_path):
  rows = [["h", "v_flip", "w7", "w7_flip"], ["h_flip", "w2_flip", "w7", "w7_flip"]]
  path = str(tmp_path / "directions.json")
  write_directions(path, rows, [np.full(8, 0.125)] * 2, [ALL_CHOICES] * 2, top_k=4, step=7)
  record = json.load(open(path))
  assert record["candidates"] == list(ALL_CHOICES) and record["step"] == 7
  assert load_directions(path) == tuple(map(tuple, rows))
  assert format_directions(rows).splitlines() == ["['h', 'v_flip', 'w7', 'w7_flip'],",
                                                  "['h_flip', 'w2_flip', 'w7', 'w7_flip'],"]


@pytest.mark.parametrize("family", ["vmamba", "vim"])
def test_search_layers_follow_model_order_and_candidates(family):
  cands = ("h", "v", "w3", "w4_flip", "w14")
  if family == "vmamba":  # abstract models: a concrete init costs ~30 s on a busy CPU
    config = LocalVMambaConfig.tiny(dims=(8, 16), depths=(1, 2), directions=None,
                                    search_candidates=cands)
    model = nnx.eval_shape(lambda: LocalVMamba(config, rngs=nnx.Rngs(0)))
    expected = [("layers", 0, "blocks", 0, "op", "branch_merge", "weights"),
                ("layers", 1, "blocks", 0, "op", "branch_merge", "weights"),
                ("layers", 1, "blocks", 1, "op", "branch_merge", "weights")]
  else:
    config = LocalVimConfig.tiny_test(embed_dim=16, img_size=32, depth=3, directions=None,
                                      search_candidates=cands)
    model = nnx.eval_shape(lambda: LocalVim(config, rngs=nnx.Rngs(0)))
    expected = [("layers", i, "mixer", "multi_scan", "weights") for i in range(3)]
  layers = search_layers(model)
  assert [layer.path for layer in layers] == expected  # model order = the official key order
  assert all(layer.candidates == cands for layer in layers)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  for layer, p in zip(layers, layer_probabilities(params, layers)):
    logits = params
    for key in layer.path:
      logits = logits[key]
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)
  fixed = nnx.eval_shape(lambda: LocalVMamba(LocalVMambaConfig.tiny(), rngs=nnx.Rngs(0)))
  assert search_layers(fixed) == []


def test_search_options_are_checked():
  config = load_config(CONFIGS / "search_demo.py", "tiny")
  config.search.candidates = "h, v,w3 ,w14"
  train_config, options = split_config(config)
  assert "search" not in train_config and train_config.model.search_candidates == (
      "h", "v", "w3", "w14")
  bad = [("mode", "darts", "is not one of"), ("mode", "alternating", "needs config.search.arch"),
         ("candidates", "h,up", "Unknown scan direction 'up'")]
  for key, value, message in bad:
    config = load_config(CONFIGS / "search_demo.py", "tiny")
    config.search[key] = value
    with pytest.raises(ValueError, match=message):
      split_config(config)
  config = load_config(CONFIGS / "search_demo.py", "tiny")
  config.model.directions = (("h",), ("v",))
  with pytest.raises(ValueError, match="supernet"):
    split_config(config)


def test_percent_split_slices_are_disjoint_and_cover():
  inp = ml_collections.ConfigDict({"source": "digits", "train_split": "train"})
  first, second = build_source(inp, "train[:50%]"), build_source(inp, "train[50%:]")
  assert len(first) + len(second) == len(build_source(inp, "train"))
  key = lambda r: (r["image"].tobytes(), r["label"])
  assert not {key(first[i]) for i in range(len(first))} & {key(second[i]) for i in range(len(second))}
  with pytest.raises(ValueError, match="slices are written"):
    build_source(inp, "train[60%:20%]")


def _parse(config_file, *overrides):
  """The config as train.py's flags parse it (config_flags reads the overrides from argv)."""
  argv = ["train.py", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", str(config_file), flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_train_configs_take_a_direction_file_on_the_command_line(tmp_path):
  rows = [["h", "w2"], ["v", "w7_flip"]]
  path = str(tmp_path / "d.json")
  write_directions(path, rows, [np.full(8, 0.125)] * 2, [ALL_CHOICES] * 2, top_k=2, step=0)
  demo = _parse(f"{CONFIGS / 'demo.py'}:tiny", f"--config.model.directions={path}")
  assert model_kwargs(demo)["directions"] == (("h", "w2"), ("v", "w7_flip"))
  recipe = _parse(CONFIGS / "localvmamba_t.py", f"--config.model.directions={path}")
  assert model_kwargs(recipe)["directions"] == (("h", "w2"), ("v", "w7_flip"))
  assert "directions" not in model_kwargs(_parse(CONFIGS / "localvmamba_t.py"))  # registered


@pytest.mark.parametrize("grid", [(6, 6), (5, 7), (3, 9)])
def test_scan_picture_cells_are_the_scan_order(grid):
  for name in ALL_CHOICES + ("w3", "w4_flip", "w14"):
    (hp, wp), cells = plots.padded_cells(*grid, name)
    r, c = np.divmod(cells, wp)
    tokens = np.where((r < grid[0]) & (c < grid[1]), r * grid[1] + c, -1)
    np.testing.assert_array_equal(tokens, scan_order(*grid, name).gather, err_msg=name)


def test_alternating_mode_freezes_architecture_weights_in_the_network_optimizer():
  import optax
  from localmamba_jax.search.architecture import SearchLayer
  from localmamba_jax.search.hooks import make_search_hooks
  config = load_config(CONFIGS / "search_demo.py", "tiny")
  config.search.mode, config.search.arch_split = "alternating", "test"
  train_config, options = split_config(config)
  layers = [SearchLayer(("layers", 0, "op", "branch_merge", "weights"), ("h", "v"))]
  hooks = make_search_hooks(train_config, options, layers)
  params = {"layers": {0: {"op": {"branch_merge": {"weights": np.zeros(2, np.float32)},
                                  "in_proj": {"kernel": np.zeros((2, 2), np.float32)}}}}}
  tx = hooks.wrap_optimizer(optax.sgd(0.1))
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  op = updates["layers"][0]["op"]
  np.testing.assert_array_equal(op["branch_merge"]["weights"], 0.0)
  np.testing.assert_allclose(op["in_proj"]["kernel"], -0.1)
  assert [np.shape(x) for x in jax.tree.leaves(hooks.extra_state(params))] == [(), (2,), (2,)]

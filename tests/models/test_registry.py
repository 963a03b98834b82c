"""The registry: official names, exact parameter counts (no allocation), overrides, errors."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models import create_model, get_config, list_models, load_directions

# Counted on the instantiated official models (reference doc Sec. 4 and Sec. 9).
OFFICIAL_PARAM_COUNTS = {
    "local_vim_tiny": 7_994_152,
    "local_vim_tiny_middle_cls_token": 7_994_536,
    "local_vim_small": 27_783_784,
    "local_vim_tiny_search": 5_473_288,
    "local_vssm_tiny": 25_527_160,
    "local_vssm_small": 49_748_536,
    "local_vssm_tiny_search": 4_576_656,
}


def param_count(model_fn):
  abstract = nnx.eval_shape(model_fn)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("name,expected", sorted(OFFICIAL_PARAM_COUNTS.items()))
def test_parameter_counts_match_the_official_models(name, expected):
  assert param_count(lambda: create_model(name)) == expected


def test_every_registered_name_has_a_valid_config():
  for name in list_models():
    config = get_config(name, num_classes=10)
    assert config.num_classes == 10


def test_list_models_patterns():
  assert list_models("local_vssm*") == ["local_vssm_small", "local_vssm_small_search",
                                        "local_vssm_tiny", "local_vssm_tiny_search"]
  assert "local_vim_tiny_middle_cls_token" in list_models("*cls*")
  assert list_models("nothing*") == []


def test_searched_directions_are_the_official_lists():
  vim = get_config("local_vim_tiny").directions
  assert len(vim) == 20 and vim[0] == ("h", "v_flip", "w7", "w7_flip")
  assert vim[19] == ("v", "v_flip", "w2", "w2_flip")
  vssm_t = get_config("local_vssm_tiny").directions
  assert len(vssm_t) == 15 and vssm_t[13] == ("h_flip", "v_flip", "w2_flip", "w7_flip")
  vssm_s = get_config("local_vssm_small").directions
  assert len(vssm_s) == 33 and vssm_s[32] == ("h", "v", "w7", "w7_flip")
  # the registered local_vim_small is the hand-picked second definition (reference Sec. 10.4)
  assert set(get_config("local_vim_small").directions) == {("h", "h_flip", "w2", "w2_flip")}
  assert get_config("local_vim_small_searched").directions == vim


def test_overrides_and_direction_files(tmp_path):
  config = get_config("local_vssm_tiny", num_classes=10, drop_path_rate=0.3)
  assert config.num_classes == 10 and config.drop_path_rate == 0.3
  rows = [["h", "v"]] * 15
  path = tmp_path / "dirs.json"
  path.write_text(json.dumps({"directions": rows}))
  assert get_config("local_vssm_tiny", directions=str(path)).directions[0] == ("h", "v")
  assert load_directions(path) == tuple(tuple(r) for r in rows)
  model = create_model("local_vssm_tiny", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
                       directions=[["h", "w2"]] * 4, num_classes=3, rngs=nnx.Rngs(1))
  model.eval()
  logits = nnx.jit(lambda m, x: m(x))(model, np.zeros((1, 32, 32, 3), np.float32))
  assert logits.shape == (1, 3) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("call,fragment", [
    (lambda: create_model("local_vssm_tiniest"), "Unknown model 'local_vssm_tiniest'.*local_vssm_tiny"),
    (lambda: get_config("local_vim_tiny", widht=3), r"Unknown option\(s\) \['widht'\]"),
    (lambda: get_config("local_vssm_tiny", directions=[["h", "v"]] * 14), "15 blocks"),
    (lambda: get_config("local_vim_tiny", directions=[["h", "x"]] * 20), "Unknown scan direction 'x'"),
    (lambda: get_config("local_vim_tiny", directions="/nonexistent/dirs.json"), "does not exist"),
])
def test_bad_requests(call, fragment):
  with pytest.raises(ValueError, match=fragment):
    call()


def test_bad_direction_file(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text('{"directions": "h"}')
  with pytest.raises(ValueError, match="non-empty list"):
    load_directions(path)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    load_directions(path)

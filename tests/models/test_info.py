"""FLOPs and parameter counts (models/flops.py, models/info.py).

The jaxpr counter is checked op by op against hand counts, then on small LocalVMamba and
LocalVim configs against an independent closed-form count of the same rules, and the
registered models against the published numbers (reference doc Sec. 9; 2 % tolerance,
the README rounds to 0.1G). Everything is traced on abstract inputs: nothing is allocated.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models import flops, get_config, info
from localmamba_jax.models.local_vim import LocalVimConfig
from localmamba_jax.models.local_vmamba import LocalVMambaConfig
from localmamba_jax.ops import selective_scan, stacked_scan_orders

f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
count = lambda fn, *args: flops.count_jaxpr_flops(jax.make_jaxpr(fn)(*args))


# ---- the counter, op by op -----------------------------------------------------------------

def test_dot_general_and_conv_count_multiply_adds():
  # [b=2, L=5, K=3, i=4] x [K, i, o=6]: 2*5*3*6 outputs, 4 multiply-adds each
  assert count(lambda x, w: jnp.einsum("blki,kio->blko", x, w),
               f32(2, 5, 3, 4), f32(3, 4, 6)).matmul == 2 * 5 * 3 * 6 * 4
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4)
  # depthwise-style 3x3 conv, 8 -> 8 channels in 4 groups: 2 inputs per group
  assert count(conv, f32(1, 6, 5, 8), f32(3, 3, 2, 8)).conv == 6 * 5 * 8 * (3 * 3 * 2)


def test_loops_nested_calls_and_branches():
  def body(h, x):
    return h @ x, None                                         # 4x4 @ 4x4 = 64 MACs
  looped = lambda h, xs: jax.lax.scan(body, h, xs)[0]
  assert count(looped, f32(4, 4), f32(7, 4, 4)).matmul == 7 * 64
  nested = jax.jit(lambda a, b: jax.checkpoint(lambda a: a @ b)(a))
  assert count(nested, f32(3, 5), f32(5, 2)).matmul == 3 * 5 * 2
  branches = lambda p, a: jax.lax.cond(p, lambda a: a @ a, lambda a: a, a)
  assert count(branches, jax.ShapeDtypeStruct((), jnp.bool_), f32(3, 3)).matmul == 27
  with pytest.raises(ValueError, match="while loop"):
    count(lambda x: jax.lax.while_loop(lambda v: v.sum() < 1, lambda v: v @ v, x), f32(2, 2))


def test_norms_count_five_per_element():
  layer, rms = nnx.LayerNorm(16, rngs=nnx.Rngs(0)), nnx.RMSNorm(16, rngs=nnx.Rngs(0))
  x = f32(2, 7, 16)
  assert count(lambda x: layer(x), x) == flops.FlopCount(norm=5 * 2 * 7 * 16)
  assert count(lambda x: rms(x), x) == flops.FlopCount(norm=5 * 2 * 7 * 16)
  assert count(lambda x: jax.nn.softmax(x) * jnp.exp(x), x).total == 0   # elementwise: free


@pytest.mark.parametrize("impl", ["reference", "associative"])
def test_selective_scan_is_counted_by_formula_and_only_once(impl):
  batch, length, channels, groups, state = 2, 9, 12, 3, 4
  args = (f32(batch, length, channels), f32(batch, length, channels), f32(channels, state),
          f32(batch, length, groups, state), f32(batch, length, groups, state), f32(channels),
          f32(batch, length, channels), f32(channels))
  scan = functools.partial(selective_scan, delta_softplus=True, impl=impl, chunk_size=4)
  expected = 9 * batch * length * channels * state + batch * channels * length
  assert expected == flops.selective_scan_flops(batch, length, channels, state)
  assert count(scan, *args) == flops.FlopCount(scan=expected)
  # two calls with the same shapes are two scans
  assert count(lambda *a: scan(*a) + scan(*a), *args).scan == 2 * expected


# ---- small models against closed-form counts -----------------------------------------------

def vmamba_closed_form(cfg: LocalVMambaConfig, size: int) -> int:
  """fvcore rules on the LocalVMamba forward (x_proj/dt_proj on the H*W spatial tokens)."""
  n = cfg.d_state
  h = w = size // cfg.patch_size
  c0 = cfg.dims[0]
  total = h * w * c0 * cfg.in_chans * cfg.patch_size ** 2 + 5 * h * w * c0     # embed + LN
  block = 0
  for s, (c, depth) in enumerate(zip(cfg.dims, cfg.depths)):
    e, r = cfg.inner_dim(s), cfg.stage_dt_rank(s)
    hw = h * w
    for _ in range(depth):
      dirs = cfg.block_directions(block)
      k, lmax = len(dirs), stacked_scan_orders(h, w, dirs).max_length
      total += 5 * hw * c + hw * c * 2 * e + hw * e * cfg.d_conv ** 2           # norm, in, conv
      total += hw * k * e * (r + 2 * n) + hw * k * r * e                        # x/dt proj
      total += 9 * lmax * k * e * n + lmax * k * e                              # scan
      total += 5 * hw * k * e + k * 2 * e * int(e * 0.125)                      # SCAttn
      total += (k * hw * e if cfg.is_search else 0)                             # merge einsum
      total += (5 * hw * k * e if cfg.is_search else 0)                         # merge LN
      total += 5 * hw * e + hw * e * c                                          # out_norm, proj
      block += 1
    if s + 1 < len(cfg.dims):
      h, w = math.ceil(h / 2), math.ceil(w / 2)
      total += 5 * h * w * 4 * c + h * w * 4 * c * cfg.dims[s + 1]              # merging
  return total + 5 * h * w * cfg.dims[-1] + cfg.dims[-1] * cfg.num_classes      # norm + head


def vim_closed_form(cfg: LocalVimConfig, size: int) -> int:
  """The same rules on LocalVim (its causal conv1d is elementwise here, so not counted)."""
  d, e, r, n = cfg.embed_dim, cfg.inner_dim, cfg.dt_rank, cfg.d_state
  grid = size // cfg.patch_size
  length = grid * grid + int(cfg.middle_cls_token)
  total = grid * grid * d * cfg.in_chans * cfg.patch_size ** 2
  for layer in range(cfg.depth):
    k = len(cfg.layer_directions(layer))
    lmax = stacked_scan_orders(grid, grid, cfg.layer_directions(layer)).max_length
    lmax += int(cfg.middle_cls_token)
    total += 5 * length * d + length * d * 2 * e                                # norm, in_proj
    total += lmax * k * e * (r + 2 * n) + lmax * k * r * e                      # x/dt proj
    total += 9 * lmax * k * e * n + lmax * k * e                                # scan
    total += 5 * length * k * e + k * 2 * e * int(e * 0.125) + length * e * d   # SCAttn, out
    total += (k * length * e + 5 * length * k * e if cfg.search else 0)         # search merge
  return total + 5 * length * d + d * cfg.num_classes


@pytest.mark.parametrize("name,overrides,size", [
    ("local_vssm_tiny", dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1),
                             directions=[["h", "w2_flip"], ["v", "w7"], ["h_flip", "v_flip", "w2"],
                                         ["w7_flip"], ["h", "w2_flip"]], num_classes=7), 64),
    ("local_vssm_tiny_search", dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
                                    num_classes=5), 96),   # 3x3 last stage: w2 pads to 4x4
])
def test_local_vmamba_counts_match_the_closed_form(name, overrides, size):
  model = flops.abstract_model(name, **overrides)
  assert flops.traced_flops(model, size).total == vmamba_closed_form(model.config, size)


def test_local_vmamba_counts_its_depthwise_conv_whichever_form_runs():
  """The shifted depthwise conv (ops/depthwise_conv.py) counts as the conv it replaces:
  the same traced FLOPs as with lax.conv_general_dilated, conv column included; "pallas_gpu"
  (XLA's conv inside the named call when no derivative is taken) counts it once too."""
  counts = {impl: flops.traced_flops(flops.abstract_model(
      "local_vssm_tiny_search", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_classes=7,
      depthwise_conv_impl=impl), 64) for impl in ("shifted", "lax", "pallas_gpu")}
  assert counts["shifted"] == counts["lax"] == counts["pallas_gpu"]
  patch_embedding = 16 * 16 * 8 * 3 * 4 * 4                     # 64 / 4 = 16, dims[0] = 8
  depthwise = sum(side * side * 2 * dim * 9 for side, dim in zip((16, 8, 4, 2), (8, 16, 32, 64)))
  assert counts["shifted"].conv == patch_embedding + depthwise


@pytest.mark.parametrize("overrides", [
    dict(), dict(directions=None), dict(rope=False, middle_cls_token=True)])
def test_local_vim_counts_match_the_closed_form(overrides):
  model = flops.abstract_model("local_vim_tiny", **{**dict(
      embed_dim=32, depth=2, img_size=64, num_classes=10,
      directions=(("h", "v_flip", "w2", "w7_flip"), ("h_flip", "v", "w2_flip", "w7"))),
      **overrides})
  assert flops.traced_flops(model, 64).total == vim_closed_form(model.config, 64)


# ---- the registered models against the published numbers ----------------------------------

def test_official_local_vim_formula_by_hand():
  # VisionMamba.flops at 224, D=192, E=384, R=12, N=16, L=196, K=4, 20 layers, by hand:
  # embed 28,901,376 + 20 * 72,633,600 + head 192,000
  assert flops.official_local_vim_flops(get_config("local_vim_tiny")) == 1_481_765_376
  assert flops.official_local_vim_flops(get_config("local_vim_small")) == 4_771_341_312
  for name, published in (("local_vim_tiny", 1.5e9), ("local_vim_small", 4.8e9),
                          ("local_vim_tiny_middle_cls_token", 1.5e9)):
    assert abs(flops.official_local_vim_flops(get_config(name)) / published - 1) < 0.02


def test_published_local_vmamba_flops_and_params():
  # one test for the two full models: tracing them takes ~10-25 s each on a busy CPU
  for name, published_flops, params in (("local_vssm_tiny", 5.7e9, 25_527_160),
                                        ("local_vssm_small", 11.4e9, 49_748_536)):
    result = flops.model_info(name, 224)
    assert result.params == params
    assert result.paper_flops == result.traced.total
    assert abs(result.paper_flops / published_flops - 1) < 0.02, (name, result.paper_flops)


# ---- the command ---------------------------------------------------------------------------

def test_command_prints_a_table(monkeypatch, capsys):
  fake = lambda name, resolution, **kw: flops.ModelInfo(
      name, "local_vmamba", (resolution, resolution), 1_500_000,
      flops.FlopCount(matmul=2_000_000_000, scan=500_000_000), 2_500_000_000, "fvcore")
  monkeypatch.setattr(flops, "model_info", fake)
  assert info.main(["--model", "local_vssm_*", "--resolution", "256"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].split()[:4] == ["model", "resolution", "params", "FLOPs"]
  assert len(out) == 2 + 4 and "256x256" in out[2] and "2.500G" in out[2] and "1.500M" in out[2]


@pytest.mark.parametrize("argv,fragment", [
    (["--model", "local_vssm_tiniest"], "Unknown model 'local_vssm_tiniest'"),
    (["--model", "local_vssm_tiny", "--resolution", "0"], "--resolution must be"),
])
def test_command_errors(argv, fragment, capsys):
  with pytest.raises(SystemExit) as exit_info:
    info.main(argv)
  assert exit_info.value.code == 2 and fragment in capsys.readouterr().err

"""Pallas kernels under a device mesh run once per batch shard (kernels.common.shard_over_batch).

An opaque custom call makes XLA's SPMD partitioner gather sharded operands and run the kernel
on the whole global batch on every device; on the 2-GPU machine the data-parallel LocalVMamba-T
step then asked for one 56 GiB allocation (BENCHMARKS.md). Runs in a subprocess with 4
simulated CPU devices (the device count must be set before jax starts); the GPU kernel runs
in interpret mode (and the TPU kernel's fused op in TPU interpret mode). Checks, for the
plain and the fused multi-direction op, for SCAttn's row kernels
(layers.scattn.gated_branch_sum), the residual stream's LayerNorm backward
(layers.norms.KernelGradLayerNorm) and the depthwise conv's backward (impl="pallas_gpu"),
under `jax.set_mesh`: the lowered program contains a shard_map (manual computation) around the
kernel, and values and gradients (incl. the replicated parameters, whose gradients shard_map
sums over the shards) equal the unsharded reference within float32 tolerance; also with the
scan-order tables passed as data (`tables=`, LocalVMamba's scan_blocks), replicated.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(r"""
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from localmamba_jax.ops import multi_direction_selective_scan, selective_scan

  assert jax.device_count() == 4, jax.devices()
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  b, hw, k, e, n = 4, (3, 5), 2, 8, 4
  tokens = hw[0] * hw[1]
  args = dict(u=f(b, tokens, e), delta=0.5 * f(b, tokens, k, e), A=-jnp.exp(f(k, e, n)),
              B=f(b, tokens, k, n), C=f(b, tokens, k, n), D=f(k, e), bias=f(k, e))
  w = f(b, tokens, k, e)
  plain = dict(u=f(b, 11, 16), delta=0.5 * f(b, 11, 16), A=-jnp.exp(f(16, n)),
               B=f(b, 11, 2, n), C=f(b, 11, 2, n), D=f(16), bias=f(16), z=f(b, 11, 16))
  wp = f(b, 11, 16)

  def fused(impl):
    def loss(a):
      y = multi_direction_selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                         a["bias"], grid_hw=hw, directions=("h_flip", "w2"),
                                         impl=impl)
      return jnp.sum(y * w), y
    return loss

  from localmamba_jax.ops.scan_orders import stacked_scan_orders
  data_orders = stacked_scan_orders(hw[0], hw[1], ("v", "h_flip"))

  def fused_tables(impl):
    # the tables of ("v", "h_flip") passed as data to a call built for ("v_flip", "h"), as
    # LocalVMamba's scan_blocks does (on this 3x5 grid both v merges are the official
    # non-inverse one: the same table layout); the reference computes ("v", "h_flip") directly
    def loss(a):
      directions = ("v", "h_flip") if impl == "reference" else ("v_flip", "h")
      tables = None if impl == "reference" else (jnp.asarray(data_orders.gather),
                                                  jnp.asarray(data_orders.merge))
      y = multi_direction_selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                         a["bias"], grid_hw=hw, directions=directions,
                                         impl=impl, tables=tables)
      return jnp.sum(y * w), y
    return loss

  def flat(impl):
    def loss(a):
      y = selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["bias"],
                         delta_softplus=True, impl=impl)
      return jnp.sum(y * wp), y
    return loss

  from flax import nnx
  from localmamba_jax.layers.branch_merge import BranchMerge
  from localmamba_jax.layers.scattn import SCAttn, gated_branch_sum
  attn_module = SCAttn(8, rngs=nnx.Rngs(0))
  w_gate = f(b, 6, 8)

  def gate_sum(impl):
    # SCAttn with the branch sum through the row kernels (ops/kernels/row_norm_gpu.py)
    def loss(a):
      y = (BranchMerge(2)(attn_module(a["y"])) if impl == "reference"
           else gated_branch_sum(attn_module, a["y"]))
      return jnp.sum(y * w_gate), y
    return loss

  from localmamba_jax.layers.norms import _kernel_grad_layer_norm, layer_norm
  w_norm = f(b, 6, 8)

  def norm(impl):
    # a residual-stream LayerNorm with the Pallas backward (row_norm_gpu.layer_norm_grad):
    # its d_scale / d_bias partial sums come back per shard
    def loss(a):
      if impl == "reference":
        module = layer_norm(8, rngs=nnx.Rngs(0))
        module.scale[...], module.bias[...] = a["scale"], a["bias"]
        y = module(a["x"])
      else:
        y = _kernel_grad_layer_norm(a["x"], a["scale"], a["bias"], 1e-5, jnp.dtype("float32"))
      return jnp.sum(y * w_norm), y
    return loss

  from localmamba_jax.ops.depthwise_conv import depthwise_conv2d
  w_conv = f(b, 5, 6, 8)

  def conv(impl):
    # the mixer's depthwise conv with its backward kernel (depthwise_conv_gpu): d kernel and
    # d bias partial sums come back per shard
    def loss(a):
      y = depthwise_conv2d(a["x"], a["kernel"], a["bias"],
                           impl="lax" if impl == "reference" else "pallas_gpu")
      return jnp.sum(y * w_conv), y
    return loss

  out = {}
  for name, make, inputs, kernel in (("depthwise_conv", conv,
                                      {"x": f(b, 5, 6, 8), "kernel": f(3, 3, 1, 8),
                                       "bias": f(8)}, "kernel"),
                                     ("layer_norm_rows", norm,
                                      {"x": f(b, 6, 8), "scale": f(8), "bias": f(8)}, "rows"),
                                     ("scattn_rows", gate_sum, {"y": f(b, 6, 2, 8)}, "rows"),
                                     ("fused", fused, args, "pallas_gpu"),
                                     ("plain", flat, plain, "pallas_gpu"),
                                     ("fused_tpu", fused, args, "pallas_tpu"),
                                     ("fused_tables", fused_tables, args, "pallas_gpu")):
    grad_ref, y_ref = jax.grad(make("reference"), has_aux=True)(inputs)
    with jax.set_mesh(mesh):
      batch_sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data")) if v.shape[0] == b
                                         and v.ndim >= 3 else NamedSharding(mesh, P()))
                       for k, v in inputs.items()}
      step = jax.jit(jax.grad(make(kernel), has_aux=True))
      text = step.lower(batch_sharded).as_text()
      grad, y = step(batch_sharded)
    rel = lambda a, r: float(jnp.linalg.norm(a - r) / jnp.linalg.norm(r))
    out[name] = dict(manual="manual_computation" in text or "SPMDFullToShardShape" in text,
                     out=rel(y, y_ref), grads={k: rel(grad[k], grad_ref[k]) for k in grad})
  print(json.dumps(out))
""")


def test_kernels_run_per_batch_shard_under_a_mesh():
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                          "--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, result in out.items():
    assert result["manual"], f"{name}: no shard_map around the kernel in the lowered program"
    assert result["out"] < 1e-5, (name, result)
    for arg, err in result["grads"].items():
      assert err < 1e-4, (name, arg, err)

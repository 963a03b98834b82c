"""Where the shifted depthwise conv's time goes on a GPU, and other ways to write its backward.

    PYTHONPATH=. python benchmarks/bench_depthwise_conv_variants.py [--batch 128]

bf16, the four stage shapes of LocalVMamba-T/S. Rows (median ms over --iters runs):
  fwd           forward only (shifted / lax)
  fwd+dx        forward and the input gradient only (shifted / lax)
  full          forward and all gradients, as ops/depthwise_conv.py (shifted / lax)
  autodiff      the shifted forward differentiated by JAX (no custom_vjp): dk as k*k reductions
  taps          custom_vjp, dk as k*k separate sums instead of one stacked reduction
  batch_first   custom_vjp, the stacked dk reduced over the batch axis first, then H, W
The variants are written here for measurement only; the library keeps one form.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from depthwise_conv_stages import STAGES, add_arguments, append_rows, stage_inputs
from localmamba_jax.ops import depthwise_conv as dc


def _plain_forward(x, kernel, bias, out_dtype):
  return (dc._tap_sum(x, kernel, flip=False) + bias.astype(jnp.float32)).astype(out_dtype)


def _variant_conv(dk_form):
  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def conv(x, kernel, bias, out_dtype):
    return _plain_forward(x, kernel, bias, out_dtype)

  def fwd(x, kernel, bias, out_dtype):
    return conv(x, kernel, bias, out_dtype), (x, kernel, bias)

  def bwd(out_dtype, res, grad):
    x, kernel, bias = res
    height, width = x.shape[1:3]
    g = grad.astype(jnp.float32)
    grad_x = dc._tap_sum(grad, kernel, flip=True).astype(x.dtype)
    padded = dc._pad_same(x.astype(jnp.float32), kernel)
    taps = [padded[:, i:i + height, j:j + width, :] * g for i, j in dc._taps(kernel)]
    if dk_form == "taps":
      dk = jnp.stack([t.sum(axis=(0, 1, 2)) for t in taps])
    else:   # batch_first
      dk = jnp.stack(taps, axis=3).sum(axis=0).sum(axis=(0, 1))
    dk = dk.reshape(kernel.shape).astype(kernel.dtype)
    return grad_x, dk, g.sum(axis=(0, 1, 2)).astype(bias.dtype)

  conv.defvjp(fwd, bwd)
  return conv


def _full(conv):
  def loss(x, kernel, bias, cot):
    return jnp.sum(conv(x, kernel, bias).astype(jnp.float32) * cot)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _timed(fn, args, iters):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main():
  parser = argparse.ArgumentParser()
  add_arguments(parser, iters=30)
  args = parser.parse_args()
  bf16 = jnp.bfloat16
  shifted = lambda x, k, b: dc.depthwise_conv2d(x, k, b, dtype=bf16, impl="shifted")
  lax = lambda x, k, b: dc.depthwise_conv2d(x, k, b, dtype=bf16, impl="lax")
  autodiff = lambda x, k, b: _plain_forward(x.astype(bf16), k.astype(bf16), b.astype(bf16), bf16)
  taps = lambda x, k, b: _variant_conv("taps")(x, k.astype(bf16), b.astype(bf16), bf16)
  batch_first = lambda x, k, b: _variant_conv("batch_first")(x, k.astype(bf16), b.astype(bf16),
                                                              bf16)
  rows = []
  for grid, channels in STAGES:
    shape, x, kernel, bias, cot = stage_inputs(args.batch, grid, channels)
    x = x.astype(bf16)
    cases = {}
    for name, conv in (("shifted", shifted), ("lax", lax)):
      cases[f"fwd {name}"] = jax.jit(conv)
      cases[f"fwd+dx {name}"] = jax.jit(jax.grad(
          lambda x, k, b, c, conv=conv: jnp.sum(conv(x, k, b).astype(jnp.float32) * c)))
    for name, conv in (("shifted", shifted), ("lax", lax), ("autodiff", autodiff), ("taps", taps),
                       ("batch_first", batch_first)):
      cases[f"full {name}"] = _full(conv)
    reference = None
    for name, fn in cases.items():
      call_args = (x, kernel, bias) if name.startswith("fwd ") else (x, kernel, bias, cot)
      start = time.perf_counter()
      compiled = fn.lower(*call_args).compile()
      compile_s = time.perf_counter() - start
      ms = _timed(compiled, call_args, args.iters)
      row = dict(shape=list(shape), case=name, ms=round(ms, 4), compile_s=round(compile_s, 2),
                 device=jax.devices()[0].device_kind, jax=jax.__version__)
      if name.startswith("full "):
        grads = [np.asarray(g, np.float32) for g in compiled(*call_args)]
        reference = reference or grads
        row["max_rel_diff_vs_first"] = [float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                                        for a, b in zip(grads, reference)]
      rows.append(row)
      print(json.dumps(row), flush=True)
  append_rows(args.results, rows)


if __name__ == "__main__":
  main()

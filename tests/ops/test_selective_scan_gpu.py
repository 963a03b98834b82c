"""The Pallas GPU selective scan, run in Pallas interpret mode on the CPU.

Values and gradients (u, delta, A, B, C, D, delta_bias, z) against the float64 pure-JAX
reference, in plain order (L not a multiple of the chunk) and with the scan order fused in
(window pads = decay-only steps; the exact-merge path and the official non-inverse v merge on a
non-square grid), and against the golden cases of the official selective scan. The kernels run
with chunk=2 to keep interpret-mode compile times small; the GPU numbers are in BENCHMARKS.md.
Tolerances: the kernel computes in float32, so relative L2 errors against float64 are ~1e-7;
we require < 2e-5 (values) and < 1e-4 (gradients).
"""
from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localmamba_jax.ops import multi_direction_selective_scan, selective_scan
from localmamba_jax.ops.kernels import common as kernels_common
from localmamba_jax.ops.kernels import selective_scan_gpu
from localmamba_jax.ops.selective_scan import resolve_impl

OUT_TOL, GRAD_TOL = 2e-5, 1e-4
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def rel_err(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def value_and_grads(fn, args, weight):
  out = fn(*args)
  grads = jax.grad(lambda a: jnp.sum(fn(*a) * weight))(tuple(args))
  return out, grads


def float64_reference(fn, args, weight):
  with jax.enable_x64():
    args64 = [None if a is None else jnp.asarray(np.asarray(a, np.float64)) for a in args]
    out, grads = value_and_grads(fn, args64, jnp.asarray(np.asarray(weight, np.float64)))
    return np.asarray(out), [None if g is None else np.asarray(g) for g in grads]


def assert_matches(fn_kernel, fn_reference, args, weight, names):
  out, grads = value_and_grads(fn_kernel, args, weight)
  assert np.all(np.isfinite(np.asarray(out))), "unwritten (NaN-poisoned) outputs"
  ref_out, ref_grads = float64_reference(fn_reference, args, weight)
  assert rel_err(out, ref_out) < OUT_TOL
  for name, grad, ref in zip(names, grads, ref_grads):
    if ref is None:
      continue
    assert grad.shape == ref.shape, name
    assert rel_err(grad, ref) < GRAD_TOL, f"gradient of {name}: {rel_err(grad, ref):.2e}"


def random_inputs(rng, batch, length, channels, groups, num_state, with_z):
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return dict(
      u=f32(rng.standard_normal((batch, length, channels))),
      delta=f32(0.5 * rng.standard_normal((batch, length, channels))),
      A=f32(-np.exp(0.5 * rng.standard_normal((channels, num_state)))),
      B=f32(rng.standard_normal((batch, length, groups, num_state))),
      C=f32(rng.standard_normal((batch, length, groups, num_state))),
      D=f32(rng.standard_normal(channels)),
      delta_bias=f32(0.3 * rng.standard_normal(channels)),
      z=f32(rng.standard_normal((batch, length, channels))) if with_z else None)


@pytest.mark.parametrize("checkpoint_every,keep_decay,lean,keep_dl,poly_softplus", [
    (2, False, False, False, False),  # one saved state per chunk (recompute straight from it)
    (6, True, False, False, True),    # 3 chunks per saved state: sub-checkpoints rebuilt in
                                      # the backward; decays kept for the adjoint; the series
                                      # softplus
    (2, False, True, False, False),   # lean backward schedule: the adjoint reloads each step
    (6, True, True, True, False),     # ... and reuses the recompute's Delta
])
def test_plain_order_matches_float64_reference_values_and_gradients(checkpoint_every,
                                                                    keep_decay, lean, keep_dl,
                                                                    poly_softplus):
  # L = 11 is not a multiple of the chunk (2) nor of the checkpoint interval: the tail steps
  # must be identities. (sfu=True only changes the GPU lowering; bench_selective_scan --check
  # covers it on the GPU.)
  rng = np.random.default_rng(0)
  inputs = random_inputs(rng, batch=2, length=11, channels=16, groups=2, num_state=4,
                         with_z=True)
  args = [inputs[k] for k in NAMES]

  def kernel(u, delta, A, B, C, D, bias, z):
    return selective_scan_gpu.selective_scan_pallas(
        u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk=2,
        checkpoint_every=checkpoint_every, keep_decay=keep_decay, lean=lean, keep_dl=keep_dl,
        poly_softplus=poly_softplus, interpret=True)

  def reference(u, delta, A, B, C, D, bias, z):
    return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, impl="reference")

  weight = rng.standard_normal((2, 11, 16))
  assert_matches(kernel, reference, args, weight, NAMES)


# Scans read through a table take the series softplus by default (poly_softplus), so these
# cases check it, pads included; the plain-order cases above check both forms.
@pytest.mark.parametrize("grid_hw,directions,exact,checkpoint_every,lean,options", [
    ((3, 5), ("h_flip", "w2"), True, 2, True, {}),    # interior window pads, merge ==
                                                      # inverse: fused write (lean backward)
    ((3, 5), ("v", "w2_flip"), False, 4, False, {}),  # official v merge is not the inverse
                                                      # for H != W
    ((3, 5), ("w2_flip", "v"), False, 4, True, {}),   # lean, non-inverse merge
    ((3, 5), ("w2", "h_flip"), True, 4, True,         # lean with chunk 4: table entries
     dict(chunk=4)),                                  # inside the unrolled loop
])
def test_fused_scan_order_matches_gather_scan_merge(grid_hw, directions, exact,
                                                    checkpoint_every, lean, options):
  from localmamba_jax.ops.scan_orders import stacked_scan_orders
  orders = stacked_scan_orders(*grid_hw, directions)
  assert kernels_common.merge_is_inverse(orders.gather, orders.merge) == exact
  rng = np.random.default_rng(1)
  k, e, n = len(directions), 8, 4
  tokens = grid_hw[0] * grid_hw[1]
  flat = random_inputs(rng, 2, tokens, k * e, k, n, with_z=False)
  args = [flat["u"][:, :, :e],                                  # one u shared by the K branches
          flat["delta"].reshape(2, tokens, k, e), flat["A"].reshape(k, e, n), flat["B"],
          flat["C"], flat["D"].reshape(k, e), flat["delta_bias"].reshape(k, e)]
  names = ("u", "delta", "A", "B", "C", "D", "delta_bias")

  def kernel(u, delta, A, B, C, D, bias):
    return selective_scan_gpu.multi_direction_scan_pallas(
        u, delta, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge,
        **{"chunk": 2, **options}, checkpoint_every=checkpoint_every, keep_decay=True, lean=lean,
        interpret=True)

  def reference(u, delta, A, B, C, D, bias):
    return multi_direction_selective_scan(u, delta, A, B, C, D, bias, grid_hw=grid_hw,
                                          directions=directions, impl="reference")

  weight = rng.standard_normal((2, tokens, k, e))
  assert_matches(kernel, reference, args, weight, names)


def test_golden_selective_scan_case_with_pads(golden_npz, golden_json):
  """ss_L64_pad: the official kernel's outputs and gradients (4 groups, zero tail from 49)."""
  data = golden_npz("selective_scan_cases.npz")
  meta = golden_json("selective_scan_cases.json")["ss_L64_pad"]
  case = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("ss_L64_pad.")}
  # official layout: u/delta/out (b, d, l), B/C (b, G, N, L) -> ours: channels-last.
  to_ours = lambda x: jnp.asarray(np.swapaxes(x, 1, 2))
  bc = lambda x: jnp.asarray(np.transpose(x, (0, 3, 1, 2)))
  args = [to_ours(case["u"]), to_ours(case["delta"]), jnp.asarray(case["A"]), bc(case["B"]),
          bc(case["C"]), jnp.asarray(case["D"]), jnp.asarray(case["delta_bias"])]
  assert meta["delta_softplus"] is True

  def kernel(u, delta, A, B, C, D, bias):
    return selective_scan_gpu.selective_scan_pallas(
        u, delta, A, B, C, D, None, bias, delta_softplus=True, return_last_state=True,
        chunk=2, interpret=True)

  (out, last), vjp = jax.vjp(kernel, *args)
  grads = vjp((to_ours(case["dout"]), jnp.zeros_like(last)))
  np.testing.assert_allclose(out, to_ours(case["out"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(last, case["last_state"], rtol=1e-5, atol=1e-5)
  expected = [to_ours(case["grad_u"]), to_ours(case["grad_delta"]), case["grad_A"],
              bc(case["grad_B"]), bc(case["grad_C"]), case["grad_D"], case["grad_delta_bias"]]
  for name, grad, ref in zip(NAMES, grads, expected):
    assert rel_err(grad, ref) < GRAD_TOL, name


@pytest.mark.parametrize("chunk,checkpoint_every,expected_segments", [
    (8, 8, 13), (8, 32, 4), (4, 16, 7), (8, None, 13), (128, 512, 1)])
def test_saved_states_follow_checkpoint_every(chunk, checkpoint_every, expected_segments):
  """The backward's residual states: [b, ceil(L / checkpoint_every), C, N] fp32 (L = 100)."""
  rng = np.random.default_rng(3)
  inputs = random_inputs(rng, batch=2, length=100, channels=16, groups=2, num_state=4,
                         with_z=False)
  args = [inputs[k] for k in NAMES[:7]]
  kernel = lambda *a: selective_scan_gpu.selective_scan_pallas(
      *a[:5], a[5], None, a[6], delta_softplus=True, chunk=chunk,
      checkpoint_every=checkpoint_every, interpret=True)
  _, vjp_fn = jax.eval_shape(lambda *a: jax.vjp(kernel, *a), *args)
  states = [leaf for leaf in jax.tree.leaves(vjp_fn) if leaf.shape[-2:] == (16, 4)
            and leaf.ndim == 4]
  assert [s.shape for s in states] == [(2, expected_segments, 16, 4)]


def test_series_softplus_matches_float64():
  """_log1p_unit's series in the softplus: as close to float64 as log1p(exp(x)) in float32,
  over the range float32's exp covers (both give 0 below about -87)."""
  cfg = types.SimpleNamespace(poly_softplus=True, interpret=True, sfu=True, fma=True)
  x = np.concatenate([np.linspace(-80.0, 30.0, 200001), [0.0, 20.0, 21.0, 50.0]])
  x = x.astype(np.float32)
  exact = np.logaddexp(x.astype(np.float64), 0.0)
  got = np.asarray(selective_scan_gpu._softplus(jnp.asarray(x), cfg), np.float64)
  assert np.max(np.abs(got - exact) / exact) < 5e-7
  assert got[-1] == np.float32(50.0)


def test_dispatch_and_errors():
  # "auto" uses the kernel only on a GPU; the CPU keeps the pure-JAX path.
  assert resolve_impl("auto", kernel_supported=True) == (
      "pallas_gpu" if selective_scan_gpu.on_gpu() else "associative")
  assert resolve_impl("auto", kernel_supported=False) == "associative"
  assert selective_scan_gpu.is_supported(768, 4, 16, [jnp.float32, jnp.bfloat16])
  assert not selective_scan_gpu.is_supported(768, 4, 12)          # N not a power of two
  assert not selective_scan_gpu.is_supported(12, 4, 16)           # 3 channels per group
  assert not selective_scan_gpu.is_supported(768, 4, 16, [np.float64])
  x = jnp.zeros((1, 4, 8), jnp.float32)
  a = -jnp.ones((8, 16), jnp.float32)
  bc = jnp.ones((1, 4, 1, 16), jnp.float32)
  with pytest.raises(ValueError, match="dtype"):
    selective_scan_gpu.selective_scan_pallas(x.astype(jnp.float16).astype(jnp.int32), x, a, bc,
                                             bc, interpret=True)
  with pytest.raises(ValueError, match="power of two"):
    selective_scan_gpu.selective_scan_pallas(x, x, a[:, :12], bc[..., :12], bc[..., :12],
                                             interpret=True)
  with pytest.raises(ValueError, match="multiple of chunk"):
    selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, chunk=2, checkpoint_every=3,
                                             interpret=True)
  with pytest.raises(ValueError, match="exactly once"):
    selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, read_index=np.array([[0, 0, 1, 2]]),
                                             interpret=True)


def test_lean_schedule_default_follows_the_measurements():
  """Lean backward for long scans and the shortest indexed ones (stage 4, under the register
  cap); the batched schedule for indexed scans in between and for plain-order scans shorter
  than 512 steps (LocalVim; the H100 measurements in BENCHMARKS.md, sessions 5, 7 and 8)."""
  lean = selective_scan_gpu._lean_default
  assert lean(3136, indexed=False) and lean(3136, indexed=True) and lean(784, indexed=True)
  assert lean(64, indexed=True) and lean(49, indexed=True)
  assert not lean(196, indexed=True) and not lean(65, indexed=True)
  assert not lean(197, indexed=False) and not lean(49, indexed=False)
  chunk = selective_scan_gpu._chunk_default
  assert chunk(lean=True, indexed=True) == 8 and chunk(lean=False, indexed=True) == 4
  assert chunk(lean=True, indexed=False) == 4 and chunk(lean=False, indexed=False) == 4


def test_register_cap_default_and_explicit_values(monkeypatch):
  """The backward's cap defaults to 168 for the lean schedule through a read_index and for
  every lanes backward (measured slower for the batched and lean row kernels in plain order);
  0 means no cap; bad values
  name the option. Interpret mode never caps (nothing is compiled by ptxas)."""
  seen = []
  original = selective_scan_gpu._scan
  monkeypatch.setattr(selective_scan_gpu, "_scan", lambda cfg, *args: seen.append(
      (cfg.lean, cfg.max_registers, cfg.bwd_max_registers, cfg.fwd_only_max_registers))
      or original(cfg, *args))
  cap_default = selective_scan_gpu._bwd_max_registers_default
  assert cap_default(lean=True, indexed=True, chunk=8) == 168
  assert cap_default(lean=False, indexed=True, chunk=4) == 168  # batched, chunk 4 (stage 3)
  assert cap_default(lean=False, indexed=True, chunk=8) is None
  assert cap_default(lean=True, indexed=False, chunk=8) is None
  x = jnp.zeros((1, 4, 8), jnp.float32)
  a = -jnp.ones((8, 16), jnp.float32)
  bc = jnp.ones((1, 4, 1, 16), jnp.float32)
  for bad in (300, 8, True, 1.5, "168"):
    with pytest.raises(ValueError, match=r"bwd_max_registers=.*expected an int in \[24, 255\]"):
      selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, bwd_max_registers=bad,
                                               interpret=True)
  with pytest.raises(ValueError, match=r"max_registers=300"):
    selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, max_registers=300, interpret=True)
  selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, bwd_max_registers=128,
                                           interpret=True)
  assert seen == [(False, None, None, None)]
  # compiled (not interpret): the forward-only cap defaults to 80, a given cap applies to
  # every forward, 0 to none; traced only (lowering needs no GPU for the config)
  seen.clear()
  for kw in ({}, {"max_registers": 96}, {"max_registers": 0}):
    jax.eval_shape(lambda x: selective_scan_gpu.selective_scan_pallas(
        x, x, a, bc, bc, interpret=False, **kw), x)
  assert [(s[1], s[3]) for s in seen] == [(None, 80), (96, 96), (None, None)]


def test_chunk_defaults_and_the_forward_only_call(monkeypatch):
  """chunk / checkpoint_every default to 8 / 8 for the lean backward through a read_index,
  else 4 / 4 (H100, BENCHMARKS.md sessions 7 and 8); an explicit chunk keeps checkpoints every
  8. A forward that no backward follows saves no checkpoints and uses chunk 4 (or the chunk given),
  with the values of the forward of a VJP (the same arithmetic; only the compiler's contraction
  of the differently unrolled code may round differently, ~1e-7 relative)."""
  seen = []
  original = selective_scan_gpu._forward_call
  monkeypatch.setattr(selective_scan_gpu, "_forward_call", lambda cfg, *args: seen.append(
      (cfg.chunk, cfg.checkpoint_every, cfg.save_checkpoints, cfg.lean)) or original(cfg, *args))
  rng = np.random.default_rng(5)
  tokens = 96
  x = jnp.asarray(rng.standard_normal((1, tokens, 8)), jnp.float32)
  a = -jnp.ones((8, 4), jnp.float32)
  bc = jnp.asarray(rng.standard_normal((1, tokens, 1, 4)), jnp.float32)
  table = np.arange(tokens)[None, ::-1].copy()  # 96 steps: the batched schedule (64 < L < 512)
  run = lambda x, **kw: selective_scan_gpu.selective_scan_pallas(   # one part: this call's
      x, x, a, bc, bc, delta_softplus=True, interpret=True, seq_parts=1, **kw)  # own kernel
  for kw, training in (({"read_index": table}, (4, 4, True, False)),
                       ({}, (4, 4, True, False)),
                       ({"chunk": 2}, (2, 8, True, False))):
    seen.clear()
    forward_only = run(x, **kw)
    out, pullback = jax.vjp(lambda x: run(x, **kw), x)
    np.testing.assert_allclose(np.asarray(forward_only), np.asarray(out), rtol=1e-5, atol=1e-6)
    assert seen == [(kw.get("chunk", 4), kw.get("chunk", 4), False, training[3]), training]
    assert np.all(np.isfinite(pullback(jnp.ones_like(out))[0]))


def test_series_softplus_default_follows_the_schedule_and_keep_dl_is_opt_in(monkeypatch):
  """The series softplus was measured faster in the lean backward (through a scan-order table,
  and in plain order once keep_dl was off) and slower in the short batched plain-order one;
  keep_dl slower than the series in both orders (H100, 2026-11-27, BENCHMARKS.md sessions 11
  and 12). The defaults must resolve per call, and an explicit value must win."""
  seen = []
  original = selective_scan_gpu._scan
  monkeypatch.setattr(selective_scan_gpu, "_scan",
                      lambda cfg, *args: seen.append((cfg.lean, cfg.keep_dl, cfg.poly_softplus))
                      or original(cfg, *args))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 4, 8)), jnp.float32)
  a = -jnp.ones((8, 4), jnp.float32)
  bc = jnp.asarray(rng.standard_normal((1, 4, 1, 4)), jnp.float32)
  table = np.array([[3, 2, 1, 0]])
  run = lambda **kw: selective_scan_gpu.selective_scan_pallas(x, x, a, bc, bc, chunk=2,
                                                              interpret=True, **kw)
  run()                                     # short plain order: batched, libdevice
  run(lean=True)                            # lean plain order: the series
  run(read_index=table)                     # through a table (short: lean): the series
  run(read_index=table, keep_dl=True)
  run(lean=True, keep_dl=True, poly_softplus=False)
  run(poly_softplus=True)
  run(read_index=table, poly_softplus=False)
  assert seen == [(False, False, False), (True, False, True), (True, False, True),
                  (True, True, True), (True, True, False), (False, False, True),
                  (True, False, False)]
  long_plain = jnp.zeros((1, selective_scan_gpu.LEAN_MIN_SEQ, 8), jnp.float32)
  long_bc = jnp.zeros((1, selective_scan_gpu.LEAN_MIN_SEQ, 1, 4), jnp.float32)
  seen.clear()
  jax.eval_shape(lambda v: selective_scan_gpu.selective_scan_pallas(
      v, v, a, long_bc, long_bc, interpret=True), long_plain)
  assert seen == [(True, False, True)]


def test_bf16_inputs_with_float32_output_equal_float32_cast_inputs():
  """out_dtype=float32 with bf16 inputs: the kernel converts as it reads, so values must equal
  those of float32-cast inputs bit for bit, and gradients those of the cast rounded to bf16
  (the transpose of the cast); LocalVMamba's bf16 step relies on this (official SelectiveScan
  casts its inputs to float32). The pure-JAX path casts first and must agree as well."""
  from localmamba_jax.ops.scan_orders import stacked_scan_orders
  grid_hw, directions = (2, 3), ("w2_flip", "h")                 # w2 pads the 2x3 grid
  orders = stacked_scan_orders(*grid_hw, directions)
  rng = np.random.default_rng(7)
  k, e, n, tokens = 2, 8, 4, 6
  flat = random_inputs(rng, 2, tokens, k * e, k, n, with_z=False)
  bf16 = lambda x: x.astype(jnp.bfloat16)
  args = (bf16(flat["u"][:, :, :e]), bf16(flat["delta"].reshape(2, tokens, k, e)),
          flat["A"].reshape(k, e, n), bf16(flat["B"]), bf16(flat["C"]), flat["D"].reshape(k, e),
          flat["delta_bias"].reshape(k, e))
  weight = jnp.asarray(rng.standard_normal((2, tokens, k, e)), jnp.float32)

  def kernel(cast_first):
    def run(u, delta, A, B, C, D, bias):
      if cast_first:
        u, delta, B, C = (x.astype(jnp.float32) for x in (u, delta, B, C))
      options = {} if cast_first else {"out_dtype": jnp.float32}
      return selective_scan_gpu.multi_direction_scan_pallas(
          u, delta, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge, chunk=2,
          interpret=True, **options)
    return run

  def pure_jax(u, delta, A, B, C, D, bias):
    return multi_direction_selective_scan(u, delta, A, B, C, D, bias, grid_hw=grid_hw,
                                          directions=directions, impl="associative",
                                          out_dtype=jnp.float32)

  def out_and_grads(fn):  # one forward and one backward (interpret mode is slow on the CPU)
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(weight.astype(out.dtype))

  out, grads = out_and_grads(kernel(False))
  ref_out, ref_grads = out_and_grads(kernel(True))
  # Bitwise on the GPU, where the kernel's arithmetic is spelled out (fma); in interpret
  # mode XLA:CPU may contract or reorder float32 arithmetic differently for the two programs.
  assert out.dtype == jnp.float32 and rel_err(out, ref_out) < 1e-6
  for name, grad, ref, arg in zip(NAMES, grads, ref_grads, args):
    assert grad.dtype == arg.dtype, name
    # a bf16 gradient may differ in the last bit where float32 partials differ in the last
    # bits; the shared u's partials must be summed in float32 (rounded once)
    tol = 1e-6 if arg.dtype == jnp.float32 else 1e-4
    assert rel_err(grad, ref) < tol, f"gradient of {name}: {rel_err(grad, ref):.2e}"
  jax_out, jax_grads = out_and_grads(pure_jax)
  assert jax_out.dtype == jnp.float32 and rel_err(jax_out, out) < 1e-6
  for name, grad, ref, arg in zip(NAMES, jax_grads, grads, args):
    assert grad.dtype == arg.dtype, name
    tol = 1e-6 if arg.dtype == jnp.float32 else 1e-4
    assert rel_err(grad, ref) < tol, f"gradient of {name}: {rel_err(grad, ref):.2e}"


def test_recompute_checkpoints_keeps_gradients_and_drops_the_saved_states(monkeypatch):
  """recompute_checkpoints: the first forward runs as an inference forward (no checkpoints in
  the residuals) and the backward rebuilds them with a states-only forward (no outputs
  written); values and gradients equal those of the default path (the same kernels recompute
  the same states: equal up to the contraction note of the forward-only call, ~1e-7). Read
  through a scan-order table with pads; plain order: the float64 test below."""
  seen = []
  original = selective_scan_gpu._forward_call
  monkeypatch.setattr(selective_scan_gpu, "_forward_call", lambda cfg, *args: seen.append(
      (cfg.save_checkpoints, cfg.write_output)) or original(cfg, *args))
  rng = np.random.default_rng(11)
  inputs = random_inputs(rng, batch=1, length=14, channels=16, groups=2, num_state=4,
                         with_z=True)
  args = [inputs[k] for k in NAMES]
  # one direction reversed, one with two pad steps (decay-only)
  table = np.stack([np.r_[np.arange(14)[::-1], -1, -1],
                    np.r_[np.arange(7), -1, -1, np.arange(7, 14)]])
  def kernel(recompute):
    return lambda *a: selective_scan_gpu.selective_scan_pallas(
        *a[:5], a[5], a[7], a[6], delta_softplus=True, chunk=2, read_index=table,
        recompute_checkpoints=recompute, interpret=True)
  weight = jnp.asarray(rng.standard_normal((1, 14, 16)), jnp.float32)
  results = {}
  for recompute in (False, True):
    seen.clear()
    out, pullback = jax.vjp(kernel(recompute), *args)
    results[recompute] = out, pullback(weight)
    results[recompute, "calls"] = list(seen)
  # default: one forward with checkpoints; recompute: an inference forward, then (in the
  # backward) a states-only one
  assert results[False, "calls"] == [(True, True)]
  assert results[True, "calls"] == [(False, True), (True, False)]
  (out, grads), (out_r, grads_r) = results[False], results[True]
  np.testing.assert_allclose(np.asarray(out_r), np.asarray(out), rtol=1e-6, atol=1e-6)
  for name, g, g_r in zip(NAMES, grads, grads_r):
    np.testing.assert_allclose(np.asarray(g_r), np.asarray(g), rtol=1e-5, atol=1e-6,
                               err_msg=name)

  def saved_states(recompute):  # residual leaves shaped like the checkpoints [b, segs, C, N]
    _, vjp_fn = jax.eval_shape(lambda *a: jax.vjp(kernel(recompute), *a), *args)
    return [leaf.shape for leaf in jax.tree.leaves(vjp_fn)
            if leaf.ndim == 4 and leaf.shape[-2:] == (16, 4)]
  assert saved_states(False) == [(1, 2, 16, 4)]     # chunk 2 given: checkpoints every 8
  assert saved_states(True) == []


def test_recompute_checkpoints_matches_float64_reference():
  rng = np.random.default_rng(12)
  inputs = random_inputs(rng, batch=2, length=21, channels=16, groups=2, num_state=4,
                         with_z=False)
  args = [inputs[k] for k in NAMES[:7]]
  kernel = lambda *a: selective_scan_gpu.selective_scan_pallas(
      *a[:5], a[5], None, a[6], delta_softplus=True, chunk=2, checkpoint_every=4,
      recompute_checkpoints=True, interpret=True)
  reference = lambda *a: selective_scan(*a[:5], a[5], None, a[6], delta_softplus=True,
                                        impl="reference")
  weight = jnp.asarray(rng.standard_normal((2, 21, 16)), jnp.float32)
  assert_matches(kernel, reference, args, weight, NAMES[:7])


# ----------------------------------------------------------- one channel per lane (lanes)
# N = 16 and 32 channels per group are what the lanes backward covers (one warp of 32 lanes,
# 2N = 32 sums scattered one per lane).

@pytest.mark.parametrize("checkpoint_every,lanes_ahead,recompute,state_order", [
    # four chunks per saved state: three start states through the scratch buffer; the second
    # segment runs past the sequence end; XOR state order with [B, C] rows (the defaults)
    (8, True, False, "xor"),
    (8, True, False, "plain"),  # states in the same order in every lane (62 selects)
    (2, False, True, "xor"),  # one chunk per saved state, loads issued after the previous
                              # step's stores; the checkpoints rebuilt by a states-only forward
])
def test_lanes_backward_matches_float64_plain_order(checkpoint_every, lanes_ahead, recompute,
                                                    state_order):
  rng = np.random.default_rng(5)
  inputs = random_inputs(rng, batch=2, length=11, channels=64, groups=2, num_state=16,
                         with_z=True)
  args = [inputs[k] for k in NAMES]

  def kernel(u, delta, A, B, C, D, bias, z):
    return selective_scan_gpu.selective_scan_pallas(
        u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk=2,
        checkpoint_every=checkpoint_every, lanes=True, lanes_ahead=lanes_ahead,
        recompute_checkpoints=recompute, lanes_xor=state_order != "plain", interpret=True)

  def reference(u, delta, A, B, C, D, bias, z):
    return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, impl="reference")

  assert_matches(kernel, reference, args, rng.standard_normal((2, 11, 64)), NAMES)


def test_lanes_backward_matches_float64_through_a_scan_order_table():
  from localmamba_jax.ops.scan_orders import stacked_scan_orders
  grid_hw, directions = (3, 5), ("w2", "v_flip")      # window pads; v_flip's exact merge
  orders = stacked_scan_orders(*grid_hw, directions)
  rng = np.random.default_rng(6)
  k, e, n = 2, 32, 16
  tokens = grid_hw[0] * grid_hw[1]
  flat = random_inputs(rng, 2, tokens, k * e, k, n, with_z=False)
  args = [flat["u"][:, :, :e], flat["delta"].reshape(2, tokens, k, e), flat["A"].reshape(k, e, n),
          flat["B"], flat["C"], flat["D"].reshape(k, e), flat["delta_bias"].reshape(k, e)]

  def kernel(u, delta, A, B, C, D, bias):
    return selective_scan_gpu.multi_direction_scan_pallas(
        u, delta, A, B, C, D, bias, None, gather=orders.gather, merge=orders.merge, chunk=2,
        checkpoint_every=4, lanes=True, interpret=True)

  def reference(u, delta, A, B, C, D, bias):
    return multi_direction_selective_scan(u, delta, A, B, C, D, bias, grid_hw=grid_hw,
                                          directions=directions, impl="reference")

  assert_matches(kernel, reference, args, rng.standard_normal((2, tokens, k, e)),
                 NAMES[:7])


def test_lanes_backward_reads_16_bit_b_c_as_float32_copies_without_changing_gradients():
  """The lanes backward takes float32 copies of bf16 B, C (session 16): their gradients must
  come back in bf16 and equal those of float32 inputs holding the same values, rounded once
  (the values themselves are checked against float64 by the tests above)."""
  rng = np.random.default_rng(8)
  inputs = random_inputs(rng, batch=1, length=9, channels=32, groups=1, num_state=16,
                         with_z=False)
  b16, c16 = (jnp.asarray(inputs[k], jnp.bfloat16) for k in ("B", "C"))
  weight = jnp.asarray(rng.standard_normal((1, 9, 32)), jnp.float32)

  def grads(B, C):
    def loss(B, C):
      out = selective_scan_gpu.selective_scan_pallas(
          inputs["u"], inputs["delta"], inputs["A"], B, C, inputs["D"], None,
          inputs["delta_bias"], delta_softplus=True, lanes=True, interpret=True)
      return jnp.sum(out * weight)
    return jax.grad(loss, argnums=(0, 1))(B, C)

  got = grads(b16, c16)
  want = grads(b16.astype(jnp.float32), c16.astype(jnp.float32))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g, np.float32),
                                  np.asarray(w.astype(jnp.bfloat16), np.float32))


def test_lanes_reduce_scatter_leaves_sum_i_on_lane_i():
  cfg = types.SimpleNamespace(interpret=True)
  values = np.random.default_rng(7).standard_normal((32, 32)).astype(np.float32)  # [i, lane]
  got = selective_scan_gpu._reduce_scatter_lanes([jnp.asarray(v) for v in values], cfg)
  np.testing.assert_allclose(np.asarray(got), values.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_lanes_xor_reduce_scatter_adds_the_same_pairs_as_the_plain_one():
  """Slot p of lane l holding entry p ^ l (the XOR state order) must give lane i the same sum,
  bit for bit, as the plain butterfly on the same values (the same pairs in the same order)."""
  cfg = types.SimpleNamespace(interpret=True)
  values = np.random.default_rng(9).standard_normal((32, 32)).astype(np.float32)  # [i, lane]
  lane = np.arange(32)
  db = [jnp.asarray(values[q ^ (lane & 15), lane]) for q in range(16)]
  dc = [jnp.asarray(values[16 + (q ^ (lane & 15)), lane]) for q in range(16)]
  got = selective_scan_gpu._reduce_scatter_lanes_xor(db, dc, cfg)
  plain = selective_scan_gpu._reduce_scatter_lanes([jnp.asarray(v) for v in values], cfg)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(plain))
  np.testing.assert_allclose(np.asarray(got), values.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_lanes_refusals_and_cuda_lowering():
  x = jnp.zeros((1, 4, 64), jnp.float32)
  a16 = -jnp.ones((64, 16), jnp.float32)
  bc16 = jnp.ones((1, 4, 2, 16), jnp.float32)
  with pytest.raises(ValueError, match=r"lanes=True needs N = 16"):
    selective_scan_gpu.selective_scan_pallas(x, x, a16[:, :8], bc16[..., :8], bc16[..., :8],
                                             lanes=True, interpret=True)
  with pytest.raises(ValueError, match="channels per group divisible by 32"):
    selective_scan_gpu.selective_scan_pallas(x, x, a16, bc16.repeat(2, axis=2),
                                             bc16.repeat(2, axis=2), lanes=True, interpret=True)
  with pytest.raises(ValueError, match="bwd_tile=16"):
    selective_scan_gpu.selective_scan_pallas(x, x, a16, bc16, bc16, lanes=True, bwd_tile=16,
                                             interpret=True)
  # the GPU lowering (no GPU needed): the shuffles are inline PTX in the backward kernel
  for xor in (False, True):
    fn = jax.jit(jax.grad(lambda u: jnp.sum(selective_scan_gpu.selective_scan_pallas(
        u, u, a16, bc16, bc16, lanes=True, lanes_xor=xor, interpret=False))))
    text = fn.trace(jax.ShapeDtypeStruct(x.shape, x.dtype)).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "selective_scan_bwd" in text and "__gpu$xla.gpu.triton" in text


def test_tracing_the_kernels_builds_no_tracer_error_messages(monkeypatch):
  """The inline-asm results are declared by shape and dtype, not jax.ShapeDtypeStruct.like:
  that reads `tracer.sharding`, and the AttributeError's message walks every equation traced
  so far in the kernel, once per shuffle, exp2, rcp (quadratic in the unrolled kernel: 7.7 of
  64 s of LocalVMamba-S's profiled trace and lowering for CUDA, session 22)."""
  from jax._src.interpreters import partial_eval as pe
  calls = []
  original = pe.DynamicJaxprTracer._origin_msg
  monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg",
                      lambda self: calls.append(1) or original(self))
  x = jnp.zeros((1, 4, 64), jnp.float32)
  a16 = -jnp.ones((64, 16), jnp.float32)
  bc16 = jnp.ones((1, 4, 2, 16), jnp.float32)
  fn = jax.jit(jax.grad(lambda u: jnp.sum(selective_scan_gpu.selective_scan_pallas(
      u, u, a16, bc16, bc16, lanes=True, interpret=False))))
  text = fn.trace(jax.ShapeDtypeStruct(x.shape, x.dtype)).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "selective_scan_bwd" in text
  assert calls == []


def test_blocks_of_one_shape_share_one_lowered_kernel_per_direction_set():
  """Two scans with the same shapes and options but different scan-order tables (two blocks
  of a stage) lower each kernel to Triton IR once (forward, backward), a third with other
  options adds its own: the kernel calls are jitted with the config static (compile time,
  issue 9: LocalVMamba-S's trace and lowering fell from 124 to 23 s on a CPU)."""
  x = jax.ShapeDtypeStruct((1, 20, 64), jnp.float32)
  a = -jnp.ones((64, 16), jnp.float32)
  bc = jnp.ones((1, 20, 2, 16), jnp.float32)
  tables = [np.arange(20)[None].repeat(2, 0), np.arange(20)[::-1][None].repeat(2, 0)]

  def blocks(u, chunks):
    return sum(jnp.sum(selective_scan_gpu.selective_scan_pallas(
        u, u, a, bc, bc, read_index=table, chunk=chunk, interpret=False))
        for table, chunk in zip(tables * 2, chunks))

  for chunks, kernels in (((2, 2), 2), ((2, 2, 2, 2), 2), ((2, 2, 4), 4)):
    fn = jax.jit(jax.grad(functools.partial(blocks, chunks=chunks)))
    text = fn.trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == kernels, chunks


def test_lanes_default_follows_the_measurements(monkeypatch):
  """lanes=None: on for every scan whose shape fits (N = 16, 32 channels per group, no
  backward tile asked for), read through a table or not (H200, BENCHMARKS.md session 18:
  faster than the row kernels at every plain length timed, 64 to 3136 steps, LocalVim's 197
  included), with chunk 2, checkpoints every 8 and the 168-register cap (session 18: the plain
  order is faster under it too); the forward that saves the checkpoints keeps one chunk per
  interval. Shapes that do not fit keep the row kernels' plain-order chunking (4, 4)."""
  lanes_default = selective_scan_gpu._lanes_default
  assert lanes_default(16, 96, None, None)         # LocalVMamba stage 4 (96 channels per group)
  assert lanes_default(16, 384, None, None)        # LocalVim
  assert not lanes_default(8, 768, None, None)     # N != 16
  assert not lanes_default(16, 48, None, None)     # 48 channels per group
  assert not lanes_default(16, 768, 16, None)      # a backward tile asked for
  assert not lanes_default(16, 768, None, 2)       # two warps asked for
  cap_default = selective_scan_gpu._bwd_max_registers_default
  assert cap_default(lean=False, indexed=True, chunk=2, lanes=True) == 168
  assert cap_default(lean=True, indexed=False, chunk=2, lanes=True) == 168
  assert cap_default(lean=False, indexed=False, chunk=4, lanes=False) is None  # rows, plain
  seen = []
  original = selective_scan_gpu._forward_call
  monkeypatch.setattr(selective_scan_gpu, "_forward_call", lambda cfg, *args: seen.append(
      (cfg.lanes, cfg.chunk, cfg.checkpoint_every, cfg.save_checkpoints)) or original(cfg, *args))
  for tokens, table, state, want in ((600, None, 16, True), (20, None, 16, True),
                                     (20, np.arange(20)[None].repeat(2, 0), 16, True),
                                     (20, None, 8, False)):
    a = -jnp.ones((64, state), jnp.float32)
    x = jax.ShapeDtypeStruct((1, tokens, 64), jnp.float32)
    bc = jnp.ones((1, tokens, 2, state), jnp.float32)
    seen.clear()
    jax.eval_shape(jax.grad(lambda x: jnp.sum(selective_scan_gpu.selective_scan_pallas(
        x, x, a, bc, bc, read_index=table, interpret=True))), x)
    chunk, every = (8, 8) if want else (4, 4)
    assert seen == [(want, min(chunk, tokens), min(every, tokens), True)], (tokens, state, seen)


# ------------------------------------------------- a forward in parts of the sequence (seq_parts)

def _parts_inputs(length, with_z, seed):
  rng = np.random.default_rng(seed)
  inputs = random_inputs(rng, batch=1, length=length, channels=16, groups=2, num_state=4,
                         with_z=with_z)
  return [inputs[k] for k in NAMES]


@pytest.mark.parametrize("table,seq_parts,with_z", [
    (False, 3, True),    # plain order, three parts of whole chunks
    (True, 4, False),    # through a table with pad steps (decay-only) inside parts; the last
                         # part runs past the sequence end
    (False, None, True),  # the layout chosen from the batch (batch 1: parts, 8-channel tiles)
])
def test_forward_in_parts_matches_float64_and_the_one_part_forward(table, seq_parts, with_z):
  """A forward that no backward follows, run as parts of the sequence in parallel (end states
  and Delta sums first, then each part from the folded state of the parts before it): the
  outputs and the last state of the float64 reference, and of the one-part forward to ~1e-7
  (only the sums' order differs)."""
  length = 70
  args = _parts_inputs(length, with_z, seed=21)
  read_index = None
  if table:  # reversed, with two pads at the start and two in the middle
    read_index = np.stack([np.r_[-1, -1, np.arange(length)[::-1]],
                           np.r_[np.arange(30), -1, -1, np.arange(30, length)]])
  assert selective_scan_gpu._forward_only_layout(
      seq_parts, 1, 16, 8, length + 2 * table, 4, 8, False)[1] > 1  # really in parts

  def kernel(parts):
    u, delta, A, B, C, D, bias, z = args
    return selective_scan_gpu.selective_scan_pallas(
        u, delta, A, B, C, D, z, bias, delta_softplus=True, read_index=read_index,
        return_last_state=True, seq_parts=parts, interpret=True)

  (out, last), (out_1, last_1) = kernel(seq_parts), kernel(1)
  with jax.enable_x64():
    args64 = [None if a is None else jnp.asarray(np.asarray(a, np.float64)) for a in args]
    u, delta, A, B, C, D, bias, z = args64
    if read_index is None:
      ref_out, ref_last = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                         return_last_state=True, impl="reference")
    else:  # gather, scan in table order, write each step back at its token
      take = lambda x: jnp.take(x, np.maximum(read_index, 0), axis=1)  # [b, G, L, ...]
      real = jnp.asarray(read_index >= 0)
      per_group = 8
      outs, lasts = [], []
      for g in range(2):
        sl = slice(g * per_group, (g + 1) * per_group)
        pick = lambda x, pad=0.0: jnp.where(real[g][None, :, None], take(x)[:, g], pad)
        o, l = selective_scan(pick(u[:, :, sl]), pick(delta[:, :, sl]), A[sl],
                              pick(B[:, :, g])[:, :, None], pick(C[:, :, g])[:, :, None],
                              D[sl], None, bias[sl], delta_softplus=True,
                              return_last_state=True, impl="reference")
        outs.append(np.zeros((1, length, per_group)))
        keep = read_index[g] >= 0
        outs[-1][:, read_index[g][keep]] = np.asarray(o)[:, keep]
        lasts.append(np.asarray(l))
      ref_out, ref_last = np.concatenate(outs, axis=2), np.concatenate(lasts, axis=1)
    ref_out, ref_last = np.asarray(ref_out), np.asarray(ref_last)
  assert rel_err(out, ref_out) < OUT_TOL
  assert rel_err(last, ref_last) < OUT_TOL
  assert rel_err(out, out_1) < 1e-6 and rel_err(last, last_1) < 1e-6


def test_forward_in_parts_only_where_no_backward_follows(monkeypatch):
  """At batch 1 the inference forward runs in parts; the forward of a VJP keeps the one
  sequential walk (it saves the backward's checkpoints), and the gradients are unchanged."""
  calls = []
  original = selective_scan_gpu._forward_parts_call
  monkeypatch.setattr(selective_scan_gpu, "_forward_parts_call",
                      lambda cfg, *a: calls.append(cfg.seq_parts) or original(cfg, *a))
  args = _parts_inputs(80, True, seed=22)
  run = lambda *a: selective_scan_gpu.selective_scan_pallas(
      *a[:5], a[5], a[7], a[6], delta_softplus=True, interpret=True)
  out = run(*args)
  assert calls == [4]             # 80 steps at batch 1: four parts of >= MIN_PART_STEPS steps
  calls.clear()
  out_vjp, pullback = jax.vjp(run, *args)
  grads = pullback(jnp.ones_like(out_vjp))
  assert calls == []
  assert rel_err(out, out_vjp) < 1e-6
  reference = lambda *a: selective_scan(*a[:5], a[5], a[7], a[6], delta_softplus=True,
                                        impl="reference")
  assert_matches(run, reference, args, np.ones(out.shape), NAMES)
  assert all(g is not None for g in grads)


def test_forward_in_parts_layout_follows_the_batch():
  """The layout rule (SMALL_BATCH_WARPS, FILL_WARPS, SMALL_BATCH_TILE, MIN_PART_STEPS):
  LocalVMamba-T's shapes at batch 128 keep the measured one-part layout, and so do those that
  lost to it on an H200 (stage 2 at batch 32; stage 3 at batch 8 in one part, the small tile
  kept); at batch 1 they take one-warp 16-channel tiles and power-of-two parts of at least
  MIN_PART_STEPS steps that bring the warps to the fill target without passing it; explicit
  values are honoured and checked."""
  layout = selective_scan_gpu._forward_only_layout
  fill, min_steps = selective_scan_gpu.FILL_WARPS, selective_scan_gpu.MIN_PART_STEPS
  assert layout(None, 32, 1536, 384, 784, 4, 64, False) is None
  assert layout(None, 8, 3072, 768, 196, 4, 64, False) == (16, 1)
  assert layout(None, 1, 768, 192, 3136, 4, 64, False) == (16, 32)  # measured best of 1-32
  # 8 parts measured best of 1-32; 49 chunks of 4 steps go into 7 parts of 7 chunks
  assert layout(None, 1, 3072, 768, 196, 4, 64, False) == (16, 7)
  stages = [(768, 192, 3136), (1536, 384, 784), (3072, 768, 196), (6144, 1536, 64)]
  for channels, per_group, length in stages:
    assert layout(None, 128, channels, per_group, length, 4, 64, False) is None
    tile, parts = layout(None, 1, channels, per_group, length, 4, 64, False)
    warps = channels // tile  # one warp per 16-channel tile
    assert tile == selective_scan_gpu.SMALL_BATCH_TILE
    assert warps * parts <= fill and length // parts >= min_steps
    requested = 2 ** int(np.ceil(np.log2(parts)))  # a power of two, whole chunks per part
    assert warps * requested * 2 > fill or length // (2 * requested) < min_steps
  assert layout(None, 1, 768, 192, 3136, 4, 64, True)[0] == 64  # a tile given is kept
  assert layout(1, 1, 768, 192, 3136, 4, 64, False) is None     # one part: the usual layout
  assert layout(8, 128, 768, 192, 3136, 4, 64, False) == (64, 8)
  assert layout(1000, 1, 16, 8, 10, 4, 8, False) == (8, 3)      # at most one part per chunk
  with pytest.raises(ValueError, match="seq_parts must be an integer >= 1"):
    layout(0, 1, 16, 8, 10, 4, 8, False)

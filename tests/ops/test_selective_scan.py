"""The selective scan: golden cases of the official code, float64 references, gradients, pads.

Tolerances (fp32 implementations):
  values     max|out - ref| <= 2e-5 * max|ref| + 1e-6 against float64 / the official outputs
  gradients  max|g - ref|  <= 1e-4 * max|ref| + 1e-6 against float64 / the official gradients
(observed: ~1e-7 relative for values and ~5e-7 for gradients against the golden cases).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localmamba_jax.ops import selective_scan
from tests.ops.reference_numpy import selective_scan_float64

IMPLS = ("reference", "associative")
VALUE_RTOL, GRAD_RTOL = 2e-5, 1e-4
GRAD_ARGS = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def assert_close(actual, expected, rtol, name=""):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  error = np.max(np.abs(actual - expected)) if actual.size else 0.0
  bound = rtol * np.max(np.abs(expected)) + 1e-6 if expected.size else 0.0
  assert error <= bound, f"{name}: max abs error {error:.3g} > {bound:.3g}"


def random_case(seed, batch, length, channels, state, groups, with_z=True, dtype=np.float32):
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(dtype)
  return dict(
      u=normal(batch, length, channels), delta=normal(batch, length, channels, scale=0.5),
      A=-np.exp(normal(channels, state, scale=0.5)).astype(dtype),
      B=normal(batch, length, groups, state), C=normal(batch, length, groups, state),
      D=normal(channels), delta_bias=normal(channels, scale=0.5),
      z=normal(batch, length, channels) if with_z else None)


def load_golden_case(golden_npz, name):
  data = golden_npz("selective_scan_cases.npz")
  get = lambda key: data.get(f"{name}.{key}")
  channels_last = lambda x: None if x is None else np.moveaxis(x, -1, 1)     # (b, d, L) -> (b, L, d)
  groups_last = lambda x: np.transpose(x, (0, 3, 1, 2))                       # (b, G, N, L) -> (b, L, G, N)
  inputs = dict(u=channels_last(get("u")), delta=channels_last(get("delta")), A=get("A"),
                B=groups_last(get("B")), C=groups_last(get("C")), D=get("D"),
                delta_bias=get("delta_bias"), z=channels_last(get("z")))
  grads = {k: get(f"grad_{k}") for k in ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")}
  for k in ("u", "delta", "z"):
    grads[k] = channels_last(grads[k])
  for k in ("B", "C"):
    grads[k] = groups_last(grads[k])
  return inputs, channels_last(get("out")), get("last_state"), channels_last(get("dout")), grads


def value_and_grads(inputs, cotangent, impl, chunk_size=16):
  names = [k for k in GRAD_ARGS if inputs.get(k) is not None]

  def run(*args):
    kwargs = dict(inputs, **dict(zip(names, args)))
    return selective_scan(**kwargs, delta_softplus=True, return_last_state=True, impl=impl,
                          chunk_size=chunk_size)

  (out, last_state), vjp = jax.vjp(run, *[jnp.asarray(inputs[k]) for k in names])
  grads = vjp((jnp.asarray(cotangent, out.dtype), jnp.zeros_like(last_state)))
  return out, last_state, dict(zip(names, grads))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["ss_L7", "ss_L49", "ss_L64_pad"])
def test_golden_cases(golden_npz, case, impl):
  inputs, out_ref, state_ref, dout, grads_ref = load_golden_case(golden_npz, case)
  out, last_state, grads = value_and_grads(inputs, dout, impl)
  assert_close(out, out_ref, VALUE_RTOL, "out")
  assert_close(last_state, state_ref, VALUE_RTOL, "last_state")
  for name, grad in grads.items():
    if grads_ref.get(name) is not None:
      assert_close(grad, grads_ref[name], GRAD_RTOL, f"grad_{name}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length,groups,with_z", [
    (1, 1, True), (7, 1, True), (49, 4, False), (64, 4, True), (196, 2, False), (75, 4, True)])
def test_values_against_float64(impl, length, groups, with_z):
  case = random_case(length, batch=2, length=length, channels=8, state=4, groups=groups,
                     with_z=with_z)
  expected, expected_state = selective_scan_float64(**case, delta_softplus=True)
  out, last_state = selective_scan(**case, delta_softplus=True, return_last_state=True,
                                   impl=impl, chunk_size=16)
  assert out.dtype == jnp.float32
  assert_close(out, expected, VALUE_RTOL, "out")
  assert_close(last_state, expected_state, VALUE_RTOL, "last_state")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length,chunk_size", [(1, 16), (49, 16), (64, 64), (75, 32)])
def test_gradients_against_float64(impl, length, chunk_size):
  case = random_case(100 + length, batch=2, length=length, channels=8, state=4, groups=4)
  cotangent = np.random.default_rng(7).standard_normal((2, length, 8))
  with jax.enable_x64(True):
    case64 = {k: None if v is None else v.astype(np.float64) for k, v in case.items()}
    _, _, expected = value_and_grads(case64, cotangent, "reference")
    expected = {k: np.asarray(v) for k, v in expected.items()}
  _, _, grads = value_and_grads(case, cotangent.astype(np.float32), impl, chunk_size)
  for name in GRAD_ARGS:
    assert grads[name].dtype == jnp.float32
    assert_close(grads[name], expected[name], GRAD_RTOL, f"grad_{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_pad_steps_only_decay_the_state(impl):
  """Pad tokens (u = 0, B = C = 0, raw delta = 0) decay the state by exp(softplus(bias) * A)."""
  case = random_case(3, batch=2, length=20, channels=6, state=4, groups=2, with_z=False)
  pads = slice(12, 17)
  for key in ("u", "delta", "B", "C"):
    case[key][:, pads] = 0.0
  out, _ = selective_scan(**case, delta_softplus=True, return_last_state=True, impl=impl,
                          chunk_size=8)
  _, state_before = selective_scan_float64(**{k: (v[:, :12] if k in ("u", "delta", "B", "C")
                                                  else v) for k, v in case.items()},
                                           delta_softplus=True)
  _, state_after = selective_scan_float64(**{k: (v[:, :17] if k in ("u", "delta", "B", "C")
                                                 else v) for k, v in case.items()},
                                          delta_softplus=True)
  decay = np.exp(5 * np.logaddexp(case["delta_bias"].astype(np.float64), 0)[:, None] * case["A"])
  np.testing.assert_allclose(state_after, decay * state_before, rtol=1e-10)
  assert np.all(np.abs(decay) < 1) and not np.allclose(state_after, state_before)
  # outputs at pad positions are D * u = 0 and the later outputs feel the decayed state
  np.testing.assert_allclose(np.asarray(out)[:, pads], 0.0, atol=1e-6)
  expected, _ = selective_scan_float64(**case, delta_softplus=True)
  assert_close(out, expected, VALUE_RTOL, "out")


def test_implementations_agree_and_chunk_size_does_not_matter():
  case = random_case(5, batch=2, length=100, channels=8, state=16, groups=4)
  outs = [selective_scan(**case, delta_softplus=True, impl="reference")]
  outs += [selective_scan(**case, delta_softplus=True, impl="associative", chunk_size=c)
           for c in (1, 7, 64, 500)]
  for out in outs[1:]:
    assert_close(out, outs[0], 1e-5)


def test_optional_inputs_and_group_layouts():
  case = random_case(9, batch=1, length=10, channels=4, state=3, groups=1, with_z=False)
  plain = dict(u=case["u"], delta=np.abs(case["delta"]), A=case["A"], B=case["B"], C=case["C"])
  expected, _ = selective_scan_float64(**plain)
  for impl in IMPLS:
    assert_close(selective_scan(**plain, impl=impl), expected, VALUE_RTOL)
    three_dim = dict(plain, B=plain["B"][:, :, 0], C=plain["C"][:, :, 0])  # [b, L, N]: one group
    assert_close(selective_scan(**three_dim, impl=impl), expected, VALUE_RTOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs_keep_fp32_state(impl):
  case = random_case(11, batch=2, length=64, channels=8, state=4, groups=4)
  bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in case.items()}
  out, last_state = selective_scan(**bf16, delta_softplus=True, return_last_state=True, impl=impl)
  assert out.dtype == jnp.bfloat16 and last_state.dtype == jnp.float32
  rounded = {k: np.asarray(v, np.float32) for k, v in bf16.items()}
  expected, _ = selective_scan_float64(**rounded, delta_softplus=True)
  # only the output rounding to bf16 (8 bits of mantissa) separates them
  assert_close(out, expected, 1e-2, "bf16 out")


def test_associative_memory_is_per_chunk():
  """The chunked scan never holds the [b, L, d, N] states of the whole sequence.

  Checked on the compiled gradient program: doubling L grows its temporary memory by about
  the size of the inputs, far less than the growth of the full states (the lax.scan
  reference, whose autodiff keeps every step's state, grows by more than that).
  """
  batch, channels, state = 2, 32, 16

  def temp_bytes(length, impl):
    case = random_case(0, batch, length, channels, state, groups=4, with_z=False)

    def loss(u, delta):
      return jnp.sum(selective_scan(u, delta, case["A"], case["B"], case["C"], case["D"],
                                    delta_bias=case["delta_bias"], delta_softplus=True,
                                    impl=impl, chunk_size=64))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(case["u"], case["delta"]).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip("this jax backend reports no memory analysis")
    return analysis.temp_size_in_bytes

  states_growth = batch * 512 * channels * state * 4  # bytes of the states of 512 more steps
  associative_growth = temp_bytes(1024, "associative") - temp_bytes(512, "associative")
  reference_growth = temp_bytes(1024, "reference") - temp_bytes(512, "reference")
  assert reference_growth > states_growth  # the measure does see materialised states
  assert associative_growth < 0.35 * states_growth


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(u=np.zeros((2, 5))), "u must have shape"),
    (dict(delta=np.zeros((2, 5, 3))), "delta must have shape"),
    (dict(A=np.zeros((3, 4))), "A must have shape"),
    (dict(B=np.zeros((2, 5, 3, 4)), C=np.zeros((2, 5, 3, 4))), "groups of B/C must divide"),
    (dict(C=np.zeros((2, 5, 2, 4))), "same number of groups"),
    (dict(B=np.zeros((2, 6, 1, 4))), "B must have shape"),
    (dict(D=np.zeros(3)), "D must have shape"),
    (dict(z=np.zeros((2, 5, 3))), "z must have shape"),
    (dict(delta_bias=np.zeros((4, 1))), "delta_bias must have shape"),
    (dict(impl="cuda"), "unknown impl 'cuda'"),
    (dict(chunk_size=0), "chunk_size must be an integer"),
])
def test_bad_input(kwargs, fragment):
  good = dict(u=np.zeros((2, 5, 4)), delta=np.zeros((2, 5, 4)), A=np.zeros((4, 4)),
              B=np.zeros((2, 5, 1, 4)), C=np.zeros((2, 5, 1, 4)))
  with pytest.raises(ValueError, match=fragment):
    selective_scan(**dict(good, **kwargs))

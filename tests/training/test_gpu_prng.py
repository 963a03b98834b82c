"""training/gpu_prng.py: threefry as JAX's GPU kernel while the entry points trace.

The GPU itself is not here: the programs are lowered for CUDA on this CPU (nothing compiled),
which is where the option acts. That the kernel draws the same bits as the inlined rounds is
checked on a GPU (BENCHMARKS.md, session 21).
"""
import jax
import pytest
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.training.gpu_prng import threefry_kernels

OPTION = "jax_threefry_gpu_kernel_lowering"


def test_sets_the_option_inside_and_restores_it_after_an_error():
  before = getattr(jax.config, OPTION)
  with threefry_kernels(not before):
    assert getattr(jax.config, OPTION) is (not before)
  assert getattr(jax.config, OPTION) is before
  with pytest.raises(RuntimeError, match="inside"):
    with threefry_kernels(not before):
      raise RuntimeError("inside")
  assert getattr(jax.config, OPTION) is before


def test_rejects_a_non_boolean_naming_the_config_key():
  with pytest.raises(TypeError, match=r"enabled='yes'.*config.threefry_gpu_kernel"):
    with threefry_kernels("yes"):
      pass


def _init_params():
  model = create_model("local_vssm_tiny", num_classes=10, dims=[16], depths=[2],
                       directions=[["h", "v", "w2", "w2_flip"]] * 2, rngs=nnx.Rngs(0))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _cuda_text(enabled):
  with threefry_kernels(enabled):
    return jax.jit(_init_params).trace().lower(lowering_platforms=("cuda",)).as_text()


def test_a_model_initializer_lowers_to_kernel_calls_for_cuda():
  inline, kernel = _cuda_text(False), _cuda_text(True)
  assert "threefry2x32_ffi" not in inline
  assert "cu_threefry2x32_ffi" in kernel
  # the rounds' xors (20 per threefry call) leave the program with the option
  assert inline.count("stablehlo.xor") >= 20 * kernel.count("cu_threefry2x32_ffi")
  assert kernel.count("stablehlo.xor") < inline.count("stablehlo.xor") // 10


"""LocalVMamba's residual-stream LayerNorms with the Pallas backward (`norm_kernels`,
layers.norms.KernelGradLayerNorm): taken exactly where the scan runs the GPU kernel, and the
whole model's values and gradients unchanged (against the same model with XLA's LayerNorm).
The GPU kernel runs in interpret mode on this CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.layers.norms import KernelGradLayerNorm
from localmamba_jax.models.local_vmamba import LocalVMamba, LocalVMambaConfig
from tests.model_comparison import assert_same_loss_and_grads, loss_and_grads

DIRECTIONS = (("h", "v", "w2", "w2_flip"), ("v_flip", "h", "w2", "h_flip"))


def _model(**overrides):
  kwargs = dict(dims=(16, 32), depths=(1, 1), directions=DIRECTIONS, num_classes=5,
                drop_path_rate=0.0, scan_impl="pallas_gpu")
  kwargs.update(overrides)
  return LocalVMamba(LocalVMambaConfig(**kwargs), rngs=nnx.Rngs(0))


def _norm_kernel_calls(model):
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(model(x))))(jnp.ones((1, 16, 16, 3)))
  # one jitted call per norm (the pallas_call itself is printed once per shape)
  return str(jaxpr).count("name=_layer_norm_grad_call")


def test_the_residual_norms_take_the_kernel_where_the_scan_runs_the_gpu_kernel():
  # patch embedding, 2 blocks, 1 patch merging, the final norm
  assert _norm_kernel_calls(_model()) == 5
  for overrides in ({"norm_kernels": False}, {"scan_impl": "associative"}):
    assert _norm_kernel_calls(_model(**overrides)) == 0, overrides


@pytest.mark.parametrize("overrides", [
    {}, {"remat": True, "scan_blocks": True, "depths": (2, 1),
         "directions": DIRECTIONS + (("h", "w2_flip", "v", "w2"),)}])
def test_the_model_keeps_its_values_and_gradients(monkeypatch, overrides):
  """The associative scan (the GPU scan's interpret mode would add ~20 s and is tested on its
  own), with the norm kernel forced on, against norm_kernels=False; drop path on, as in
  training; also under remat with scanned blocks (jax.checkpoint and lax.scan around the
  custom VJP). Tolerance: float32 rounding, 1e-5 of the loss, 2e-5 of each gradient's
  largest entry."""
  images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 16, 16, 3)), jnp.float32)

  def run(kernels):
    monkeypatch.setattr(KernelGradLayerNorm, "use_kernel", lambda self, x: kernels)
    model = _model(**{"scan_impl": "associative", "drop_path_rate": 0.2, **overrides})
    result, traced_kernel = loss_and_grads(model, images, "layer_norm_grad")
    assert traced_kernel == kernels
    return result

  assert_same_loss_and_grads(run(True), run(False))

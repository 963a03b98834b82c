"""Where jax has no Pallas Triton backend (jax 0.11 warns that it is deprecated in favour of
Mosaic GPU), a model on a GPU with the defaults ("auto") runs XLA's scan, LayerNorm and conv
instead of the Pallas kernels: none is traced, and the loss is that of the XLA paths. A GPU
host is simulated on this CPU with traced_for("gpu"); the jaxprs are only traced, not run,
where they hold GPU kernels."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localmamba_jax.models import create_model
from localmamba_jax.ops.kernels import depthwise_conv_gpu, row_norm_gpu, selective_scan_gpu
from localmamba_jax.ops.kernels.common import traced_for

KERNEL_MODULES = (depthwise_conv_gpu, row_norm_gpu, selective_scan_gpu)
# the module (localmamba_jax.ops re-exports its function of the same name)
selective_scan = importlib.import_module("localmamba_jax.ops.selective_scan")
VMAMBA = dict(dims=(8, 16), depths=(1, 1), directions=(("h", "w2_flip"), ("v", "h_flip")),
              drop_path_rate=0.0, num_classes=10)
VIM = dict(embed_dim=32, depth=2, directions=(("h", "w2_flip"), ("v", "h_flip")),
           drop_path_rate=0.0, num_classes=10, img_size=32)


def _loss(model, images):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return params, lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(images) ** 2)


@pytest.mark.parametrize("name,arch,xla_conv", [("local_vssm_tiny", VMAMBA, {
    "depthwise_conv_impl": "lax"}), ("local_vim_tiny", VIM, {})])
def test_auto_falls_back_to_xla_without_pallas_triton(monkeypatch, name, arch, xla_conv):
  monkeypatch.setattr(selective_scan, "_WARNED_NO_GPU_KERNELS", False)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model = create_model(name, rngs=nnx.Rngs(0), **arch)
  params, loss = _loss(model, images)
  with traced_for("gpu"):                       # the kernels where Pallas Triton is there
    assert "pallas_call" in str(jax.make_jaxpr(jax.grad(loss))(params))
  for module in KERNEL_MODULES:
    monkeypatch.setattr(module, "_HAVE_PALLAS_TRITON", False)
  with traced_for("gpu"), pytest.warns(RuntimeWarning, match="no Pallas Triton backend"):
    assert "pallas_call" not in str(jax.make_jaxpr(jax.grad(loss))(params))
  with traced_for("gpu"):
    without = jax.jit(loss)(params)
  xla_only = create_model(name, rngs=nnx.Rngs(0), scan_impl="associative", **xla_conv, **arch)
  params_xla, loss_xla = _loss(xla_only, images)
  np.testing.assert_allclose(float(without), float(loss_xla(params_xla)), rtol=1e-5)


def test_the_warning_comes_once_and_only_where_the_kernels_are_missing_on_a_gpu(monkeypatch):
  import warnings
  monkeypatch.setattr(selective_scan, "_WARNED_NO_GPU_KERNELS", False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")                 # any warning fails here
    assert selective_scan.resolve_impl("auto", True) in ("associative", "pallas_gpu")
    with traced_for("gpu"):                        # the kernels are there: no warning
      assert selective_scan.resolve_impl("auto", True) == "pallas_gpu"
  monkeypatch.setattr(selective_scan_gpu, "_HAVE_PALLAS_TRITON", False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with traced_for("cpu"):                        # not on a GPU (whatever this host has)
      assert selective_scan.resolve_impl("auto", False) == "associative"
    with traced_for("gpu"):
      with pytest.raises(RuntimeWarning, match=r"jax \S+ has no Pallas Triton backend.*"
                         r"pip install 'jax\[cuda13\]<0.12'"):
        selective_scan.resolve_impl("auto", False)
      assert selective_scan.resolve_impl("auto", False) == "associative"  # once: no more

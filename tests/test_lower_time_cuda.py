"""benchmarks/lower_time_cuda.py on a tiny LocalVMamba: the train step traced and lowered for
CUDA on this CPU, its Pallas kernels as Triton kernels, nothing compiled."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import jax  # noqa: E402
import lower_time_cuda  # noqa: E402

from localmamba_jax.ops import depthwise_conv  # noqa: E402
from localmamba_jax.ops.kernels import selective_scan_gpu  # noqa: E402

TINY = ["--model", "local_vssm_tiny", "--override", "dims=[32]", "--override", "depths=[2]",
        "--override", 'directions=[["h","v_flip","w2","w2_flip"],["v","h_flip","w2_flip","w2"]]',
        "--image-size", "16",
        "--num-classes", "10", "--batch", "2", "--dtype", "fp32"]


def test_lowers_the_train_step_for_cuda_and_restores_the_platform(capsys):
  result = lower_time_cuda.main(TINY)
  assert result["trace_s"] > 0 and result["lower_s"] > 0 and result["module_mb"] > 0
  # two blocks of one shape (their scan-order tables have one length): the scan's forward and
  # backward, SCAttn's two row kernels, the LayerNorm backward (patch embedding, both blocks
  # and the final norm: rows of one shape) and the depthwise conv's backward ("auto" as on a
  # GPU), each lowered once, not once per call
  assert result["triton_kernels"] == 6
  assert '"triton_kernels"' in capsys.readouterr().out
  # traced as for a GPU only inside the script
  on_a_gpu = jax.default_backend() == "gpu"
  assert selective_scan_gpu.on_gpu() is on_a_gpu
  assert depthwise_conv.resolved_impl("auto") == ("pallas_gpu" if on_a_gpu else "shifted")

"""Accelerator kernels for the ops (Pallas). Each kernel keeps the pure-JAX path as fallback.

selective_scan_gpu: Pallas (Triton backend) selective scan, forward + backward, with the
multi-direction scan order fused into its loads and stores.
"""
from localmamba_jax.ops.kernels.selective_scan_gpu import is_supported as gpu_scan_is_supported
from localmamba_jax.ops.kernels.selective_scan_gpu import selective_scan_pallas

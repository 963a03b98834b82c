"""Layers: norms, SCAttn, branch merge, depthwise conv, drop path, init keys (above ops, below
models)."""
from localmamba_jax.layers.branch_merge import ArchitectureWeight, BranchMerge
from localmamba_jax.layers.depthwise_conv import DepthwiseConv2d
from localmamba_jax.layers.drop_path import drop_path
from localmamba_jax.layers.init_keys import InitKeys, init_keys
from localmamba_jax.layers.norms import TORCH_NORM_EPS, layer_norm, rms_norm
from localmamba_jax.layers.scattn import SCAttn, gelu_exact

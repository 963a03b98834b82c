"""localmamba-jax: LocalMamba (arXiv 2403.09338) in JAX/Flax NNX.

Importing the package stays light: ops and models need only jax, flax and numpy, so
kernel and model runs need no data or training stack.
"""
__version__ = "0.1.0"

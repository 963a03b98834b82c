"""The per-layer scan-direction search (paper Sec. 3.4, reference doc Sec. 5), built on the
training loop: `search.py` trains a supernet, logs its architecture probabilities, exports the
top-k directions of every layer as a file train.py takes, and draws pictures of the result."""
from localmamba_jax.search.architecture import SearchLayer, search_layers, layer_probabilities
from localmamba_jax.search.export import (export_from_checkpoint, format_directions,
                                          top_k_directions, write_directions)

__all__ = ["SearchLayer", "search_layers", "layer_probabilities", "export_from_checkpoint",
           "format_directions", "top_k_directions", "write_directions"]

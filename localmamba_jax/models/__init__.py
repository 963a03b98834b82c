"""Models: LocalVMamba (hierarchical) and LocalVim (plain), above ops and layers."""
from localmamba_jax.models.registry import (build_model, create_model, get_config, list_models,
                                            load_directions, model_spec)

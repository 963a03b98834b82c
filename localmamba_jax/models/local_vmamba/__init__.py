"""LocalVMamba (hierarchical LocalMamba, paper Sec. 3.5): config, model, official weights."""
from localmamba_jax.models.local_vmamba.config import LocalVMambaConfig
from localmamba_jax.models.local_vmamba.model import (LocalVMamba, LocalVMambaStage, PatchEmbed,
                                                      PatchMerging2D, SS2D, VSSBlock)
from localmamba_jax.models.local_vmamba.params import load_torch_state_dict, to_torch_state_dict

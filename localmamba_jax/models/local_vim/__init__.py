"""LocalVim: the plain, Vim-style LocalMamba family (official `local_vim.py`)."""
from localmamba_jax.models.local_vim.model import (Block, LocalVim, LocalVimConfig, MultiMamba,
                                                   PatchEmbed, mixer_scan_orders)
from localmamba_jax.models.local_vim.params import load_torch_state_dict, to_torch_state_dict

"""Models: LocalVMamba (hierarchical) and LocalVim (plain), above ops and layers."""

"""Input pipelines (grain): sources, host-side transforms, RandAugment, loaders."""

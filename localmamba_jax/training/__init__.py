"""Training stack of localmamba-jax: configs, input pipelines, optimizer, sharded steps, checkpoints.

Nothing in ops/, layers/ or models/ imports this package, so `import localmamba_jax` stays
light; the training extras (optax, orbax, grain, tfds, ml_collections, tensorboardX) are
imported only here. The loop itself is `localmamba_jax.training.loop.train_and_evaluate`,
called by the thin `train.py` at the repository root.
"""

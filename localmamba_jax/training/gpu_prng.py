"""Threefry as one GPU kernel per draw while the training entry points trace their programs.

JAX lowers each threefry2x32 call on a GPU to its 20 rounds of 32-bit adds, rotations and xors,
and XLA inlines a copy at every call site. A model's initializer draws every parameter with a
key of its own, so initializing LocalVMamba-S's training state is a program of ~130k HLO
instructions (133,603 after XLA's CPU pipeline here), which XLA compiles on every cold start
of train.py, before the first step. JAX's `jax_threefry_gpu_kernel_lowering` emits one custom
call to JAX's own threefry kernel per draw instead: the same algorithm on the same counters,
so the same bits. The price JAX names for it is memory: the random bits are written out
instead of being fused into their consumer; the largest draw of the train step is random
erasing's per-pixel noise, 77 MB at 128 images of 224². Off GPUs the setting changes nothing.
Measured (BENCHMARKS.md, session 21, one H200): LocalVMamba-S's initial state 65.5 -> 9.8 s,
its train step's compile 80.5 -> 62.1 s, the step as fast, the draws bit-identical.

`threefry_kernels` sets it only while the entry point traces and compiles (the setting is part
of JAX's trace context, so programs traced inside keep it), and restores the user's value
after: a notebook that calls `train_and_evaluate` keeps its own JAX configuration. While it
runs the setting is process-wide (jax.config.update), so other threads tracing at the same
time see it too; their draws are the same bits either way.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_OPTION = "jax_threefry_gpu_kernel_lowering"


@contextlib.contextmanager
def threefry_kernels(enabled: bool = True) -> Iterator[None]:
  """JAX's threefry kernel lowering on (or off) inside the block; the previous value after."""
  if not isinstance(enabled, bool):
    raise TypeError(f"threefry_kernels(enabled={enabled!r}): expected True or False "
                    f"(config.threefry_gpu_kernel)")
  previous = getattr(jax.config, _OPTION)
  jax.config.update(_OPTION, enabled)
  try:
    yield
  finally:
    jax.config.update(_OPTION, previous)

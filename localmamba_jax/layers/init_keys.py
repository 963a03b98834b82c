"""Parameter-initialisation keys for building a model under a trace, at constant cost per key.

Why: models are built abstractly (`nnx.eval_shape`, `jax.eval_shape`, `jax.jit` of the
initialiser), so `nnx.Rngs`'s counter is a tracer. Each `rngs.params()` then writes the counter
back through `Variable.set_value`, which asks the tracer for `.sharding`; JAX answers with an
AttributeError whose message walks the whole jaxpr traced so far on jax 0.10 (`_origin_msg` ->
`find_progenitors`; jax 0.11 no longer builds it). Over a model's ~550 keys that is quadratic,
and a training run builds the model abstractly four times: the set-up before LocalVMamba-S's
train step took 40.8 s on a 2-core CPU with jax 0.10.2 and flax 0.12.8, 7.2 s with this
(BENCHMARKS.md, session 13).

`InitKeys` draws the same keys as the stream it wraps, `fold_in(key, count + i)` for the i-th
draw, with the count kept in Python, and advances the wrapped stream's counter once at the end,
so the parameters and the caller's `Rngs` end up exactly as if the stream had been used
directly (tests/layers/test_init_keys.py).
"""
from __future__ import annotations

import contextlib

import jax
from flax import nnx


class InitKeys:
  """Duck-types the part of `nnx.Rngs` that parameter initialisers use: `.params()`.

  flax's Linear, Conv, LayerNorm and Einsum, and this package's layers, only ever call
  `rngs.params()` while being built.
  """

  def __init__(self, key: jax.Array, first_count):
    self._key = key
    self._first_count = first_count
    self.drawn = 0

  def params(self) -> jax.Array:
    key = jax.random.fold_in(self._key, self._first_count + self.drawn)
    self.drawn += 1
    return key

  def __call__(self) -> jax.Array:
    return self.params()


@contextlib.contextmanager
def init_keys(rngs: nnx.Rngs):
  """`with init_keys(rngs) as keys:` build the model with `rngs=keys`; on exit, `rngs`'s
  params stream (its default stream if it has none) is advanced by the number of keys drawn."""
  if isinstance(rngs, InitKeys):   # a sub-module built inside an outer init_keys block
    yield rngs
    return
  if not isinstance(rngs, nnx.Rngs):
    raise ValueError(f"rngs must be an nnx.Rngs, got {rngs!r} of type {type(rngs).__name__}; "
                     f"pass rngs=nnx.Rngs(seed), e.g. nnx.Rngs(0).")
  stream = rngs.params
  keys = InitKeys(stream.key[...], stream.count[...])
  yield keys
  if keys.drawn:
    stream.count[...] = stream.count[...] + keys.drawn

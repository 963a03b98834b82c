"""Prefetch to the device: a background thread pulls the next local batches and places them
(e.g. `sharding.to_global_batch`), so the host->device copy overlaps the running step.

The wrapped grain iterator runs ahead by up to `depth` batches, so its own state would skip
them on resume. Each queued batch therefore carries the iterator state taken right after it
was produced; `get_state()` returns the state of the last batch handed out, which is exactly
what a checkpoint written after consuming that batch must hold. The state is the grain
iterator's JSON, as bytes: grain's Orbax handler stores non-`DatasetIterator` iterators that
way, and the file reads back into a plain grain iterator too.
"""
from __future__ import annotations

import json
import queue
import threading

_END = object()


class DevicePrefetcher:
  """`next()` -> placed batch; `get_state()` / `set_state()` as a grain iterator (bytes)."""

  def __init__(self, iterator, place, depth: int = 2):
    if depth < 1:
      raise ValueError(f"prefetch depth={depth}; use 1 or more batches")
    self._iterator, self._place, self._depth = iterator, place, depth
    self._state = iterator.get_state()  # before any batch: the iterator's own start
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  def _produce(self):
    try:
      while not self._stop.is_set():
        try:
          batch = next(self._iterator)
        except StopIteration:
          self._queue.put((_END, None))
          return
        item = (self._place(batch), self._iterator.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # surfaces in the consumer's next()
      self._queue.put((e, None))

  def __iter__(self):
    return self

  def __next__(self):
    if self._thread is None:
      self._queue = queue.Queue(maxsize=self._depth)
      self._thread = threading.Thread(target=self._produce, daemon=True, name="prefetch")
      self._thread.start()
    batch, state = self._queue.get()
    if batch is _END:
      raise StopIteration
    if isinstance(batch, BaseException):
      raise batch
    self._state = state
    return batch

  def get_state(self) -> bytes:
    return json.dumps(self._state).encode()

  def set_state(self, state) -> None:
    if self._thread is not None:
      raise RuntimeError("set_state after prefetching started; restore before the first next()")
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore; the thread starts on next()."""

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)

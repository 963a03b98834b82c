"""Pallas GPU selective scan: forward and backward kernels behind `jax.custom_vjp`.

Same math, layout and precision policy as `ops.selective_scan` (module docstring there):
u/delta/z channels-last [batch, tokens, channels], B/C [batch, tokens, groups, N], fp32
state and accumulation, bf16/fp16/fp32 inputs, output in u's dtype.

Kernel design (one program per (batch, tile of `tile` channels inside one group)):
  * forward: a loop over chunks of `chunk` steps, each chunk unrolled so that the loads of
    its steps do not wait on the recurrence; the state h [tile, N] stays in registers in fp32;
    exp(Delta * A) is computed as exp2(Delta * A * log2(e)) with A pre-scaled once. The state
    at the start of every `checkpoint_every` steps is written out (`checkpoints`,
    [batch, segments, C, N] fp32). A chunk's loads are all issued before its first store.
  * backward: segments in reverse; each reloads its checkpoint, rebuilds the states at its
    chunk starts in registers (only when checkpoint_every > chunk), and per chunk in reverse
    recomputes the `chunk` states into registers (a Python-unrolled list; the recompute loads
    only u, delta, B, and the adjoint reloads each step's inputs one step ahead of its stores,
    so that no more than two steps' loads are live: the "lean" schedule), then runs the
    adjoint recurrence
        g_t = C_t dy_t + exp(Delta_{t+1} A) g_{t+1}
    backwards through them. Since a_t h_{t-1} = h_t - Delta_t B_t u_t, only h_t is needed.
    Softplus / sigmoid take their exp and reciprocal from the special-function unit (sfu),
    and the lean backward (every scan read through a scan-order table, and plain-order scans
    of at least LEAN_MIN_SEQ steps) evaluates softplus with a 7-term series for its log1p
    (poly_softplus, `_log1p_unit`): -12 to -16% fwd+bwd through a table, -3 to -4% in plain
    order, where it replaced reusing the recompute's Delta in the adjoint (keep_dl, opt-in).
    The backward's registers are capped (PTX .maxnreg, `register_cap`) where that was
    measured faster: 168 registers let 12 one-warp programs share an SM instead of 8.
    A forward that no backward follows (inference) saves no checkpoints, and takes chunk 4
    under a cap of 80 registers (more resident warps; measured, FORWARD_ONLY_CHUNK). At a
    batch too small to fill the GPU it takes 16-channel tiles and runs parts of the sequence
    at once (`seq_parts`, `_forward_parts_call`: each part's end state and Delta sum, then
    each part from the state folded over those before it; LocalVMamba-T's batch-1 eval step
    5.70 -> 2.38 ms on an H200).
    With recompute_checkpoints the training forward is such a forward too, and the backward
    first rebuilds the checkpoints with a states-only forward (no C, z or outputs): less
    memory held between a model's forward and backward (LocalVMamba-T bf16 at 128 per H100:
    37.0 -> 21.1 GiB for -5.7% img/s; BENCHMARKS.md session 9).
    The default backward for every scan whose shape fits (N = 16, 32 channels per group),
    through a scan-order table or not, is `_backward_kernel_lanes`: one channel per lane on
    32-channel tiles, the state as N [32] vectors, dB/dC through a butterfly reduce-scatter
    of inline shuffles (H100: -12% fwd+bwd at stage 1; LocalVMamba-T's train step +8.0% with it on
    stages 1-2 and +3.2% more on every stage, same-call comparisons; BENCHMARKS.md session 15),
    its chunk start states in a scratch buffer so that its chunk passes are loops, and B/C
    read as float32 (H200: train step +8.3% more and 62 s less compile; session 16), its
    states kept in an XOR-by-lane order with each step's [B, C] as one row handed out by
    shuffles (H200: train step +2.7% and +1.7% more; session 17), and capped at 168
    registers in plain order too, where it now also replaced the row kernels below 512 steps
    (H200: LocalVim-T's train step +9.0%, peak 23.0 -> 17.4 GiB; session 18).
    dB/dC (summed over the channels of a group) are written as one partial per channel tile,
    [batch, tokens, tiles, N], and summed afterwards; dA, dD and d delta_bias are per-program
    partials summed over batch afterwards. No atomics, so results are deterministic.
  * scan order fused into the memory accesses (LocalVMamba's multi-direction scan): with a
    `read_index` [groups, L_seq] (group = direction; -1 = pad token), step s of group g reads
    token read_index[g, s] of the spatial-order inputs; a pad step reads u = 0, B = C = 0,
    raw delta = 0 (then + bias, softplus): a decay-only step, as the official zero-padded
    window scan. Outputs are written either at that same token (`write_at_tokens=True`:
    exact when the merge is the inverse of the gather, which holds for every direction except
    the official v/v_flip merge on non-square grids) or in scan order, for the caller to merge
    with an XLA gather (the general fallback). Gradients w.r.t. u, delta, z, B, C come back in
    spatial order the same way (each real token is read exactly once per direction, checked).

Backend choice: the Triton backend of `pl.pallas_call` (the default on GPU in jax 0.11).
The kernel is a latency-bound sequential loop over short register tiles with scalar index
loads, which maps directly to Triton's programming model (any NVIDIA GPU Triton supports,
sm_80+ in practice; tested on H100). Mosaic GPU (`pallas.mosaic_gpu`) needs Hopper+ and a
warpgroup-level formulation; for this loop it offers nothing measured to be faster, and the
calibration in docs/accelerator_notes (Triton, 3.96 ms vs mamba CUDA 13.6 ms forward at
stage 1) shows Triton is adequate. jax 0.12 warns that the Triton backend is deprecated:
`is_supported()` returns False wherever `pallas.triton` is missing, and callers then use the
pure-JAX path ("associative").
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np

from localmamba_jax.ops.kernels import register_cap
from localmamba_jax.ops.kernels.common import (check_read_index, fold_to,
                                               fused_multi_direction_scan,
                                               largest_pow2_divisor, on_gpu)

try:  # pragma: no cover - availability depends on the installed jax
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plt
  _HAVE_PALLAS_TRITON = True
except ImportError:  # pragma: no cover
  pl = plt = None
  _HAVE_PALLAS_TRITON = False

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)
# Defaults from the H100 sweeps at LocalVMamba-T stage 1 (BENCHMARKS.md): forward 64-channel
# tiles on 2 warps; backward 16-channel tiles on 1 warp (the chunk's states live in registers:
# larger tiles/chunks spill or cut occupancy); checkpoints every 8 steps. Saving states less
# often (checkpoint_every 16 with sub-checkpoints rebuilt in registers) was measured 1.4-2.7x
# slower in the backward, and keeping the decays gained nothing: both stay opt-in. The lean
# backward schedule with written-out FMAs: fwd+bwd 22.1 vs 26.6 ms in the same run (spill
# requests 21 M -> 0.3 M per batch-8 call under ncu).
DEFAULT_CHUNK = None             # None = _chunk_default(): 8 for the lean indexed backward, else 4
DEFAULT_CHECKPOINT_EVERY = None  # None = the chunk when that is the default, else 8
FORWARD_CHUNK = 8                # the chunk of the lean backward read through a read_index
# A forward that no backward follows (inference) writes no checkpoints, so its chunk only
# groups loads, and nothing else competes for its registers. Chunk 4 under a cap of 80
# registers (24 resident warps per SM instead of 16 at the 121 registers ptxas takes for chunk
# 8: stage 1's 1536 programs then fit in one wave of the H100's 132 SMs): LocalVMamba-T's bf16
# eval step 3423.1 -> 3518.4 img/s (+2.8%, same H100 call, 2026-11-27; BENCHMARKS.md session
# 8). A sharp optimum in the micro-benchmark (stage-1 forward: cap 72 3.29 ms, 80 3.08,
# 88 3.93, chunk 8 uncapped 3.22), so it is re-measured with the step whenever Triton changes.
FORWARD_ONLY_CHUNK = 4
FORWARD_ONLY_MAX_REGISTERS = 80
# A forward that no backward follows at a batch too small to fill the GPU (`seq_parts`,
# `_forward_only_layout`). Below SMALL_BATCH_WARPS warps in its usual layout it takes
# SMALL_BATCH_TILE-channel tiles on one warp, and cuts the sequence into as many parts (a
# power of two, each of at least MIN_PART_STEPS steps) as keep it within FILL_WARPS warps.
# Measured on an H200 (bf16, forward only, the models' fused path; BENCHMARKS.md session 27):
# the parts won where a few hundred warps or fewer walked long sequences (stage 1 at batch 1
# 1.36 -> 0.18 ms with 32 parts, batch 8 1.88 -> 0.73 with 8; stage 2 at batch 1 0.43 ->
# 0.16; stage 3 at batch 1 0.23 -> 0.12 with 7 parts of 28 steps) and lost from ~1500 warps
# up (stage 3 at batch 8: 0.18 in one part, 0.29 in two), and the small tile lost to the usual
# one from 1536 usual warps up (stage 2 at batch 32: 0.71 -> 0.83 ms). Sized for the 132 SMs
# of an H100 / H200.
SMALL_BATCH_WARPS = 1024
FILL_WARPS = 2048
SMALL_BATCH_TILE = 16
MIN_PART_STEPS = 16
PART_FOLD_UNROLL = 8  # parts folded per group of loads (`_part_output_kernel`)
DEFAULT_KEEP_DECAY = False
# keep_dl + sfu (H100, fp32, batch 128, same run, 2026-11-27): fwd+bwd stage 1 22.48 -> 20.30 ms,
# stage 2 11.33 -> 10.43, stage 3 7.29 -> 6.38, stage 4 3.83 -> 3.60, LocalVim-T 1.40 -> 1.20;
# errors against float64 unchanged (BENCHMARKS.md). Those shapes are plain order. Where the scan
# reads through a scan-order table (LocalVMamba's fused multi-direction path) keep_dl was
# measured slower: stage 1, bf16, fwd+bwd 32.11 ms with it against 28.14 without (sfu on both;
# 29.26 with neither), and LocalVMamba-T's train step ran at 449.6 img/s with both against
# 465.4 with neither (same H100, same call). So keep_dl was limited to plain-order scans
# (sessions 5-11); sfu stays on (fused bf16 -3.8%, fused fp32 +2.4%, plain -4%).
# Session 12 (H100, 2026-11-27, two calls on one machine, fwd+bwd at the stage-1 plain shape):
# the series softplus without keep_dl beat keep_dl with libdevice's log1pf, fp32 18.47 / 18.40
# -> 17.89 / 17.83 ms, bf16 18.38 / 18.57 -> 17.66 / 17.74 (168 registers offline instead of
# 219, so 12 resident warps per SM instead of 9). So keep_dl is off everywhere by default.
DEFAULT_KEEP_DL = False
DEFAULT_SFU = True
# Two options that tested the guess that the fused path's lean adjoint waits on its table
# loads, keep_tokens (reuse the recompute's table entries) and index_ahead (load each entry a
# step early), were measured slower on an H100 (session 6: stage-1 fused fwd+bwd 32.64 against
# 26.89 ms; -9.4% in LocalVMamba-T's train step) and removed (BENCHMARKS.md).
DEFAULT_LEAN = None  # None = _lean_default(): lean for long scans and the shortest indexed ones
# In LocalVMamba-T's train step (jax.profiler, H100, bf16; profiles of the batched and the lean
# kernel on two H100 machines) the lean schedule cut the stage-1/2 backward from 30.2 / 14.9
# to 24.4 / 11.9 ms per call but slowed the stage-3 one (L = 196,
# read through the scan-order table) from 7.2 to 9.1 ms; plain-order short scans (LocalVim,
# L = 197) gained (1.63 -> 1.30 ms fwd+bwd) at chunk 8; at chunk 4 the batched schedule is
# faster there (PLAIN_CHUNK below), so scans shorter than this take the batched one in both orders.
LEAN_MIN_SEQ = 512
# Register caps (PTX .maxnreg, ops/kernels/register_cap.py). H100, bf16, batch 128, fused
# multi-direction path, fwd+bwd, same call (2026-11-27, BENCHMARKS.md session 7): a backward cap
# of 168 registers (12 resident warps per SM instead of 8) took the lean backward at stage 1
# from 26.99 to 23.37 ms and stage 2 from 13.12 to 11.75; 200, 144 and 128 were slower than
# 168. The lean backward at L = 64 (stage 4) under the cap ran 3.64 ms against 4.51 for the
# batched schedule, while at L = 196 (stage 3) the batched one stayed ahead (7.50 against 8.33).
# The batched schedule slows down under a cap (it already spills at 255), and so does the
# plain-order backward (LocalVim's shape: 1.18 -> 1.73 ms), as does a forward cap of 96
# (stage 1: 3.98 -> 4.83 ms). So the cap applies to the lean backward read through a
# scan-order table only, and short tables (<= LEAN_MAX_SHORT_INDEXED_SEQ) take the lean one.
LEAN_MAX_SHORT_INDEXED_SEQ = 64
# (session 18 extended the cap to every lanes backward, `_bwd_max_registers_default`)
BWD_MAX_REGISTERS_CAP = 168
# The batched backward through a scan-order table (stage 3, L = 196) with chunk 4, checkpoints
# every 4 steps and the cap of 168 ran fwd+bwd 5.15 ms against 7.62 for chunk 8 uncapped (same
# H100 call, bf16, batch 128; chunk 4 without the cap was not timed): its forward writes twice
# the checkpoints (+0.2 ms) and its backward holds half the states. So that schedule defaults
# to chunk 4 with the cap. A forward that no backward follows (inference) writes no
# checkpoints and takes FORWARD_ONLY_CHUNK (`_scan`).
BATCHED_INDEXED_CHUNK = 4
# Plain-order scans (no read_index) also back-propagate faster with chunk 4 and checkpoints
# every 4, uncapped (H100, 2026-11-27, same call; BENCHMARKS.md session 8): stage-1 shape
# (L = 3136, lean) fwd+bwd fp32 20.17 -> 18.27 ms, bf16 22.03 -> 18.53; LocalVim-T's shape
# (L = 197) with the batched schedule bf16 1.29 -> 1.15, fp32 1.17 -> 1.04 (lean, chunk 8 before).
# The price is twice the checkpoints: b * L / 4 * C * N float32.
PLAIN_CHUNK = 4
DEFAULT_FMA = True
# Keep the forward's state checkpoints for the backward (False, the fast default) or rebuild
# them there (True: less memory, one more forward per scan; `recompute_checkpoints`).
DEFAULT_RECOMPUTE_CHECKPOINTS = False
# None: no cap on a forward a backward follows (a cap of 96 was measured slower there), and
# FORWARD_ONLY_MAX_REGISTERS on one that no backward follows
DEFAULT_MAX_REGISTERS = None
DEFAULT_BWD_MAX_REGISTERS = None  # None = _bwd_max_registers_default()
DEFAULT_TILE = 64
DEFAULT_BWD_TILE = 16
# The series softplus (_log1p_unit) where the scan reads through a scan-order table (None =
# _poly_softplus_default). H100, bf16, batch 128, same call (2026-11-27, BENCHMARKS.md session
# 11): fused fwd+bwd stage 1 23.20 -> 20.37 ms, stage 2 11.18 -> 9.72, stage 3 5.09 -> 4.49,
# stage 4 3.58 -> 3.01, and LocalVMamba-T's train step 702.4 -> 748.5 img/s (eval 3381.7 ->
# 3424.4), peak unchanged. In plain order (which keeps Delta, so one softplus per step less)
# it was slower: stage 1 fp32 18.16 -> 21.57, bf16 18.28 -> 19.32, LocalVim 0.88 -> 0.95.
# Without keep_dl it is faster there too in the lean schedule (session 12, DEFAULT_KEEP_DL), so
# the series is the default for every lean backward; the batched plain-order one (LocalVim,
# L = 197, where keep_dl plays no part) keeps libdevice's log1pf (0.88 against 0.95 ms).
DEFAULT_POLY_SOFTPLUS = None
# The backward with one channel per lane (`_backward_kernel_lanes`), measured on H100s
# (2026-11-28, BENCHMARKS.md session 15; bf16 inputs, batch 128, same call each):
#   * fused fwd+bwd (float32 output, uncapped): stage 1 20.35 -> 18.43 ms with chunk 4,
#     17.83 with chunk 2 (checkpoints every 8 either way); stage 3 4.59 -> 4.50 with chunk 4;
#   * plain order: stage 1 17.48 -> 15.34 ms, but LocalVim-T's 197 steps 0.90 -> 0.99;
#   * LocalVMamba-T's train step (chunk 2, checkpoints every 8, the 168-register cap of
#     scans read through a table): pipelined 844.5 -> 911.7 img/s with it on stages 1-2,
#     895.0 -> 923.9 with it on every stage (peak 37.00 -> 31.80 GiB: stage 3's batched
#     backward saved a state every 4 steps).
# So lanes=None resolved to it for every scan read through a scan-order table and for plain
# scans of at least 512 steps, wherever the shape fits (N = 16, 32 channels per group) and no
# backward tile or warp count is asked for.
# Session 16 (H200, 2026-11-28, BENCHMARKS.md) changed its schedule: the chunk start states
# go through a scratch buffer and the chunk passes are loops instead of unrolled code, and
# B/C are read as float32. Fused fwd+bwd bf16: stage 3 4.35 -> 4.27 ms (float32 B/C) -> 3.92
# (scratch), stage 1 16.09 -> 15.52 -> 14.60; train step pipelined 979.6 -> 1061.0 img/s,
# compile 157.5 -> 95.4 s.
# Session 18 (H200, 2026-11-28, BENCHMARKS.md) re-measured plain order, bf16, batch 128,
# fwd+bwd: under the 168-register cap (now on every lanes backward) stage 1 14.27 -> 12.91 ms,
# stage 2 7.19 -> 6.59; and lanes against the row kernels on short plain scans: stage 3
# (196 steps) 4.80 -> 3.54, stage 4 (64) 3.04 -> 2.54, LocalVim-T's 197 steps 0.96 -> 0.80;
# LocalVim-T's bf16 train step 1424.6 -> 1552.1 img/s pipelined, peak 23.02 -> 17.36 GiB.
# So the 512-step minimum for plain scans is gone: lanes=None resolves to the lanes backward
# for every scan whose shape fits (`_lanes_default`).
DEFAULT_LANES = True
LANES_CHUNK = 2  # its backward's chunk; the forward keeps FORWARD_CHUNK (only groups loads)
# measured on an H200 (session 17), LocalVMamba-T bf16 train step at 128, same call each:
# +2.7% with the XOR state order (B, C gathered per slot), then +1.7% more with the [B, C]
# rows handed out by shuffles, which replaced the gathers
# (B_t and C_t as half-rows, each slot's value by a butterfly shuffle of constant mask, had
# fewer static instructions offline but ran slower on an H200, session 18: stage-1 fused
# fwd+bwd +0.7..+2.3%, train step 1106.4 -> 1098.9 img/s; its code is not kept)
DEFAULT_LANES_XOR = True
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def is_supported(channels: int, groups: int, num_state: int, dtypes=()) -> bool:
  """Whether the kernel covers this problem (else callers use the pure-JAX scan).

  Triton needs power-of-two register shapes: N must be a power of two and a channel tile
  (>= 8 channels, for speed) must divide the channels of one group. float64 is not
  supported (tests compare against float64 through the pure-JAX reference instead).
  """
  if not _HAVE_PALLAS_TRITON or num_state & (num_state - 1) or num_state > 256:
    return False
  if channels % groups or largest_pow2_divisor(channels // groups, DEFAULT_TILE) < 8:
    return False
  return all(jnp.dtype(d) in map(jnp.dtype, _SUPPORTED_DTYPES) for d in dtypes)


def _forward_warps(tile: int) -> int:
  return 1 if tile <= 32 else 2


def _whole_chunk_parts(parts: int, seq_len: int, chunk: int) -> int:
  """How many parts `parts` asked for become when each holds whole chunks of the sequence
  (`_part_segments` gives each the same number of chunks, the last one fewer)."""
  chunks = -(-seq_len // chunk)
  per_part = -(-chunks // min(parts, chunks))
  return -(-chunks // per_part)


def _forward_only_layout(seq_parts, batch, channels, per_group, seq_len, chunk, tile,
                         tile_given):
  """(tile, parts) of a forward that no backward follows, or None for its usual layout (the
  forward's tile, one part). seq_parts=None: smaller tiles and parts only where the batch
  leaves the usual layout under SMALL_BATCH_WARPS warps (see there); an int: that many parts
  (1 = the usual layout)."""
  if seq_parts is not None:
    if not isinstance(seq_parts, (int, np.integer)) or seq_parts < 1:
      raise ValueError(f"selective_scan_pallas: seq_parts must be an integer >= 1 or None "
                       f"(chosen from the batch), got {seq_parts!r}.")
    parts = _whole_chunk_parts(int(seq_parts), seq_len, chunk)
    return None if parts == 1 else (tile, parts)
  if batch * (channels // tile) * _forward_warps(tile) >= SMALL_BATCH_WARPS:
    return None
  if not tile_given:
    tile = largest_pow2_divisor(per_group, SMALL_BATCH_TILE)
  warps = batch * (channels // tile) * _forward_warps(tile)
  parts = 1
  while (warps * parts * 2 <= FILL_WARPS and seq_len // (parts * 2) >= MIN_PART_STEPS
         and seq_len // (parts * 2) >= chunk):
    parts *= 2
  return tile, _whole_chunk_parts(parts, seq_len, chunk)


def _lean_default(seq_len: int, indexed: bool) -> bool:
  return seq_len >= LEAN_MIN_SEQ or (indexed and seq_len <= LEAN_MAX_SHORT_INDEXED_SEQ)


def _chunk_default(lean: bool, indexed: bool) -> int:
  if not indexed:
    return PLAIN_CHUNK
  return FORWARD_CHUNK if lean else BATCHED_INDEXED_CHUNK


def _bwd_max_registers_default(lean: bool, indexed: bool, chunk: int,
                               lanes: bool = False) -> int | None:
  # the lanes backward is capped in plain order too (H200, session 18: uncapped it took 236
  # registers, 8 warps per SM; capped, stage-1 plain fwd+bwd 14.27 -> 12.91 ms)
  capped = lanes or (indexed and (lean or chunk <= BATCHED_INDEXED_CHUNK))
  return BWD_MAX_REGISTERS_CAP if capped else None


def _poly_softplus_default(indexed: bool, lean: bool) -> bool:
  return indexed or lean


def _chunking(chunk, checkpoint_every, seq_len):
  """(chunk, checkpoint_every) checked and shrunk to the sequence (same results, less unrolling)."""
  if checkpoint_every is None:
    checkpoint_every = chunk
  for name, value in (("chunk", chunk), ("checkpoint_every", checkpoint_every)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"selective_scan_pallas: {name} must be an integer >= 1, got {value!r}.")
  if checkpoint_every % chunk:
    raise ValueError(f"selective_scan_pallas: checkpoint_every ({checkpoint_every}) must be a "
                     f"multiple of chunk ({chunk}); e.g. checkpoint_every="
                     f"{chunk * max(1, checkpoint_every // chunk)}.")
  chunk_ = max(1, min(int(chunk), seq_len))
  ratio = checkpoint_every // chunk if chunk_ == chunk else 1
  ratio = max(1, min(ratio, -(-seq_len // chunk_)))
  return chunk_, chunk_ * ratio


@dataclasses.dataclass(frozen=True)
class _Config:
  seq_len: int                 # L_seq: steps of the recurrence
  chunk: int                   # steps per unrolled chunk (the backward's recompute unit)
  checkpoint_every: int        # steps per saved state (a multiple of chunk)
  tile: int                    # forward channel tile
  bwd_tile: int                # backward channel tile (holds `chunk` states in registers)
  softplus: bool
  # softplus as max(x, 0) + a series for log1p on (0, 1] (_log1p_unit) instead of libdevice's
  # log1pf
  poly_softplus: bool
  has_z: bool
  # Whether a read_index [groups, seq_len] (token per step, -1 = pad) is passed. The table
  # itself is kernel DATA, not part of this static config: blocks that differ only in their
  # scan directions then share one traced and compiled kernel (compile time, issue 9).
  indexed: bool
  write_at_tokens: bool        # outputs at the read token (True) or at the step (False)
  num_warps: int
  bwd_num_warps: int
  keep_decay: bool             # backward keeps exp(Delta A) of the recompute for the adjoint
  keep_dl: bool                # lean backward keeps Delta of the recompute for the adjoint
  sfu: bool                    # exp / reciprocal on the special-function unit (_exp_sfu)
  lean: bool                   # backward holds one step's loads at a time (see _backward_kernel)
  fma: bool                    # fused multiply-adds written out (see _fma)
  interpret: bool
  out_dtype: str | None = None  # dtype of the output (None: u's); a name, for hashing
  # the chunk of a forward that no backward follows (`_scan`'s primal), which writes no
  # checkpoints: they cost the forward time (stage 1: 2.5 GB per call) and only the
  # backward reads them
  fwd_only_chunk: int = FORWARD_ONLY_CHUNK
  fwd_only_max_registers: int | None = FORWARD_ONLY_MAX_REGISTERS
  save_checkpoints: bool = True
  # The forward writes out (False: a forward run only to rebuild the checkpoints for the
  # backward, `recompute_checkpoints`: it then skips C, z, the outputs and their stores).
  write_output: bool = True
  # The backward rebuilds the checkpoints with one more forward instead of keeping them from
  # the first one (whose residuals are then only the inputs): less memory between a model's
  # forward and backward (b * L / checkpoint_every * C * N float32 per call), one more
  # forward per call.
  recompute_checkpoints: bool = False
  max_registers: int | None = None      # forward's PTX .maxnreg (register_cap); None: no cap
  bwd_max_registers: int | None = None  # backward's
  # the backward with one channel per lane (`_backward_kernel_lanes`; bwd_tile = 32, one warp)
  lanes: bool = False
  lanes_ahead: bool = True  # its adjoint loads the previous step's inputs before its stores
  # its lane l keeps state q ^ (l mod N) in slot q (`_backward_kernel_lanes`): a reduce-scatter
  # with 2N instead of 4N - 2 selects per step; it then reads each step's [B_t, C_t] as one
  # [2N] row (entry l in lane l) and hands each slot its values by shuffles
  lanes_xor: bool = False
  # (tile, parts) of a forward that no backward follows, where the batch is too small to fill
  # the GPU (`_forward_only_layout`); None: the forward's own tile, one part
  fwd_only_layout: tuple[int, int] | None = None
  seq_parts: int = 1  # parts of the sequence run in parallel (`_forward_parts_call`)


def _out_dtype(cfg, u):
  return jnp.dtype(cfg.out_dtype) if cfg.out_dtype is not None else u.dtype


# ----------------------------------------------------------------------------- kernel pieces

def _softplus(x, cfg):
  if cfg.poly_softplus:
    # max(x, 0) + log1p(e^-|x|): the log1p argument is in (0, 1] (_log1p_unit). Above 20 this
    # is x + e^-x, x itself in fp32, as mamba's threshold returns it.
    return jnp.maximum(x, 0.0) + _log1p_unit(_exp_sfu(-jnp.abs(x), cfg), cfg)
  # mamba's threshold: x above 20 is returned as is (log1p(exp(x)) == x in fp32 there).
  # exp through the special-function unit (_exp_sfu); log1p stays libdevice's: for the
  # usual Delta (softplus of -7..-2) 1 + e^x would lose 3-4 digits in a plain log.
  return jnp.where(x > 20.0, x, jnp.log1p(_exp_sfu(jnp.minimum(x, 20.0), cfg)))


# 2 / (2k + 1), k = 0..6: the series 2 atanh(s) = sum_k 2 s^(2k+1) / (2k + 1)
_ATANH_SERIES = tuple(2.0 / (2 * k + 1) for k in range(7))


def _log1p_unit(y, cfg):
  """log1p(y) for y in [0, 1], as 2 atanh(s) with s = y / (2 + y) in [0, 1/3]: seven terms
  of the odd series (the terms left out sum to <= 1.6e-8 relative at y = 1), one reciprocal
  and 6 multiply-adds, in place of libdevice's log1pf. Why: softplus runs per channel and
  step, twice in the backward, on each of the 4 lanes holding that channel; removing it from
  the kernels altogether made the fused backward 10-13% faster, and this series 12-16%
  (BENCHMARKS.md session 11). Accuracy: the relative errors of the reciprocal and of e^-|x|
  (~2^-22, special-function unit) carry over about one to one.
  """
  s = y * _reciprocal(2.0 + y, cfg)
  s2 = s * s
  series = jnp.full_like(s2, _ATANH_SERIES[-1])
  for c in reversed(_ATANH_SERIES[:-1]):
    series = _fma(series, s2, c, cfg)
  return s * series


def _exp2(x, cfg):
  """2**x. On the GPU straight to the special-function unit (ex2.approx.ftz.f32, rel. error
  ~2^-22): libdevice's __nv_exp2f, which the Triton lowering of jnp.exp2 calls, adds range
  handling around the same instruction that the selective scan does not need (its argument
  Delta * A * log2(e) is <= 0 and underflow to 0 is the right answer)."""
  if cfg.interpret:
    return jnp.exp2(x)
  [y] = plt.elementwise_inline_asm("ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f",
                                   pack=1, result_shape_dtypes=[_like(x)])
  return y


def _fma(a, b, c, cfg):
  """a * b + c as one fused multiply-add (broadcast to a common shape).

  The Triton lowering emits separate multiplies and adds (ncu on the H100: 277 M unfused vs
  48 M fused FP32 instructions in the backward), so the recurrences' multiply-adds are written
  as fma.rn.f32: half the instructions on the critical path and one rounding instead of two.
  """
  if cfg.interpret or not cfg.fma:
    return a * b + c
  shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b), jnp.shape(c))
  a, b, c = (jnp.broadcast_to(x, shape).astype(jnp.float32) for x in (a, b, c))
  [y] = plt.elementwise_inline_asm("fma.rn.f32 $0, $1, $2, $3;", args=[a, b, c],
                                   constraints="=f,f,f,f", pack=1,
                                   result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)])
  return y


def _exp_sfu(x, cfg):
  """e**x as ex2.approx(x log2 e) (rel. error ~2^-22; underflow flushes to 0), without the
  range handling of libdevice's expf, which the Triton lowering of jnp.exp calls
  (cfg.sfu; interpret mode keeps jnp.exp)."""
  if cfg.interpret or not cfg.sfu:
    return jnp.exp(x)
  return _exp2(x * LOG2_E, cfg)


def _reciprocal(x, cfg):
  """1 / x as rcp.approx.ftz.f32 (rel. error ~2^-23) instead of the IEEE division sequence."""
  if cfg.interpret or not cfg.sfu:
    return 1.0 / x
  [y] = plt.elementwise_inline_asm("rcp.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f",
                                   pack=1, result_shape_dtypes=[_like(x)])
  return y


def _sigmoid(x, cfg):
  # no cancellation in 1 / (1 + e^-x): the SFU's ~2^-22 relative errors stay ~2^-21 here
  # (x -> -inf: e^-x -> inf, rcp(inf) = 0, the right limit)
  return _reciprocal(1.0 + _exp_sfu(-x, cfg), cfg)


def _load_step(cfg, refs, b, group, c0, cu0, cz0, tile, t, *, need_c=True, dout_ref=None,
               scalar_states=None, state_row=None):
  """Issues the loads of step t of one program's tile; returns them raw (unmasked).

  Loading is kept apart from use (`_derive`) so that a whole chunk's loads can be issued
  before any of the chunk's stores: the compiler cannot move a load above a store to another
  buffer (it cannot prove they do not alias), so a load placed after a store costs one full
  memory latency on the critical path of every step.
  scalar_states=N: B_t and C_t as N warp-uniform scalars (lists; one channel per lane,
  `_backward_kernel_lanes`) instead of [N] vectors. state_row=2N: b_ref holds the [B_t, C_t]
  rows, loaded whole as raw["bct"] (cfg.lanes_xor).
  """
  u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref = refs
  t_safe = _clamped_step(cfg, t)
  raw_token = t_safe if index_ref is None else _table_entry(cfg, index_ref, group, t)
  token = jnp.maximum(raw_token, 0).astype(jnp.int32)
  def states(ref):
    if scalar_states is not None:
      return [ref[b, token, group, n] for n in range(scalar_states)]
    return plt.load(ref.at[b, token, group, :])
  raw = dict(raw_token=raw_token,
             u=plt.load(u_ref.at[b, token, pl.ds(cu0, tile)]),
             draw=plt.load(delta_ref.at[b, token, pl.ds(c0, tile)]))
  if state_row is not None:
    raw["bct"] = plt.load(b_ref.at[b, token, group, pl.ds(0, state_row)])
  else:
    raw["bt"] = states(b_ref)
    if need_c:
      raw["ct"] = states(c_ref)
  if need_c:
    if cfg.has_z:
      raw["zt"] = plt.load(z_ref.at[b, token, pl.ds(cz0, tile)])
  if dout_ref is not None:
    write_pos = token if cfg.write_at_tokens else t_safe
    raw["dout"] = plt.load(dout_ref.at[b, write_pos, pl.ds(c0, tile)])
  return raw


def _clamped_step(cfg, t):
  """Step t clamped to the sequence (steps past its end read the last token, then masked)."""
  return jnp.minimum(jnp.asarray(t, jnp.int32), jnp.int32(cfg.seq_len - 1))


def _table_entry(cfg, index_ref, group, t):
  """read_index[group, t], t clamped to the sequence."""
  return index_ref[group, _clamped_step(cfg, t)]


def _derive(cfg, raw, t, bias, dl=None):
  """Per-step values (fp32) from the raw loads of step t: pads and past-the-end steps masked.
  dl: Delta of this step if already known (keep_dl: the adjoint reuses the recompute's)."""
  t = jnp.asarray(t, jnp.int32)
  in_range = t < cfg.seq_len
  raw_token = raw["raw_token"]
  real = jnp.logical_and(raw_token >= 0, in_range) if cfg.indexed else in_range
  token = jnp.maximum(raw_token, 0).astype(jnp.int32)
  zero = jnp.float32(0.0)

  def f32(name):
    if isinstance(raw[name], list):
      # N scalars of B_t / C_t (one channel per lane, `_backward_kernel_lanes`), left unmasked
      # (N selects per step saved): a pad's u = 0 makes Delta u B_t = 0 whatever B_t, its
      # dout = 0 makes C_t dy = 0, and its gradients are not stored
      return [x.astype(jnp.float32) for x in raw[name]]
    return jnp.where(real, raw[name].astype(jnp.float32), zero)
  pre = f32("draw") + bias
  if dl is None:
    dl = _softplus(pre, cfg) if cfg.softplus else pre
    dl = jnp.where(in_range, dl, zero)  # steps past the sequence end are identities
  write_ok = real if cfg.write_at_tokens else in_range
  s = dict(u=f32("u"), pre=pre, dl=dl, bt=f32("bt"), token=token, real=real, in_range=in_range,
           write_pos=token if cfg.write_at_tokens else jnp.minimum(t, cfg.seq_len - 1),
           write_ok=write_ok)
  if "ct" in raw:
    s["ct"] = f32("ct")
    s["zt"] = raw["zt"].astype(jnp.float32) if cfg.has_z else None
  if "dout" in raw:
    s["dout"] = jnp.where(write_ok, raw["dout"].astype(jnp.float32), zero)
  return s


def _program_coords(cfg, tile, per_group, u_channels, z_channels):
  b = pl.program_id(0)
  j = pl.program_id(1)
  c0 = j * tile
  group = c0 // per_group
  return b, j, c0, group, c0 % u_channels, c0 % z_channels


def _forward_refs(refs, cfg, num_outputs):
  """A forward kernel's arguments as (index_ref, the seven input refs u..bias, z_ref, the refs
  after them (further inputs, then the outputs), the last `num_outputs` refs (the outputs))."""
  refs = list(refs)
  index_ref = refs.pop(0) if cfg.indexed else None
  inputs = refs[:7]
  z_ref = refs[7] if cfg.has_z else None
  return index_ref, inputs, z_ref, refs[7 + cfg.has_z:], refs[-num_outputs:]


def _forward_program(refs, cfg, per_group, u_channels, z_channels):
  """What every forward program reads once: its coordinates, A * log2(e), D and the bias of
  its tile, and the refs `_load_step` reads a step through."""
  index_ref, (u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref), z_ref, rest, _ = refs
  tile = cfg.tile
  b, _, c0, group, cu0, cz0 = _program_coords(cfg, tile, per_group, u_channels, z_channels)
  return types.SimpleNamespace(
      b=b, c0=c0, group=group, cu0=cu0, cz0=cz0, rest=rest,
      a2=a_ref[pl.ds(c0, tile), :],                  # A * log2(e), [tile, N] fp32
      d=d_ref[pl.ds(c0, tile)], bias=bias_ref[pl.ds(c0, tile)],
      load_refs=(u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref))


def _forward_segment(cfg, prog, seg, h, out_ref=None, dl_sum=None):
  """The `checkpoint_every` steps of segment `seg` from state h: returns the state after them
  (and dl_sum plus the segment's Delta, the exponent of its decay exp(A sum Delta), when a
  sum is passed). Writes the outputs to out_ref unless it is None (a states-only forward)."""
  tile, chunk = cfg.tile, cfg.chunk
  b, c0 = prog.b, prog.c0
  for r in range(cfg.checkpoint_every // chunk):
    first = seg * cfg.checkpoint_every + r * chunk
    raws = [_load_step(cfg, prog.load_refs, b, prog.group, c0, prog.cu0, prog.cz0, tile,
                       first + i, need_c=out_ref is not None)
            for i in range(chunk)]                  # a chunk's loads before its first store
    for i in range(chunk):
      s = _derive(cfg, raws[i], first + i, prog.bias)
      decay = _exp2(s["dl"][:, None] * prog.a2, cfg)
      h = _fma(decay, h, (s["dl"] * s["u"])[:, None] * s["bt"][None, :], cfg)
      if dl_sum is not None:
        dl_sum = dl_sum + s["dl"]                   # past-the-end steps have Delta = 0
      if out_ref is None:                           # only the states wanted
        continue
      y = _fma(prog.d, s["u"], jnp.sum(h * s["ct"][None, :], axis=1), cfg)
      if cfg.has_z:
        y = y * s["zt"] * _sigmoid(s["zt"], cfg)
      mask = jnp.broadcast_to(s["write_ok"], (tile,))
      plt.store(out_ref.at[b, s["write_pos"], pl.ds(c0, tile)], y.astype(out_ref.dtype),
                mask=mask)
  return h if dl_sum is None else (h, dl_sum)


def _forward_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  refs = _forward_refs(refs, cfg, 3)
  prog = _forward_program(refs, cfg, per_group, u_channels, z_channels)
  out_ref, ckpt_ref, last_ref = refs[-1]
  b, c0, tile = prog.b, prog.c0, cfg.tile

  def segment_body(seg, h):
    if cfg.save_checkpoints:
      ckpt_ref[b, seg, pl.ds(c0, tile), :] = h      # the state at every segment start
    return _forward_segment(cfg, prog, seg, h, out_ref if cfg.write_output else None)

  h0 = jnp.zeros((tile, prog.a2.shape[1]), jnp.float32)
  num_segments = num_chunks * cfg.chunk // cfg.checkpoint_every
  last_ref[b, pl.ds(c0, tile), :] = jax.lax.fori_loop(0, num_segments, segment_body, h0)


# The sequence-parallel forward (cfg.seq_parts > 1; forwards that no backward follows). One
# program per (image, channel tile) walks the whole sequence one step at a time, so at small
# batch a few dozen programs hold a GPU of 132 SMs and the step's latency sets the time
# (LocalVMamba-T at batch 1 on an H200: 3.45 of 4.49 ms of kernels in the scans, stage 1's two
# 3136-step scans 1.11 ms each; BENCHMARKS.md session 27). Cut the sequence into P parts of
# whole segments: a first kernel runs every part from a zero state and writes its end state
# and the sum of its Delta (the decay over a part is exp(A sum Delta), A being constant in
# time); a second kernel starts part p from the combined state of parts 0..p-1,
#     H_p = exp(A S_{p-1}) H_{p-1} + h_{p-1},   H_0 = 0,
# which each program folds itself (no launch in between), then writes the outputs of its part.
# Twice the recurrence's work, P times the programs, L / P steps each. The sums of h round in
# another order than the sequential walk: ~1e-7 relative in float32.
def _part_segments(cfg, num_chunks):
  num_segments = num_chunks * cfg.chunk // cfg.checkpoint_every
  return -(-num_segments // cfg.seq_parts)


def _part_summary_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  refs = _forward_refs(refs, cfg, 2)
  prog = _forward_program(refs, cfg, per_group, u_channels, z_channels)
  end_ref, dl_sum_ref = refs[-1]
  part, tile = pl.program_id(2), cfg.tile
  per_part = _part_segments(cfg, num_chunks)
  zero = (jnp.zeros((tile, prog.a2.shape[1]), jnp.float32), jnp.zeros((tile,), jnp.float32))
  h, dl_sum = jax.lax.fori_loop(
      0, per_part, lambda i, c: _forward_segment(cfg, prog, part * per_part + i, c[0],
                                                 dl_sum=c[1]), zero)
  end_ref[prog.b, part, pl.ds(prog.c0, tile), :] = h
  dl_sum_ref[prog.b, part, pl.ds(prog.c0, tile)] = dl_sum


def _part_output_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  refs = _forward_refs(refs, cfg, 2)
  prog = _forward_program(refs, cfg, per_group, u_channels, z_channels)
  end_ref, dl_sum_ref = prog.rest[:2]
  out_ref, last_ref = refs[-1]
  part, tile, b, c0 = pl.program_id(2), cfg.tile, prog.b, prog.c0
  per_part = _part_segments(cfg, num_chunks)
  h = jnp.zeros((tile, prog.a2.shape[1]), jnp.float32)
  # the state at this part's start, folded over the parts before it: unrolled, each group of
  # loads issued before its multiply-adds, and parts at or after this one weigh nothing
  for first in range(0, cfg.seq_parts - 1, PART_FOLD_UNROLL):
    group = range(first, min(first + PART_FOLD_UNROLL, cfg.seq_parts - 1))
    loads = [(end_ref[b, q, pl.ds(c0, tile), :], dl_sum_ref[b, q, pl.ds(c0, tile)])
             for q in group]
    for q, (end, dl_sum) in zip(group, loads):
      folded = _fma(_exp2(dl_sum[:, None] * prog.a2, cfg), h, end, cfg)
      h = jnp.where(q < part, folded, h)
  h = jax.lax.fori_loop(0, per_part, lambda i, h: _forward_segment(
      cfg, prog, part * per_part + i, h, out_ref), h)
  last_ref[b, part, pl.ds(c0, tile), :] = h


def _backward_refs(refs, cfg):
  """The backward kernels' refs in `_backward_call`'s order: (index, the 7 inputs u, delta, A,
  B, C, D, bias, z, dout, dlast, checkpoints, du, ddelta, dz, [the kernel's own outputs])."""
  refs = list(refs)
  index_ref = refs.pop(0) if cfg.indexed else None
  inputs, refs = tuple(refs[:7]), refs[7:]
  z_ref = refs.pop(0) if cfg.has_z else None
  (dout_ref, dlast_ref, ckpt_ref, du_ref, ddelta_ref), refs = refs[:5], refs[5:]
  dz_ref = refs.pop(0) if cfg.has_z else None
  return (index_ref, inputs, z_ref, dout_ref, dlast_ref, ckpt_ref, du_ref, ddelta_ref, dz_ref,
          refs)


def _z_gate_adjoint(cfg, s, y_of, store_dz):
  """out = y * silu(z): stores dL/dz, returns dL/dy. y_of() gives y = C_t h_t + D u_t."""
  zt, dout = s["zt"], s["dout"]
  sig = _sigmoid(zt, cfg)
  y = y_of()
  store_dz(dout * y * sig * (1.0 + zt * (1.0 - sig)))
  return dout * zt * sig


def _channel_adjoint(cfg, s, gb, ddl, dy, d, dd_acc, dbias_acc, store_du, store_ddelta):
  """The per-channel gradients of one step from gb = sum_n g B and ddl = dL/dDelta: stores
  du and d(delta before softplus); returns the running dD and d delta_bias sums."""
  du = gb * s["dl"] + d * dy
  dd_acc = dd_acc + dy * s["u"]
  dpre = ddl * _sigmoid(s["pre"], cfg) if cfg.softplus else ddl
  dpre = jnp.where(s["in_range"], dpre, 0.0)
  dbias_acc = dbias_acc + dpre
  store_du(du)
  store_ddelta(dpre)
  return dd_acc, dbias_acc


def _channel_store(ref, b, token, c0, tile, mask):
  """Stores a [tile] vector of per-channel values at (b, token, c0:c0 + tile), masked."""
  return lambda x: plt.store(ref.at[b, token, pl.ds(c0, tile)], x.astype(ref.dtype), mask=mask)


def _backward_kernel(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  """Reverse pass over segments of `checkpoint_every` = ratio * chunk steps.

  Per segment: reload its checkpoint; run forward through its first ratio - 1 chunks keeping
  only the state at each chunk start (sub-checkpoints, in registers); then, chunk by chunk in
  reverse, recompute the chunk's `chunk` states (and, with keep_decay, their decays) from the
  sub-checkpoint and run the adjoint recurrence through them. The next chunk's loads are
  issued before the current chunk's stores (see `_load_step`).
  """
  (index_ref, (u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref), z_ref, dout_ref,
   dlast_ref, ckpt_ref, du_ref, ddelta_ref, dz_ref, rest) = _backward_refs(refs, cfg)
  db_ref, dc_ref, da_ref, dd_ref, dbias_ref = rest
  tile, chunk = cfg.bwd_tile, cfg.chunk
  seg_len = cfg.checkpoint_every
  ratio = seg_len // chunk
  num_segments = num_chunks // ratio
  b, j, c0, group, cu0, cz0 = _program_coords(cfg, tile, per_group, u_channels, z_channels)
  a2 = a_ref[pl.ds(c0, tile), :]
  a_nat = a2 * LN_2
  d = d_ref[pl.ds(c0, tile)]
  bias = bias_ref[pl.ds(c0, tile)]
  load_refs = (u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref)
  num_state = a2.shape[1]

  def load_chunk(first, full):
    return [_load_step(cfg, load_refs, b, group, c0, cu0, cz0, tile, first + i, need_c=full,
                       dout_ref=dout_ref if full else None) for i in range(chunk)]

  def step_state(h, s):
    decay = _exp2(s["dl"][:, None] * a2, cfg)
    return _fma(decay, h, (s["dl"] * s["u"])[:, None] * s["bt"][None, :], cfg), decay

  def adjoint_step(s, h, decay, g_next, accs):
    da_acc, dd_acc, dbias_acc = accs
    u, dl, bt, ct, dout = s["u"], s["dl"], s["bt"], s["ct"], s["dout"]
    store = functools.partial(_channel_store, b=b, token=s["token"], c0=c0, tile=tile,
                              mask=jnp.broadcast_to(s["real"], (tile,)))
    if cfg.has_z:
      dy = _z_gate_adjoint(cfg, s, lambda: jnp.sum(h * ct[None, :], axis=1) + d * u,
                           store(dz_ref))
    else:
      dy = dout
    g = _fma(dy[:, None], ct[None, :], g_next, cfg)
    dlu = dl * u
    # dL/dDelta_t = sum_n g (B u + A exp(Delta A) h_{t-1}), dL/dA = sum_t g Delta exp(..) h_{t-1},
    # with exp(Delta_t A) h_{t-1} = h_t - Delta_t B_t u_t: one product serves both.
    g_decayed_prev = g * _fma(-dlu[:, None], bt[None, :], h, cfg)
    da_acc = _fma(dl[:, None], g_decayed_prev, da_acc, cfg)
    gb = jnp.sum(g * bt[None, :], axis=1)
    ddl = u * gb + jnp.sum(a_nat * g_decayed_prev, axis=1)
    dd_acc, dbias_acc = _channel_adjoint(cfg, s, gb, ddl, dy, d, dd_acc, dbias_acc,
                                         store(du_ref), store(ddelta_ref))
    n_mask = jnp.broadcast_to(s["real"], (num_state,))
    plt.store(db_ref.at[b, s["token"], j, :], jnp.sum(g * dlu[:, None], axis=0), mask=n_mask)
    plt.store(dc_ref.at[b, s["token"], j, :], jnp.sum(dy[:, None] * h, axis=0), mask=n_mask)
    if decay is None:
      decay = _exp2(dl[:, None] * a2, cfg)
    return g * decay, (da_acc, dd_acc, dbias_acc)   # g_next = exp(Delta_t A) g_t

  def segment_body(si, carry):
    g_next, accs = carry
    seg = num_segments - 1 - si
    first = seg * seg_len
    h = ckpt_ref[b, seg, pl.ds(c0, tile), :]
    if not cfg.lean:  # the last chunk's loads first: they fly during the sub-checkpoint pass
      full_raws = load_chunk(first + (ratio - 1) * chunk, True)
    sub_ckpts = [h]
    for r in range(ratio - 1):                 # sub-checkpoints (no stores: loads move freely)
      raws = load_chunk(first + r * chunk, False)
      for i in range(chunk):
        h, _ = step_state(h, _derive(cfg, raws[i], first + r * chunk + i, bias))
      sub_ckpts.append(h)
    for r in reversed(range(ratio)):
      chunk_first = first + r * chunk
      if cfg.lean:
        # Lean schedule: the recompute loads only u, delta, B (and drops them step by step);
        # the adjoint reloads each step's values (L1/L2 hits) one step ahead of its stores.
        # Live registers: the chunk's states plus two steps' loads, instead of all the
        # chunk's loads and derived values at once (ncu: 255 registers and 21 M spill
        # requests per batch-8 call with the batched schedule).
        raws = load_chunk(chunk_first, False)
        h, states, decays, dls = sub_ckpts[r], [], [], []
        for i in range(chunk):
          s = _derive(cfg, raws[i], chunk_first + i, bias)
          h, decay = step_state(h, s)
          states.append(h)
          decays.append(decay if cfg.keep_decay else None)
          dls.append(s["dl"] if cfg.keep_dl else None)
        del raws
        ahead = _load_step(cfg, load_refs, b, group, c0, cu0, cz0, tile, chunk_first + chunk - 1,
                           dout_ref=dout_ref)
        for i in reversed(range(chunk)):
          current = ahead
          if i:                                # issued before this step's stores
            ahead = _load_step(cfg, load_refs, b, group, c0, cu0, cz0, tile,
                               chunk_first + i - 1, dout_ref=dout_ref)
          s = _derive(cfg, current, chunk_first + i, bias, dl=dls[i])
          g_next, accs = adjoint_step(s, states[i], decays[i], g_next, accs)
        continue
      steps = [_derive(cfg, raws_i, chunk_first + i, bias)
               for i, raws_i in enumerate(full_raws)]
      if r:                                    # prefetch the previous chunk before our stores
        full_raws = load_chunk(first + (r - 1) * chunk, True)
      h, states, decays = sub_ckpts[r], [], []
      for s in steps:                          # recompute this chunk's states
        h, decay = step_state(h, s)
        states.append(h)
        decays.append(decay if cfg.keep_decay else None)
      for i in reversed(range(chunk)):         # adjoint recurrence through them
        g_next, accs = adjoint_step(steps[i], states[i], decays[i], g_next, accs)
    return g_next, accs

  zeros_tn = jnp.zeros((tile, num_state), jnp.float32)
  zeros_t = jnp.zeros((tile,), jnp.float32)
  g0 = dlast_ref[b, pl.ds(c0, tile), :]
  _, (da_acc, dd_acc, dbias_acc) = jax.lax.fori_loop(
      0, num_segments, segment_body, (g0, (zeros_tn, zeros_t, zeros_t)))
  da_ref[b, pl.ds(c0, tile), :] = da_acc
  dd_ref[b, pl.ds(c0, tile)] = dd_acc
  dbias_ref[b, pl.ds(c0, tile)] = dbias_acc


# ----------------------------------------------------- backward with one channel per lane

# The backward above keeps the state as a [16 channels, N] register tile whose layout Triton
# picks: 8 lanes of channels x 4 lanes of N, so every per-channel value (u, Delta, softplus,
# sigmoid, du, ...) is computed on 4 lanes, and dB/dC (sums over channels) cost 3 shuffle
# levels per state pair per step. Here the state is N separate [32] vectors (a Python list):
# on one warp each lane owns one channel and all N of its states (a 1-D tensor of 32 elements
# on 32 threads is laid out one element per lane: Triton's coalescing caps the elements per
# thread at elements / threads), so per-channel work runs once and sums over N are in-thread
# multiply-adds. The 2N sums over the warp's channels (dB_t, dC_t) are one butterfly
# reduce-scatter (`_reduce_scatter_lanes`): 31 shuffles, 31 adds and 62 selects per step for
# all 32 sums, each lane ending with one of them, stored as one coalesced 128-byte row.
# Session 5 tried one channel per lane with 32 full warp reductions per step (~320
# instructions) and chunk 8 (255 registers, spills) and measured it slower (BENCHMARKS.md).
LANES = 32


def _lanes_supported(num_state: int, per_group: int) -> bool:
  """The lanes backward: 2N sums scattered one per lane of a 32-lane warp, 32-channel tiles."""
  return 2 * num_state == LANES and per_group % LANES == 0


def _lanes_default(num_state, per_group, bwd_tile, bwd_num_warps) -> bool:
  return (DEFAULT_LANES and _lanes_supported(num_state, per_group)
          and bwd_tile in (None, LANES) and bwd_num_warps in (None, 1))


def _shfl_xor(v, mask, cfg):
  """Lane l gets lane (l ^ mask)'s value (shfl.sync.bfly); interpret mode: the same permutation
  of the vector's elements (element i = lane i, as on the GPU)."""
  if cfg.interpret:
    return v[jax.lax.broadcasted_iota(jnp.int32, v.shape, 0) ^ mask]
  [y] = plt.elementwise_inline_asm(f"shfl.sync.bfly.b32 $0, $1, {mask}, 0x1f, 0xffffffff;",
                                   args=[v], constraints="=f,f", pack=1,
                                   result_shape_dtypes=[_like(v)])
  return y


def _shfl_idx(v, source_lane, cfg):
  """Lane l gets lane source_lane[l]'s value (shfl.sync.idx, a per-lane source); interpret
  mode: the same gather over the vector's elements (element i = lane i)."""
  if cfg.interpret:
    return v[source_lane]
  [y] = plt.elementwise_inline_asm("shfl.sync.idx.b32 $0, $1, $2, 0x1f, 0xffffffff;",
                                   args=[v, source_lane], constraints="=f,f,r", pack=1,
                                   result_shape_dtypes=[_like(v)])
  return y


def _reduce_scatter_lanes(values, cfg):
  """32 per-lane [32] vectors -> one [32] vector whose lane i holds sum over lanes of values[i].

  Butterfly: at the level with lane mask m each lane keeps one half of its values (the upper
  half where bit m of its lane is set), adds the partner lane's copy of that half, and sends
  the other half: 16 + 8 + 4 + 2 + 1 shuffles in all. Element i of the result is the sum of
  values[i] because the kept halves follow the lane's bits from the top.
  """
  lane = jax.lax.broadcasted_iota(jnp.int32, values[0].shape, 0)
  mask = LANES // 2
  while len(values) > 1:
    half = len(values) // 2
    upper = (lane & mask) != 0
    values = [jnp.where(upper, hi, lo) + _shfl_xor(jnp.where(upper, lo, hi), mask, cfg)
              for lo, hi in zip(values[:half], values[half:])]
    mask //= 2
  return values[0]


def _reduce_scatter_lanes_xor(db_terms, dc_terms, cfg):
  """`_reduce_scatter_lanes` of [dB terms, dC terms] held in XOR-permuted slots: in lane l,
  slot q holds state q ^ (l mod N) (cfg.lanes_xor), so that slot p of the 2N values stands for
  entry p ^ l of the [dB, dC] row. At the level with lane mask m, the entries lane l keeps
  (bit m equal to l's) are then its slots with bit m clear, always the lower half, and its
  partner l ^ m holds the same entries in the upper half of its slots: the levels need no
  selects. Only the first level (m = N) picks, per half-warp, which of dB and dC to keep:
  2N selects against `_reduce_scatter_lanes`'s 4N - 2. The pairs added are the same (the
  same masks in the same order), so the sums are bit-identical. Lane i ends with entry i.
  """
  lane = jax.lax.broadcasted_iota(jnp.int32, db_terms[0].shape, 0)
  mask = len(db_terms)
  low = (lane & mask) == 0
  values = [jnp.where(low, db, dc) + _shfl_xor(jnp.where(low, dc, db), mask, cfg)
            for db, dc in zip(db_terms, dc_terms)]
  while len(values) > 1:
    mask //= 2
    values = [lo + _shfl_xor(hi, mask, cfg) for lo, hi in zip(values[:mask], values[mask:])]
  return values[0]


def _backward_kernel_lanes(*refs, cfg, per_group, u_channels, z_channels, num_chunks):
  """`_backward_kernel`'s lean schedule with one channel per lane (cfg.lanes).

  Per segment in reverse: a loop over its chunks that runs forward from the checkpoint
  (states only) and writes each chunk's start state to a per-program scratch buffer, then
  a loop over the chunks in reverse, each reading its start state back, recomputing its
  `chunk` states (loads u, delta, B) and running the adjoint through them, which reloads its
  step's inputs and dout (one step ahead of the stores where cfg.lanes_ahead). dB_t and dC_t
  leave as one [2N] row per step and tile (`_reduce_scatter_lanes`, or with cfg.lanes_xor
  `_reduce_scatter_lanes_xor`).

  State order (session 17, H200): with cfg.lanes_xor, lane l keeps state q ^ (l mod N) in
  slot q, so that the reduce-scatter needs 32 instead of 62 selects per step; the price is
  that B_t and C_t differ per lane. Read as one gather load per slot (the first version), that
  cost an address computation per load (ncu, stage 3: 644 warp instructions per warp-step,
  IMAD 56 and LOP3 33 of them); now each step's [B_t, C_t] arrives as one 128-byte row (lane
  l holds entry l) and every slot takes its value from the lane that holds it by a shuffle.
  Stage 1 fused fwd+bwd bf16 at batch 128: 14.9 -> 14.2 ms with the XOR order, then 14.0 ->
  13.4 ms with the rows (separate calls); LocalVMamba-T's train step +2.7%, then +1.7%.
  Tried and slower (session 17): keeping the chunk's decays from the recompute (no gain), and
  writing every step's state to the scratch buffer in place of the recompute (+15%).

  Why a scratch buffer and loops (session 16, H200): session 15 kept the start states in
  registers and unrolled the whole segment (~5,000 SASS instructions, 80 KB). Under ncu that
  kernel spilled (35 local loads and stores per warp-step at the 168-register cap) and its
  warps waited on instruction fetch in 17.6% of the stall samples. With the start states in
  memory (16 coalesced 128-byte stores and loads per chunk: each lane writes and reads back
  only its own channel, so no synchronisation is needed) and the chunks as loops, the code is
  a quarter of the size and fits the cap without spills (offline). Fused fwd+bwd bf16 at
  batch 128: stage 3 4.27 -> 3.92 ms, stage 1 15.52 -> 14.60 ms. The train step's compile
  fell by 62 s.
  """
  (index_ref, (u_ref, delta_ref, a_ref, b_ref, c_ref, d_ref, bias_ref), z_ref, dout_ref,
   dlast_ref, ckpt_ref, du_ref, ddelta_ref, dz_ref, rest) = _backward_refs(refs, cfg)
  dbc_ref, da_ref, dd_ref, dbias_ref, starts_ref = rest
  chunk, seg_len = cfg.chunk, cfg.checkpoint_every
  ratio = seg_len // chunk
  num_segments = num_chunks // ratio
  num_state = a_ref.shape[1]
  b, j, c0, group, cu0, cz0 = _program_coords(cfg, LANES, per_group, u_channels, z_channels)
  if cfg.lanes_xor:  # slot q of lane l holds state q ^ (l mod N) (_reduce_scatter_lanes_xor)
    lane = jax.lax.broadcasted_iota(jnp.int32, (LANES,), 0)
    slots = [q ^ (lane & (num_state - 1)) for q in range(num_state)]
    channel = c0 + lane
    columns = lambda ref, *lead: [ref[(*lead, channel, n)] for n in slots]
    # b_ref holds [B, C] rows ([..., 2N], `_scan_bwd`); lane l loads entry l
    state_loads = dict(state_row=2 * num_state)
  else:
    slots = list(range(num_state))
    columns = lambda ref, *lead: [ref[(*lead, pl.ds(c0, LANES), n)] for n in slots]
    state_loads = dict(scalar_states=num_state)
  a2 = columns(a_ref)                               # A * log2(e), a [32] vector per state
  d = d_ref[pl.ds(c0, LANES)]
  bias = bias_ref[pl.ds(c0, LANES)]
  load_refs = (u_ref, delta_ref, b_ref, c_ref, z_ref, index_ref)

  def load(t, full):
    raw = _load_step(cfg, load_refs, b, group, c0, cu0, cz0, LANES, t, need_c=full,
                     dout_ref=dout_ref if full else None, **state_loads)
    if cfg.lanes_xor:  # slot q: B from lane slots[q], C from N + it
      row = raw.pop("bct")
      raw["bt"] = [_shfl_idx(row, n, cfg) for n in slots]
      if full:
        raw["ct"] = [_shfl_idx(row, n | num_state, cfg) for n in slots]
    return raw

  def step_state(h, s):
    dlu = s["dl"] * s["u"]
    return [_fma(_exp2(s["dl"] * a2[n], cfg), h[n], dlu * s["bt"][n], cfg)
            for n in range(num_state)]

  def adjoint_step(s, h, g_next, accs):
    da_acc, dd_acc, dbias_acc = accs
    u, dl, bt, ct, dout = s["u"], s["dl"], s["bt"], s["ct"], s["dout"]
    store_mask = jnp.broadcast_to(s["real"], (LANES,))
    store = functools.partial(_channel_store, b=b, token=s["token"], c0=c0, tile=LANES,
                              mask=store_mask)

    def y_of():
      y = d * u
      for n in range(num_state):
        y = _fma(h[n], ct[n], y, cfg)
      return y
    dy = _z_gate_adjoint(cfg, s, y_of, store(dz_ref)) if cfg.has_z else dout
    dlu = dl * u
    gb = jnp.zeros_like(u)
    ga = jnp.zeros_like(u)
    g, da_new, db_terms, dc_terms = [], [], [], []
    for n in range(num_state):
      gn = _fma(dy, ct[n], g_next[n], cfg)
      # exp(Delta A) h_{t-1} = h_t - Delta B u (see _backward_kernel): serves dDelta and dA
      g_decayed_prev = gn * _fma(-dlu, bt[n], h[n], cfg)
      da_new.append(_fma(dl, g_decayed_prev, da_acc[n], cfg))
      gb = _fma(gn, bt[n], gb, cfg)
      ga = _fma(a2[n], g_decayed_prev, ga, cfg)
      db_terms.append(gn * dlu)
      dc_terms.append(dy * h[n])
      g.append(gn * _exp2(dl * a2[n], cfg))         # g_next of step t - 1
    # dB_t, dC_t summed over the warp's channels; lane i holds entry i of [dB_t, dC_t]
    dbc = (_reduce_scatter_lanes_xor(db_terms, dc_terms, cfg) if cfg.lanes_xor
           else _reduce_scatter_lanes(db_terms + dc_terms, cfg))
    plt.store(dbc_ref.at[b, s["token"], j, pl.ds(0, LANES)], dbc, mask=store_mask)
    ddl = u * gb + LN_2 * ga                        # a2 = A log2(e): A = a2 ln 2
    dd_acc, dbias_acc = _channel_adjoint(cfg, s, gb, ddl, dy, d, dd_acc, dbias_acc,
                                         store(du_ref), store(ddelta_ref))
    return g, (da_new, dd_acc, dbias_acc)

  def chunk_adjoint(chunk_first, h, g, accs):
    """Recomputes the chunk's states from its start state h, then runs the adjoint through
    them in reverse; returns the new (g, accs)."""
    states = []
    for i in range(chunk):                          # recompute the chunk's states
      t = chunk_first + i
      h = step_state(h, _derive(cfg, load(t, False), t, bias))
      states.append(h)
    ahead = load(chunk_first + chunk - 1, True)
    for i in reversed(range(chunk)):                # adjoint recurrence through them
      current = ahead
      if i and cfg.lanes_ahead:                     # issued before this step's stores
        ahead = load(chunk_first + i - 1, True)
      s = _derive(cfg, current, chunk_first + i, bias)
      g, accs = adjoint_step(s, states[i], g, accs)
      if i and not cfg.lanes_ahead:
        ahead = load(chunk_first + i - 1, True)
    return g, accs

  def store_row(row, h):
    for n in range(num_state):
      starts_ref[b, j, row, n, pl.ds(0, LANES)] = h[n]

  def load_row(row):
    return [starts_ref[b, j, row, n, pl.ds(0, LANES)] for n in range(num_state)]

  def segment_body(si, carry):
    seg = num_segments - 1 - si
    first = seg * seg_len

    def forward_chunk(r, h):                        # the states at the later chunk starts
      h = list(h)
      for i in range(chunk):
        t = first + r * chunk + i
        h = step_state(h, _derive(cfg, load(t, False), t, bias))
      store_row(r + 1, h)
      return tuple(h)

    h = columns(ckpt_ref, b, seg)
    store_row(0, h)
    jax.lax.fori_loop(0, ratio - 1, forward_chunk, tuple(h))

    def backward_chunk(k, carry):
      g, accs = carry
      r = ratio - 1 - k
      g, accs = chunk_adjoint(first + r * chunk, load_row(r), list(g),
                              (list(accs[0]), accs[1], accs[2]))
      return tuple(g), (tuple(accs[0]), accs[1], accs[2])

    return jax.lax.fori_loop(0, ratio, backward_chunk, carry)

  zeros = jnp.zeros((LANES,), jnp.float32)
  carry = (tuple(columns(dlast_ref, b)), (tuple(zeros for _ in range(num_state)), zeros, zeros))
  _, (da_acc, dd_acc, dbias_acc) = jax.lax.fori_loop(0, num_segments, segment_body, carry)
  for q, n in enumerate(slots):
    if cfg.lanes_xor:
      da_ref[b, channel, n] = da_acc[q]
    else:
      da_ref[b, pl.ds(c0, LANES), n] = da_acc[q]
  dd_ref[b, pl.ds(c0, LANES)] = dd_acc
  dbias_ref[b, pl.ds(c0, LANES)] = dbias_acc


# ----------------------------------------------------------------------------- pallas calls

def _compiler_params(num_warps):
  return plt.CompilerParams(num_warps=num_warps, num_stages=1)


def _common(cfg, index, u, delta, B, z, num_state=None):
  batch, _, u_channels = u.shape
  channels = delta.shape[2]
  groups, num_state = B.shape[2], num_state or B.shape[3]
  z_channels = z.shape[2] if z is not None else channels
  num_segments = -(-cfg.seq_len // cfg.checkpoint_every)
  num_chunks = num_segments * (cfg.checkpoint_every // cfg.chunk)
  index = (index,) if cfg.indexed else ()
  return batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index


# The two kernel calls are jitted (cfg static): a model calls the same kernel on the same
# shapes once per block (LocalVMamba-S: 27 blocks in stage 3), and JAX then traces the kernel
# body to a jaxpr and lowers it to Triton IR once per distinct (cfg, shapes) instead of once
# per call; XLA inlines the calls, so the compiled program is the same.
@functools.partial(jax.jit, static_argnums=(0,))
def _forward_call(cfg, index, u, delta, a2, B, C, D, bias, z):
  batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index = _common(
      cfg, index, u, delta, B, z)
  out_len = delta.shape[1] if cfg.write_at_tokens else cfg.seq_len
  out_dims = (batch, out_len, channels) if cfg.write_output else (1, 1, 1)  # unused if not
  kernel = functools.partial(_forward_kernel, cfg=cfg, per_group=channels // groups,
                             u_channels=u_channels, z_channels=z_channels,
                             num_chunks=num_chunks)
  num_saved = num_chunks * cfg.chunk // cfg.checkpoint_every
  ckpt_shape = ((batch, num_saved, channels, num_state) if cfg.save_checkpoints
                else (1, 1, 1, num_state))  # an unused output when none are saved
  out_shape = (jax.ShapeDtypeStruct(out_dims, _out_dtype(cfg, u)),
               jax.ShapeDtypeStruct(ckpt_shape, jnp.float32),
               jax.ShapeDtypeStruct((batch, channels, num_state), jnp.float32))
  args = index + (u, delta, a2, B, C, D, bias) + ((z,) if cfg.has_z else ())
  return pl.pallas_call(kernel, out_shape=out_shape, grid=(batch, channels // cfg.tile),
                        interpret=cfg.interpret,
                        name=register_cap.kernel_name("selective_scan_fwd", cfg.max_registers),
                        compiler_params=_compiler_params(cfg.num_warps))(*args)


@functools.partial(jax.jit, static_argnums=(0,))
def _forward_parts_call(cfg, index, u, delta, a2, B, C, D, bias, z):
  """The sequence-parallel forward (cfg.seq_parts parts; `_part_summary_kernel`): two kernels
  on a grid of (batch, channel tiles, parts); returns (out, last state)."""
  batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index = _common(
      cfg, index, u, delta, B, z)
  parts, f32 = cfg.seq_parts, jnp.float32
  grid = (batch, channels // cfg.tile, parts)
  options = dict(per_group=channels // groups, u_channels=u_channels, z_channels=z_channels,
                 num_chunks=num_chunks)
  name = lambda stem: register_cap.kernel_name(stem, cfg.max_registers)
  params = _compiler_params(cfg.num_warps)
  args = index + (u, delta, a2, B, C, D, bias) + ((z,) if cfg.has_z else ())
  ends, dl_sums = pl.pallas_call(
      functools.partial(_part_summary_kernel, cfg=cfg, **options), grid=grid,
      out_shape=(jax.ShapeDtypeStruct((batch, parts, channels, num_state), f32),
                 jax.ShapeDtypeStruct((batch, parts, channels), f32)),
      interpret=cfg.interpret, name=name("selective_scan_fwd_parts_summary"),
      compiler_params=params)(*args)
  out_len = delta.shape[1] if cfg.write_at_tokens else cfg.seq_len
  out, lasts = pl.pallas_call(
      functools.partial(_part_output_kernel, cfg=cfg, **options), grid=grid,
      out_shape=(jax.ShapeDtypeStruct((batch, out_len, channels), _out_dtype(cfg, u)),
                 jax.ShapeDtypeStruct((batch, parts, channels, num_state), f32)),
      interpret=cfg.interpret, name=name("selective_scan_fwd_parts"),
      compiler_params=params)(*args, ends, dl_sums)
  return out, lasts[:, -1]


@functools.partial(jax.jit, static_argnums=(0,))
def _backward_call(cfg, index, u, delta, a2, B, C, D, bias, z, dout, dlast, ckpt):
  batch, channels, groups, num_state, u_channels, z_channels, num_chunks, index = _common(
      cfg, index, u, delta, B, z, num_state=a2.shape[1])  # B: [B, C] rows (lanes_xor)
  tokens = delta.shape[1]
  num_tiles = channels // cfg.bwd_tile
  kernel = functools.partial(_backward_kernel_lanes if cfg.lanes else _backward_kernel,
                             cfg=cfg, per_group=channels // groups,
                             u_channels=u_channels, z_channels=z_channels,
                             num_chunks=num_chunks)
  f32 = jnp.float32
  # du (dz) of a u (z) shared by groups of channels are per-channel partials that the VJP
  # sums over the groups: kept float32 so that the sum rounds once, to u's dtype.
  partial_dtype = lambda x, shared: jnp.float32 if shared < channels else x.dtype
  out_shape = [jax.ShapeDtypeStruct((batch, tokens, channels), partial_dtype(u, u_channels)),
               jax.ShapeDtypeStruct((batch, tokens, channels), delta.dtype)]
  if cfg.has_z:
    out_shape.append(jax.ShapeDtypeStruct((batch, tokens, channels),
                                          partial_dtype(z, z_channels)))
  # dB, dC partials per channel tile: one [2N] row per step and tile in the lanes backward
  out_shape += ([jax.ShapeDtypeStruct((batch, tokens, num_tiles, 2 * num_state), f32)]
                if cfg.lanes else
                [jax.ShapeDtypeStruct((batch, tokens, num_tiles, num_state), f32)] * 2)
  out_shape += [jax.ShapeDtypeStruct((batch, channels, num_state), f32),
                jax.ShapeDtypeStruct((batch, channels), f32),
                jax.ShapeDtypeStruct((batch, channels), f32)]
  if cfg.lanes:  # the chunk start states of one segment per program (not returned)
    ratio = cfg.checkpoint_every // cfg.chunk
    out_shape.append(jax.ShapeDtypeStruct((batch, num_tiles, ratio, num_state, LANES), f32))
  args = index + (u, delta, a2, B, C, D, bias) + ((z,) if cfg.has_z else ()) + (
      dout, dlast, ckpt)
  return pl.pallas_call(kernel, out_shape=tuple(out_shape), grid=(batch, num_tiles),
                        interpret=cfg.interpret,
                        name=register_cap.kernel_name("selective_scan_bwd",
                                                      cfg.bwd_max_registers),
                        compiler_params=_compiler_params(cfg.bwd_num_warps))(*args)


# ----------------------------------------------------------------------------- custom_vjp



def _forward_only(cfg, index, u, delta, A, B, C, D, bias, z):
  """A forward whose states no backward reads: no checkpoints, and the forward's own chunk.
  The chunk only groups loads: the arithmetic is the same, though the compiler may contract
  the differently unrolled code differently (~1e-7 relative)."""
  forward_only = dataclasses.replace(cfg, chunk=cfg.fwd_only_chunk,
                                     checkpoint_every=cfg.fwd_only_chunk, save_checkpoints=False,
                                     max_registers=cfg.fwd_only_max_registers)
  if cfg.fwd_only_layout is not None:  # a small batch: smaller tiles and parts of the sequence
    tile, parts = cfg.fwd_only_layout
    warps = forward_only.num_warps if tile == forward_only.tile else _forward_warps(tile)
    forward_only = dataclasses.replace(forward_only, tile=tile, seq_parts=parts,
                                       num_warps=warps)
    if parts > 1:
      return _forward_parts_call(forward_only, index, u, delta, A * LOG2_E, B, C, D, bias, z)
  out, _, last = _forward_call(forward_only, index, u, delta, A * LOG2_E, B, C, D, bias, z)
  return out, last


def _checkpointing_forward(cfg):
  """The config of a forward that saves the backward's checkpoints. The lanes backward's short
  chunk is its own: the forward keeps one chunk per checkpoint interval (its chunk only groups
  loads; the same checkpoints are written)."""
  return dataclasses.replace(cfg, chunk=cfg.checkpoint_every) if cfg.lanes else cfg


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg, index, u, delta, A, B, C, D, bias, z):
  # No backward follows this call (a JVP or VJP uses _scan_fwd).
  return _forward_only(cfg, index, u, delta, A, B, C, D, bias, z)


def _scan_fwd(cfg, index, u, delta, A, B, C, D, bias, z):
  if cfg.recompute_checkpoints:  # the backward rebuilds them (_scan_bwd)
    out, last = _forward_only(cfg, index, u, delta, A, B, C, D, bias, z)
    ckpt = None
  else:
    out, ckpt, last = _forward_call(_checkpointing_forward(cfg), index, u, delta, A * LOG2_E, B,
                                    C, D, bias, z)
  return (out, last), (index, u, delta, A, B, C, D, bias, z, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
  index, u, delta, A, B, C, D, bias, z, ckpt = residuals
  dout, dlast = cotangents
  if ckpt is None:  # recompute_checkpoints: one more forward, states only (no C, z, outputs)
    _, ckpt, _ = _forward_call(
        dataclasses.replace(_checkpointing_forward(cfg), write_output=False), index, u, delta,
        A * LOG2_E, B, C, D, bias, z)
  # The lanes backward reads B and C as float32: read 16-bit, each value took a shift to
  # float32 in the kernel (~50 SHF per step and warp in its SASS, session 16). The float32
  # copies are the same values (the cast is exact, and dB, dC are still rounded to B's dtype
  # once, below) for 2N * 2 more bytes per step and group. Measured (H200, bf16, fused, same
  # call): stage 3 4.35 -> 4.27 ms, stage 1 16.09 -> 15.52, gradients bit-identical. With
  # lanes_xor they go as one [B, C] row per step and group (one 128-byte load per step,
  # `_backward_kernel_lanes`). The forward keeps B and C as they are: it reads them as [N]
  # vectors (offline, float32 ones took it from 128 to 150 registers).
  if cfg.lanes and cfg.lanes_xor:  # one [B, C] row per step and group
    rows = jnp.concatenate([B.astype(jnp.float32), C.astype(jnp.float32)], axis=-1)
    bc = (rows, rows)
  elif cfg.lanes:
    bc = (B.astype(jnp.float32), C.astype(jnp.float32))
  else:
    bc = (B, C)
  grads = list(_backward_call(cfg, index, u, delta, A * LOG2_E, *bc, D, bias, z,
                              dout.astype(_out_dtype(cfg, u)), dlast.astype(jnp.float32),
                              ckpt))
  if cfg.lanes:  # drop the scratch of chunk start states; split the [dB, dC] rows
    grads.pop()
    grads[-4:-3] = jnp.split(grads[-4], 2, axis=-1)
  du, ddelta = grads[:2]
  dz = grads[2] if cfg.has_z else None
  db_part, dc_part, da_part, dd_part, dbias_part = grads[-5:]
  batch, tokens, num_tiles, num_state = db_part.shape
  groups = B.shape[2]
  fold_tiles = lambda p: p.reshape(batch, tokens, groups, num_tiles // groups,
                                   num_state).sum(axis=3)
  du = fold_to(u.shape[2], du).astype(u.dtype)
  if dz is not None:
    dz = fold_to(z.shape[2], dz).astype(z.dtype)
  # index: an integer table, no cotangent (None = zero).
  return (None, du, ddelta, da_part.sum(0).astype(A.dtype), fold_tiles(db_part).astype(B.dtype),
          fold_tiles(dc_part).astype(C.dtype), dd_part.sum(0).astype(D.dtype),
          dbias_part.sum(0).astype(bias.dtype), dz)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------- public entry



def selective_scan_pallas(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                          delta_softplus=False, read_index=None, write_at_tokens=True,
                          return_last_state=False, chunk=DEFAULT_CHUNK,
                          checkpoint_every=DEFAULT_CHECKPOINT_EVERY, tile=None, bwd_tile=None,
                          num_warps=None, bwd_num_warps=None, keep_decay=None,
                          lean=DEFAULT_LEAN, fma=DEFAULT_FMA, keep_dl=DEFAULT_KEEP_DL,
                          sfu=DEFAULT_SFU, out_dtype=None,
                          max_registers=DEFAULT_MAX_REGISTERS,
                          bwd_max_registers=DEFAULT_BWD_MAX_REGISTERS,
                          recompute_checkpoints=DEFAULT_RECOMPUTE_CHECKPOINTS,
                          poly_softplus=DEFAULT_POLY_SOFTPLUS, lanes=None,
                          lanes_ahead=True, lanes_xor=None, seq_parts=None,
                          interpret=None):
  """The selective scan as Pallas kernels (fwd + custom-VJP bwd).

  u: [b, T, Cu] where Cu = C, or Cu divides C (one u shared by the C // Cu groups of
     channels; LocalVMamba's K directions reading the same x); z likewise (optional).
  delta: [b, T, C]; A: [C, N]; B, C: [b, T, G, N]; D, delta_bias: [C] or None.
  read_index: optional int [G, L_seq]: token read by step s of group g, -1 for a pad
     (decay-only) step. None = identity (L_seq = T). Numpy (checked here) or a jax array
     (kernel data either way; a traced table lets blocks with different orders share a program).
  write_at_tokens: with read_index, write outputs at the token read (True) or in scan
     order [b, L_seq, C] (False, for a non-inverse merge done by the caller).
  chunk: steps unrolled per loop iteration (the backward recomputes `chunk` states at a time
     in registers); None = the measured default: 8 for the lean backward through a
     read_index, else 4. checkpoint_every: steps between the states saved for the backward
     (b * ceil(L_seq / checkpoint_every) * C * N fp32); a multiple of chunk (None = the chunk
     when that is defaulted, else 8). A forward that no backward follows saves no states and
     uses FORWARD_ONLY_CHUNK (4; or the chunk given).
     keep_decay: the backward keeps exp(Delta A) of its recompute for the adjoint (one exp
     per element-step less, chunk x [tile, N] more registers; BENCHMARKS.md).
     lean: backward schedule that reloads each step's inputs in the adjoint one step ahead
     instead of holding the whole chunk's loads in registers (False = the batched schedule;
     None = the measured default: lean for scans of at least LEAN_MIN_SEQ steps and
     for those read through a read_index of at most LEAN_MAX_SHORT_INDEXED_SEQ, else
     batched). fma: the
     recurrences' multiply-adds as fma.rn.f32 (default). keep_dl: the lean backward keeps
     each step's Delta from its recompute for the adjoint (one softplus per step less,
     `chunk` more registers per thread; off by default: measured slower than the series
     softplus without it, in both orders). sfu: exp and reciprocals
     (softplus, sigmoid) on the special-function unit (ex2/rcp.approx, ~2^-22 relative)
     instead of libdevice's range-checked expf and the IEEE division.
  max_registers, bwd_max_registers: registers per thread the forward / backward kernel may
     use (PTX .maxnreg, `register_cap`): fewer registers, more resident warps, maybe spills.
     0 = no cap (ptxas's choice). max_registers=None = the measured default: no cap on a
     forward a backward follows, FORWARD_ONLY_MAX_REGISTERS (80) on one that none follows;
     a value given applies to both. bwd_max_registers=None = the measured default: 168 for a
     backward read through a read_index that is lean or has chunk <= 4, else no cap.
     Ignored in interpret mode.
  recompute_checkpoints: the backward reruns the forward (states only) to rebuild the
     checkpoints instead of keeping them from the first forward, which then runs as an
     inference forward: the residuals held between forward and backward shrink to the inputs
     (b * ceil(L_seq / checkpoint_every) * C * N float32 less per call), for one more
     forward per call. The gradients are the same (the same kernels recompute the same states).
  poly_softplus: softplus as max(x, 0) + log1p(e^-|x|) with log1p from a 7-term series
     (`_log1p_unit`; also in interpret mode) instead of libdevice's log1pf. None = the
     measured default: the series for scans read through a read_index and for the lean
     backward, libdevice for short plain-order scans (DEFAULT_POLY_SOFTPLUS).
  lanes: the backward with one channel per lane (`_backward_kernel_lanes`): 32-channel tiles on
     one warp, N = 16 only, bwd_tile / bwd_num_warps / lean / keep_decay / keep_dl do not
     apply to it; its default chunk is LANES_CHUNK (2) with checkpoints every FORWARD_CHUNK
     (8). None = the measured default (`_lanes_default`): on for every scan, read through a
     read_index or not, where the shape fits and bwd_tile / bwd_num_warps are unset.
     lanes_ahead: its adjoint issues the previous step's loads before the current step's
     stores. lanes_xor: it keeps the states in an
     XOR-by-lane order (`_reduce_scatter_lanes_xor`; the same sums, fewer selects) and reads
     each step's [B_t, C_t] as one 128-byte row whose values reach the slots by shuffles.
  seq_parts: parts of the sequence that a forward no backward follows (inference) runs in
     parallel (`_forward_parts_call`: twice the work, `seq_parts` times the programs); None =
     below SMALL_BATCH_WARPS warps in the usual layout, SMALL_BATCH_TILE-channel tiles
     (unless `tile` is given) and as many parts as stay within FILL_WARPS warps, else the
     usual layout; an int: that many parts (whole chunks each; 1 = the usual layout).
  out_dtype: dtype of out (None = u's). Inputs are converted to float32 as they are read,
     so bf16 inputs with out_dtype=float32 give exactly the values (and, rounded to bf16,
     the gradients) of float32-cast inputs, with half the input, residual and gradient bytes.
  interpret: None = interpret mode unless the default backend is a GPU.
  Returns out (and the last state [b, C, N] fp32 if return_last_state).
  """
  if not _HAVE_PALLAS_TRITON:
    raise ValueError("selective_scan_pallas: jax.experimental.pallas.triton is not available "
                     "in this jax; use impl='associative'.")
  batch, tokens, channels = delta.shape
  groups, num_state = B.shape[2], B.shape[3]
  for name, x in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
    if x is not None and jnp.dtype(x.dtype) not in map(jnp.dtype, _SUPPORTED_DTYPES):
      raise ValueError(f"selective_scan_pallas: {name} has dtype {x.dtype}; the kernel takes "
                       f"float32, bfloat16 or float16 (use impl='reference' for float64).")
  if out_dtype is not None and jnp.dtype(out_dtype) not in map(jnp.dtype, _SUPPORTED_DTYPES):
    raise ValueError(f"selective_scan_pallas: out_dtype={out_dtype!r}; the kernel writes "
                     f"float32, bfloat16 or float16 (use impl='reference' for float64).")
  if num_state & (num_state - 1):
    raise ValueError(f"selective_scan_pallas: N must be a power of two (Triton register "
                     f"shapes), got N={num_state}; use impl='associative'.")
  per_group = channels // groups
  if read_index is None:
    seq_len = tokens
    index = None
    write_at_tokens = True
  else:
    if isinstance(read_index, np.ndarray):
      check_read_index(read_index, groups, tokens, "selective_scan_pallas")
    elif tuple(getattr(read_index, "shape", ())[:1]) != (groups,):
      # a table passed as data (lax.scan over blocks): the caller built it from scan orders,
      # which `scan_orders` checks; only its shape can be checked here
      raise ValueError(f"selective_scan_pallas: read_index must have shape [groups={groups}, "
                       f"L_seq], got {getattr(read_index, 'shape', None)}.")
    seq_len = int(read_index.shape[1])
    index = jnp.asarray(read_index, jnp.int32)
  cap = lambda t, default: largest_pow2_divisor(per_group, t or default)
  fwd_tile, bwd_t = cap(tile, DEFAULT_TILE), cap(bwd_tile, DEFAULT_BWD_TILE)
  lanes = (_lanes_default(num_state, per_group, bwd_tile, bwd_num_warps)
           if lanes is None else bool(lanes))
  if lanes:
    if not _lanes_supported(num_state, per_group):
      raise ValueError(f"selective_scan_pallas: lanes=True needs N = {LANES // 2} states and "
                       f"channels per group divisible by {LANES}, got N={num_state} and "
                       f"{per_group} channels per group; use lanes=False.")
    if bwd_tile not in (None, LANES) or bwd_num_warps not in (None, 1):
      raise ValueError(f"selective_scan_pallas: lanes=True runs {LANES}-channel tiles on one "
                       f"warp, got bwd_tile={bwd_tile}, bwd_num_warps={bwd_num_warps}; leave "
                       f"them unset.")
    bwd_t = LANES
  for name, x in (("u", u), ("z", z)):
    if x is not None and (channels % x.shape[2] or x.shape[2] % max(fwd_tile, bwd_t)):
      raise ValueError(f"selective_scan_pallas: {name} has {x.shape[2]} channels; it must have "
                       f"the {channels} channels of delta or a divisor of them shared by groups "
                       f"of channels.")
  if interpret is None:
    interpret = not on_gpu()
  lean = _lean_default(seq_len, index is not None) if lean is None else bool(lean)
  fwd_only_chunk = _chunking(FORWARD_ONLY_CHUNK if chunk is None else chunk, None, seq_len)[0]
  if checkpoint_every is None and chunk is not None:
    checkpoint_every = FORWARD_CHUNK  # an explicit chunk keeps the earlier default interval
  if chunk is None and lanes:
    chunk, checkpoint_every = LANES_CHUNK, checkpoint_every or FORWARD_CHUNK
  elif chunk is None:
    chunk = _chunk_default(lean, index is not None)
  chunk, checkpoint_every = _chunking(chunk, checkpoint_every, seq_len)
  if max_registers is None:  # the measured defaults: a cap only where no backward follows
    fwd_only_max_registers, max_registers = FORWARD_ONLY_MAX_REGISTERS, None
  else:
    max_registers = fwd_only_max_registers = register_cap.checked_cap(max_registers,
                                                                      "max_registers")
  bwd_max_registers = (_bwd_max_registers_default(lean, index is not None, chunk, lanes)
                       if bwd_max_registers is None
                       else register_cap.checked_cap(bwd_max_registers, "bwd_max_registers"))
  # only the lanes backward has a state order (off: one config for the kernels it leaves alike)
  lanes_xor = lanes and (DEFAULT_LANES_XOR if lanes_xor is None else bool(lanes_xor))
  if interpret:  # no Triton compile to cap
    max_registers = bwd_max_registers = fwd_only_max_registers = None
  cfg = _Config(seq_len=seq_len, chunk=chunk, checkpoint_every=checkpoint_every, tile=fwd_tile,
                bwd_tile=bwd_t, softplus=bool(delta_softplus),
                poly_softplus=(_poly_softplus_default(index is not None, lean)
                               if poly_softplus is None else bool(poly_softplus)),
                has_z=z is not None,
                indexed=index is not None, write_at_tokens=bool(write_at_tokens),
                num_warps=num_warps or _forward_warps(fwd_tile),
                bwd_num_warps=1 if lanes else bwd_num_warps or (1 if bwd_t <= 16 else 2),
                keep_decay=DEFAULT_KEEP_DECAY if keep_decay is None else bool(keep_decay),
                sfu=bool(sfu),
                keep_dl=DEFAULT_KEEP_DL if keep_dl is None else bool(keep_dl),
                lean=lean,
                fma=bool(fma),
                interpret=bool(interpret),
                out_dtype=None if out_dtype is None else jnp.dtype(out_dtype).name,
                max_registers=max_registers, bwd_max_registers=bwd_max_registers,
                fwd_only_chunk=fwd_only_chunk,
                fwd_only_max_registers=fwd_only_max_registers,
                recompute_checkpoints=bool(recompute_checkpoints),
                lanes=lanes, lanes_ahead=bool(lanes_ahead), lanes_xor=lanes_xor,
                fwd_only_layout=_forward_only_layout(
                    seq_parts, batch, channels, per_group, seq_len, fwd_only_chunk, fwd_tile,
                    tile is not None))
  f32 = jnp.float32
  D = jnp.zeros((channels,), f32) if D is None else D.astype(f32)
  bias = jnp.zeros((channels,), f32) if delta_bias is None else delta_bias.astype(f32)
  out, last = _scan(cfg, index, u, delta, A.astype(f32), B, C, D, bias, z)
  return (out, last) if return_last_state else out


def multi_direction_scan_pallas(u, delta, A, B, C, D, delta_bias, z, *, gather, merge,
                                delta_softplus=True, **kernel_options):
  """LocalVMamba's multi-direction scan with the scan order fused into the kernel.

  Shapes as `ops.multi_direction.multi_direction_selective_scan` (already validated there):
  u [b, HW, E] or [b, HW, K, E], delta [b, HW, K, E], A [K, E, N], B/C [b, HW, K, N],
  D/delta_bias [K, E] or None, z like u or None; gather [K, Lmax], merge [K, HW] (numpy).
  kernel_options: those of `selective_scan_pallas` (chunk, interpret, ...), whose defaults
  apply. Returns [b, HW, K, E].
  """
  return fused_multi_direction_scan(
      selective_scan_pallas, u, delta, A, B, C, D, delta_bias, z, gather=gather, merge=merge,
      delta_softplus=delta_softplus, **kernel_options)


def _like(x) -> jax.ShapeDtypeStruct:
  """x's shape and dtype, for an inline-asm result. Not jax.ShapeDtypeStruct.like: on a
  tracer it reads `x.sharding`, whose AttributeError message walks every equation traced so
  far in the kernel (JAX's _origin_msg), so tracing the unrolled kernels grew quadratically:
  1,310 such reads took 7.7 of 64 s of LocalVMamba-S's profiled trace and lowering."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype)

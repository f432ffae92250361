"""Autotune spaces shared by the gather kernels (condensed forward, CSR / transposed dX).

A gather kernel owns a (BLOCK_N rows x BLOCK_B batch) output tile and walks the
nonzeros of its rows (loop bodies in ``_gather``). Two regimes:
  * batch <= 16 (memory-bound): BLOCK_B equal to the batch bucket and chunks of BLOCK_K
    nonzeros spread over lanes, so a warp reads a row's indices and values coalesced;
  * batch >= 32 (L1/FMA-bound): batch tiles of 16 to 256 columns, one nonzero at a
    time, so each gathered index and value feeds 8 FMAs per thread; the 16-column ones
    (rows and chunk bodies) keep their batch slice of x in L1 when in_features is large.

Autotune keys are size *buckets* (``size_bucket(n)``, ``size_bucket(K)``, the batch
bucket), not raw sizes, so a dynamic-sparse-training update that ablates a neuron or
grows the fan-in reuses the tuned config. Every config is correct for every size (all
loads and stores are masked); the prune below depends on the buckets only.
"""
from __future__ import annotations

import functools

import triton

SMALL_BATCH = 16
WIDE_BATCH = 32  # batch tiles this wide only at batch >= 32
H100_SMS = 132  # the SM count assumed when no CUDA device is present (interpreter)
MIN_SPLIT_K = 256  # split the fan-in only into chunks of at least this many slots
SPLIT_K_ROUND = 128  # ... rounded to a multiple of this

# (BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, num_warps), from an ahead-of-time compile survey with
# the runtime's specialization (see the kernel docstrings): every tile builds for sm_80 and
# sm_90 without stack or local memory, and its hot loop holds no SHFL and no BAR.
# Small batch (3-D chunk body): BLOCK_N * BLOCK_K < 32 * num_warps, so index and value
# tiles load straight into the accumulator's layout; a step covers BLOCK_K * UNROLL slots.
_SMALL_BATCH_TILES = [
    # batch 1 (2-D chunk body: no size constraint, see _gather.chunk_step)
    (8, 128, 1, 2, 4), (16, 64, 1, 2, 4), (4, 128, 1, 2, 2), (32, 32, 1, 2, 4), (8, 32, 1, 4, 2),
    (4, 16, 2, 4, 4), (2, 32, 2, 4, 4), (1, 32, 2, 8, 2),
    (4, 16, 4, 4, 4), (2, 32, 4, 4, 4), (2, 16, 4, 4, 2), (1, 32, 4, 8, 2),
    (4, 16, 8, 4, 4), (8, 8, 8, 4, 4), (2, 16, 8, 4, 2), (1, 32, 8, 8, 2),
    (4, 16, 16, 4, 4), (8, 8, 16, 4, 4), (2, 16, 16, 4, 2), (2, 32, 16, 4, 4), (1, 32, 16, 8, 2),
]
# Large batch (2-D rows body, selected by BLOCK_K == 1): UNROLL slots per step, a thread holds two
# 128-bit vectors of each of its rows. The 16-column rows tile keeps a batch slice of x that
# fits L1 for in_features ~3072 (fp32: 192 KB) where the 32-column ones spill to L2 (3072->768
# at B=256: 11.7 modeled us against 14.7 for the best chunk tile); 8 slots per step hide the
# gather latency that 4 leave exposed with one warp. fp32 only (FP32_ONLY_TILES): with 16-bit
# elements its 8-column halves load as 64-bit vectors, and the 32-column tiles' slice of a
# 16-bit x fits L1 already. (Wider variants: 32 rows on 1 warp shuffles in the loop, 32 rows
# on 2 warps spills in the dX kernel on sm_80.)
FP32_ONLY_TILES = {(16, 1, 16, 8, 1)}
_LARGE_BATCH_TILES = [
    (16, 1, 16, 8, 1),
    (64, 1, 32, 4, 4), (32, 1, 32, 4, 2),
    (32, 1, 64, 4, 4), (16, 1, 64, 4, 2),
    (16, 1, 128, 4, 4), (32, 1, 128, 2, 4),
    (16, 1, 256, 2, 4), (8, 1, 256, 4, 4),
]


def _config(bn, bk, bb, unroll, warps):
    # one stage: the gathers are not a pipelined stream of tiles, and stages cost registers
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb, "UNROLL": unroll},
                         num_warps=warps, num_stages=1)


def tile_of(config):
    """(BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, num_warps) of a gather config."""
    kw = config.kwargs
    return kw["BLOCK_N"], kw["BLOCK_K"], kw["BLOCK_B"], kw["UNROLL"], config.num_warps


def gather_configs(exclude=()):
    """The gather autotune space; ``exclude``: tiles (as :func:`tile_of`) a kernel leaves
    out. The interpreter keeps only the first config: a small tile that covers every case."""
    tiles = [t for t in _SMALL_BATCH_TILES + _LARGE_BATCH_TILES if t not in exclude]
    return [_config(16, 16, 4, 1, 4)] + [_config(*t) for t in tiles]


def prune_gather_configs(n_arg: str, k_arg: str, x_arg: str):
    """Early prune for a gather kernel: keep the tiles of the batch regime of the call,
    with BLOCK_K no longer than the fan-in bucket and BLOCK_N not past the rows bucket,
    and the ``FP32_ONLY_TILES`` only when the gathered operand ``x_arg`` has 4-byte
    elements. ``n_arg`` and ``k_arg`` name bucketed kernel arguments (powers of two), so
    the kept set is the same for every size in a bucket."""

    def prune(configs, named_args, **kwargs):
        b = int(named_args["b_bucket"])
        n = max(int(named_args[n_arg]), 1)
        k = max(int(named_args[k_arg]), 1)
        if named_args[x_arg].element_size() != 4:
            configs = configs[:1] + [c for c in configs[1:] if tile_of(c) not in FP32_ONLY_TILES]
        if b <= SMALL_BATCH:
            regime = [c for c in configs[1:] if c.kwargs["BLOCK_B"] == b]  # configs[0]: the interpreter's
        else:
            # wide rows tiles, and the 16-column chunk tiles: their batch slice of x
            # (in_features x 64 B in fp32) stays in L1 for larger in_features
            regime = [c for c in configs[1:] if c.kwargs["BLOCK_B"] <= b and c.kwargs["BLOCK_B"] >= SMALL_BATCH]
        rows_ok = [c for c in regime if c.kwargs["BLOCK_N"] <= max(n, 8)]
        if not rows_ok and regime:  # fewer rows than every tile: the narrowest tiles
            narrowest = min(c.kwargs["BLOCK_N"] for c in regime)
            rows_ok = [c for c in regime if c.kwargs["BLOCK_N"] == narrowest]
        # no chunk (small batch) or step (large batch) longer than the fan-in, if avoidable
        short = [c for c in rows_ok
                 if (c.kwargs["UNROLL"] if c.kwargs["BLOCK_K"] == 1 else c.kwargs["BLOCK_K"]) <= max(k, 16)]
        return short or rows_ok or configs[:1]

    return prune


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (a CUDA device), or ``H100_SMS`` otherwise."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return H100_SMS


def split_k_plan(n: int, K: int, b_bucket: int, sms: int, min_tile_rows: int = 8):
    """``(splits, slots_per_split)`` for a gather over ``n`` rows of fan-in ``K``.

    Split the fan-in only at small batch (one batch tile) when even the narrowest row tile
    (``min_tile_rows``) gives fewer than two programs per SM, and only into chunks of at
    least ``MIN_SPLIT_K`` slots (each split adds a (B, n) fp32 partial sum to write and
    reduce). Chunks are multiples of ``SPLIT_K_ROUND``."""
    if b_bucket > SMALL_BATCH or K < 2 * MIN_SPLIT_K:
        return 1, K
    tiles = -(-n // min_tile_rows)
    if tiles >= 2 * sms:
        return 1, K
    splits = min(-(-2 * sms // tiles), K // MIN_SPLIT_K)
    if splits <= 1:
        return 1, K
    per = -(-K // splits)
    per = -(-per // SPLIT_K_ROUND) * SPLIT_K_ROUND
    return -(-K // per), per

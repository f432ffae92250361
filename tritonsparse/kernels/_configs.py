"""Autotune spaces shared by the gather kernels (condensed forward, CSR / transposed dX).

A gather kernel owns a (BLOCK_N rows x BLOCK_B batch) output tile and reduces over
BLOCK_K nonzeros at a time, holding a (BLOCK_N, BLOCK_K, BLOCK_B) gathered tile in
registers. Two regimes:
  * batch <= 16 (memory-bound): BLOCK_B equal to the batch bucket, long K chunks;
  * batch >= 32 (L1/FMA-bound): wide batch tiles, short K chunks.
The tiles are pruned per problem at launch.
"""
from __future__ import annotations

import triton

from .._triton import next_power_of_2

SMALL_BATCH = 16

# (BLOCK_N, BLOCK_K, BLOCK_B, num_warps). Chosen from an ahead-of-time compile survey for
# sm_90: every tile here builds without spills and with at most ~130 registers per
# thread. The 3-D gathered tile costs a 64-bit address per element on top of its value,
# so tiles stay near 8-32 elements per thread.
_SMALL_BATCH_TILES = [
    (8, 128, 1, 4), (8, 128, 1, 2), (16, 64, 1, 4), (16, 128, 1, 8), (32, 32, 1, 4), (64, 16, 1, 4),
    (8, 128, 2, 4), (8, 64, 2, 2), (16, 64, 2, 4), (16, 128, 2, 8), (32, 32, 2, 4),
    (8, 64, 4, 2), (8, 128, 4, 4), (16, 32, 4, 4), (16, 64, 4, 8), (32, 16, 4, 4), (64, 16, 4, 8),
    (8, 64, 8, 4), (8, 128, 8, 8), (16, 32, 8, 4), (16, 64, 8, 8), (32, 16, 8, 4), (32, 32, 8, 8),
    (8, 32, 16, 4), (8, 64, 16, 8), (16, 16, 16, 4), (16, 32, 16, 8), (32, 16, 16, 8), (8, 16, 16, 2),
]
_LARGE_BATCH_TILES = [
    (16, 8, 32, 4), (32, 4, 32, 4), (32, 8, 32, 8), (64, 2, 32, 4), (64, 4, 32, 8),
    (16, 8, 64, 4), (16, 4, 64, 8), (32, 8, 64, 8),
    (16, 1, 128, 4), (16, 2, 128, 8), (16, 4, 128, 8),
]


def _config(bn, bk, bb, warps):
    # one stage: the gathers are not a pipelined stream of tiles, and stages cost registers
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=warps, num_stages=1)


def gather_configs():
    # The interpreter keeps only the first config: a small tile that covers every case.
    return [_config(16, 16, 4, 4)] + [_config(*t) for t in _SMALL_BATCH_TILES + _LARGE_BATCH_TILES]


def prune_gather_configs(n_arg: str, k_arg: str):
    """Early prune for a gather kernel: keep the tiles of the batch regime of the call,
    with BLOCK_K no longer than needed for the fan-in and BLOCK_N not past the rows."""

    def prune(configs, named_args, **kwargs):
        b = named_args["b_bucket"]
        n = max(int(named_args[n_arg]), 1)
        k = max(int(named_args[k_arg]), 1)
        kept = []
        for c in configs[1:]:
            bn, bk, bb = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_B"]
            regime_ok = bb == b if b <= SMALL_BATCH else (bb >= 32 and bb <= b)
            if regime_ok and bk <= max(next_power_of_2(k), 1) and bn <= max(next_power_of_2(n), 8):
                kept.append(c)
        return kept or configs[:1]

    return prune

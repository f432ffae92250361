"""Autotune spaces shared by the gather kernels (condensed forward, CSR / transposed dX).

A gather kernel owns a (BLOCK_N rows x BLOCK_B batch) output tile and reduces over
BLOCK_K nonzeros at a time, holding a (BLOCK_N, BLOCK_K, BLOCK_B) gathered tile in
registers. Two regimes:
  * batch <= 16 (memory-bound): BLOCK_B equal to the batch bucket, long K chunks;
  * batch >= 32 (L1/FMA-bound): wide batch tiles, short K chunks.
Tiles whose gathered block would need more than ``MAX_ELEMS_PER_THREAD`` registers per
thread are dropped up front (they spill); the rest are pruned per problem at launch.
"""
from __future__ import annotations

import triton

from .._triton import next_power_of_2

MAX_ELEMS_PER_THREAD = 128
SMALL_BATCH = 16


def _fits(bn, bk, bb, warps):
    return bn * bk * bb <= MAX_ELEMS_PER_THREAD * 32 * warps


def _small_batch_tiles():
    # (BLOCK_N, BLOCK_K, num_warps)
    return [(8, 32, 4), (8, 64, 4), (8, 128, 4), (16, 64, 4), (16, 128, 4), (32, 32, 4),
            (32, 64, 4), (32, 128, 8), (64, 64, 4), (64, 128, 8), (128, 32, 4)]


def _large_batch_tiles():
    return [(16, 4, 4), (16, 8, 4), (32, 1, 4), (32, 4, 4), (32, 8, 8), (64, 1, 4),
            (64, 2, 4), (64, 4, 8), (128, 1, 8), (128, 2, 8)]


def gather_configs():
    configs = []
    for bb in (1, 2, 4, 8, 16):
        for bn, bk, w in _small_batch_tiles():
            if _fits(bn, bk, bb, w):
                configs.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=w))
    for bb in (32, 64, 128):
        for bn, bk, w in _large_batch_tiles():
            if _fits(bn, bk, bb, w):
                configs.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=w))
    # The interpreter keeps only the first config: make it one that covers every case
    # with a small, cheap tile.
    first = triton.Config({"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_B": 4}, num_warps=4)
    return [first] + configs


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

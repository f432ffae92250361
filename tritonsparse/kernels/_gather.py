"""Loop bodies shared by the gather kernels (condensed forward and CSR / transposed dX).

Both kernels compute, for a tile of output rows r and batch columns b,

    acc[r, b] += val[r, k] * xT[idx[r, k], b]

over the nonzeros k of each row, with no reduction inside the loop. Two tile shapes,
chosen by the config (see ``_configs``):

* :func:`rows_step` (tiles with BLOCK_K == 1, batch >= 16): a 2-D (BLOCK_N, BLOCK_B) accumulator and ``UNROLL``
  nonzeros per step, one at a time. Each thread holds whole 128-bit batch vectors of its
  rows; a row's index and value are loaded once per thread and feed every FMA of that
  row. The row pointers are loop-invariant, so the ``UNROLL`` loads of a step use
  immediate offsets.
* :func:`chunk_step` (BLOCK_K > 1; every small batch, and 16-column tiles at large
  batch): a 3-D (BLOCK_N, BLOCK_K, BLOCK_B) accumulator with the
  nonzeros of a row spread over lanes, so a warp reads a row's indices and values as one
  coalesced run (memory-bound regime: these bytes dominate). The K axis is summed once,
  after the loop, by the caller.

In both, the (BLOCK_N,) / (BLOCK_N, BLOCK_K) index and value tiles have fewer elements
than the program has threads (the configs see to it), which lets Triton load them
directly in the layout of the accumulator: a larger tile is loaded in a layout of its
own and converted through shared memory, which puts STS / BAR / LDS into every
iteration. The one exception is a single batch column, where the gather has the shape
of the index tile and shares its layout at any size.

Masks. ``lim`` is ``in_features`` (uint32) for live batch columns and 0 for dead ones, so
one unsigned compare ``idx < lim`` rejects an index < 0 or >= in_features and a dead
batch column at once. Dead nonzero slots load index -1 and are rejected the same way.
The gather is masked (``other=0``), so a dead slot never reads x: an inf in x cannot turn
into NaN through 0 * inf, and a bad index is never dereferenced.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gather_offsets(idx, stride_xt_i, INT64: tl.constexpr):
    if INT64:
        return idx.to(tl.int64) * stride_xt_i
    return idx.to(tl.int32) * stride_xt_i


@triton.jit
def _load_vals(v_p, vals_ptr, mask, VPERM: tl.constexpr, MASKED: tl.constexpr):
    """The values at ``v_p``, or with ``VPERM`` the values ``vals_ptr[perm]`` of the
    positions ``perm`` stored at ``v_p`` (dX reading the condensed values in their own
    order through the CSC permutation, instead of a permuted copy made per call). Masked
    slots give 0 (and read no value)."""
    if VPERM:
        if MASKED:
            val = tl.load(vals_ptr + tl.load(v_p, mask=mask, other=0), mask=mask, other=0.0)
        else:
            val = tl.load(vals_ptr + tl.load(v_p))
    else:
        if MASKED:
            val = tl.load(v_p, mask=mask, other=0.0)
        else:
            val = tl.load(v_p)
    return val


@triton.jit
def rows_step(acc_a, acc_b, i_ptrs, v_ptrs, x_cols, lim_a, lim_b, stride_xt_i, k, kmax, stride_k_i, stride_k_v,
              vals_ptr, HALF: tl.constexpr, UNROLL: tl.constexpr, MASKED: tl.constexpr, INT64: tl.constexpr,
              VPERM: tl.constexpr):
    """``UNROLL`` nonzeros k, k+1, ... of every row into the 2-D accumulators.

    The batch tile is two halves of ``HALF`` columns (``acc_a``, ``acc_b``; x_cols points
    at the first half, the second is ``HALF`` elements further), so a thread holds two
    128-bit vectors of each of its rows and one index / value load feeds 8 FMAs.
    i_ptrs, v_ptrs: (BLOCK_N,) pointers to each row's first nonzero; lim_a, lim_b: (HALF,)
    uint32; kmax: (BLOCK_N,) end of each row's nonzeros (used only if MASKED); vals_ptr,
    VPERM: see :func:`_load_vals`."""
    for u in tl.static_range(UNROLL):
        kk = k + u
        if MASKED:
            ok = kk < kmax
            idx = tl.load(i_ptrs + kk * stride_k_i, mask=ok, other=-1)
        else:
            ok = None
            idx = tl.load(i_ptrs + kk * stride_k_i)
        val = _load_vals(v_ptrs + kk * stride_k_v, vals_ptr, ok, VPERM, MASKED)
        idx = idx.to(tl.int32)
        ui = idx.to(tl.uint32, bitcast=True)[:, None]
        x_p = x_cols[None, :] + _gather_offsets(idx, stride_xt_i, INT64)[:, None]
        xa = tl.load(x_p, mask=ui < lim_a[None, :], other=0.0)
        xb = tl.load(x_p + HALF, mask=ui < lim_b[None, :], other=0.0)
        v = val.to(tl.float32)[:, None]
        acc_a = tl.fma(v, xa.to(tl.float32), acc_a)
        acc_b = tl.fma(v, xb.to(tl.float32), acc_b)
    return acc_a, acc_b


@triton.jit
def _load_slots(i_ptrs, v_ptrs, k, kmax, stride_k_i, stride_k_v, vals_ptr, BLOCK_K: tl.constexpr,
                MASKED: tl.constexpr, VPERM: tl.constexpr):
    """(BLOCK_N, BLOCK_K) indices (int32; -1 in dead slots) and values of nonzeros k.."""
    ks = k + tl.arange(0, BLOCK_K)
    i_p = i_ptrs[:, None] + ks[None, :] * stride_k_i
    v_p = v_ptrs[:, None] + ks[None, :] * stride_k_v
    if MASKED:
        ok = ks[None, :] < kmax[:, None]
        idx = tl.load(i_p, mask=ok, other=-1)
    else:
        ok = None
        idx = tl.load(i_p)
    return idx.to(tl.int32), _load_vals(v_p, vals_ptr, ok, VPERM, MASKED)


@triton.jit
def chunk_step(acc, i_ptrs, v_ptrs, x_cols, lim, x_col, lim1, stride_xt_i, k, kmax, stride_k_i, stride_k_v, vals_ptr,
               BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, MASKED: tl.constexpr, INT64: tl.constexpr,
               VPERM: tl.constexpr):
    """Nonzeros k .. k+BLOCK_K-1 of every row into the 3-D accumulator (arguments as in
    :func:`rows_step`; the K axis of ``acc`` is summed by the caller after the loop).

    For a single batch column (BLOCK_B == 1) the accumulator is 2-D (BLOCK_N, BLOCK_K) and
    the gather reads through the scalar pointer ``x_col`` with the scalar limit ``lim1``:
    the gather then has the shape of the index load, so Triton gives both one layout (no
    conversion, whatever the tile size)."""
    idx, val = _load_slots(i_ptrs, v_ptrs, k, kmax, stride_k_i, stride_k_v, vals_ptr, BLOCK_K, MASKED, VPERM)
    off = _gather_offsets(idx, stride_xt_i, INT64)
    if BLOCK_B == 1:
        xg = tl.load(x_col + off, mask=idx.to(tl.uint32, bitcast=True) < lim1, other=0.0)
        return tl.fma(val.to(tl.float32), xg.to(tl.float32), acc)
    else:
        live = idx.to(tl.uint32, bitcast=True)[:, :, None] < lim[None, None, :]
        xg = tl.load(x_cols[None, None, :] + off[:, :, None], mask=live, other=0.0)
        return tl.fma(val.to(tl.float32)[:, :, None], xg.to(tl.float32), acc)


@triton.jit
def gather_rows(i_ptrs, v_ptrs, xT_ptr, col0, B, in_features, stride_xt_i, k_lo, k_full, kmax, stride_k_i, stride_k_v,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, UNROLL: tl.constexpr,
                MASK_MAIN: tl.constexpr, INT64: tl.constexpr, vals_ptr=None, VPERM: tl.constexpr = False):
    """The whole fan-in walk of a row tile over batch columns col0 .. col0+BLOCK_B-1.

    Nonzeros k_lo .. kmax[r] of each row r (kmax: (BLOCK_N,)); the main loop covers
    [k_lo, k_lo + k_full) in whole steps (masked only if ``MASK_MAIN``: rows of unequal
    length), the tail after it is masked. Tiles with BLOCK_K == 1 take :func:`rows_step`
    (BLOCK_B >= 2 columns, in two halves),
    otherwise :func:`chunk_step`. With ``VPERM``, ``v_ptrs`` point at positions into
    ``vals_ptr`` rather than at values (see :func:`_load_vals`). Returns the
    (BLOCK_N, BLOCK_B) fp32 sums."""
    cols = col0 + tl.arange(0, BLOCK_B)
    x_cols = xT_ptr + cols
    lim = tl.where(cols < B, in_features, 0).to(tl.uint32)
    if BLOCK_K == 1:
        HALF: tl.constexpr = BLOCK_B // 2
        cols_a = col0 + tl.arange(0, HALF)
        xa_cols = xT_ptr + cols_a
        lim_a = tl.where(cols_a < B, in_features, 0).to(tl.uint32)
        lim_b = tl.where(cols_a + HALF < B, in_features, 0).to(tl.uint32)
        acc_a = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
        for k in range(k_lo, k_lo + k_full, UNROLL):
            acc_a, acc_b = rows_step(acc_a, acc_b, i_ptrs, v_ptrs, xa_cols, lim_a, lim_b, stride_xt_i, k, kmax,
                                     stride_k_i, stride_k_v, vals_ptr, HALF, UNROLL, MASK_MAIN, INT64, VPERM)
        for k in range(k_lo + k_full, tl.max(kmax, axis=0)):
            acc_a, acc_b = rows_step(acc_a, acc_b, i_ptrs, v_ptrs, xa_cols, lim_a, lim_b, stride_xt_i, k, kmax,
                                     stride_k_i, stride_k_v, vals_ptr, HALF, 1, True, INT64, VPERM)
        return tl.join(acc_a, acc_b).permute(0, 2, 1).reshape(BLOCK_N, BLOCK_B)
    else:
        x_col = xT_ptr + col0
        lim1 = tl.where(col0 < B, in_features, 0).to(tl.uint32)
        if BLOCK_B == 1:
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K, BLOCK_B), dtype=tl.float32)
        for k in range(k_lo, k_lo + k_full, BLOCK_K * UNROLL):
            for u in tl.static_range(UNROLL):
                acc = chunk_step(acc, i_ptrs, v_ptrs, x_cols, lim, x_col, lim1, stride_xt_i, k + u * BLOCK_K, kmax,
                                 stride_k_i, stride_k_v, vals_ptr, BLOCK_K, BLOCK_B, MASK_MAIN, INT64, VPERM)
        for k in range(k_lo + k_full, tl.max(kmax, axis=0), BLOCK_K):
            acc = chunk_step(acc, i_ptrs, v_ptrs, x_cols, lim, x_col, lim1, stride_xt_i, k, kmax, stride_k_i,
                             stride_k_v, vals_ptr, BLOCK_K, BLOCK_B, True, INT64, VPERM)
        out = tl.sum(acc, axis=1)
        if BLOCK_B == 1:
            out = out[:, None]
        return out

"""Gradient of the condensed values:

    dvalues[j, k] = sum_b grad_y[b, j] * x[b, indices[j, k]]

A program owns a (BLOCK_N rows x BLOCK_K fan-in slots) tile of dvalues and one *slice*
of the batch: it loads its indices once, then walks its slice in chunks of BLOCK_B,
gathering ``xT[indices, b0:b0+BLOCK_B]`` (contiguous along the batch) and multiplying it
by the matching ``grad_yT`` (n, B) chunk into a 3-D (BLOCK_N, BLOCK_K, BLOCK_B) fp32
accumulator. The batch axis is reduced once, after the loop: no shuffle or barrier in
the hot loop.

Why slices (the batch split over a second grid axis): a program that walks the whole
batch streams a B-long row of x per gathered slot, and the rows of all slots of an SM
(in_features x B x element size: 3 MB for a 3072-wide fp32 layer at batch 256) do not fit
its L1, so every gathered element came from L2 (4 B of L2 traffic per FMA in fp32). A
slice of ``b_per_split`` columns keeps the x columns a wave of programs touches near
``in_features x b_per_split x element size``, sized by :func:`dw_split` to fit L1, and
adds programs when the (rows x fan-in) tiles alone would not fill the GPU. Each slice
writes an fp32 partial sum; the slices are summed after the kernel (deterministic: no
atomics). With one slice the kernel writes the output directly.

Indices outside ``[0, in_features)`` are never dereferenced: such a slot reads row 0 of x
(always in bounds) and its dvalue is stored as 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, launch_device, size_bucket

# (BLOCK_N, BLOCK_K, BLOCK_B, num_warps), from an ahead-of-time compile survey for sm_80 and
# sm_90: no spills. The 3-D accumulator costs BLOCK_N*BLOCK_K*BLOCK_B / (32*num_warps)
# registers on top of the gathered tile, so tiles stay at 8-16 elements per thread.
# Small BLOCK_B tiles serve small batches (and slices).
_DW_TILES = [
    (8, 32, 4, 4), (32, 8, 4, 4), (16, 16, 4, 4),
    (16, 32, 8, 8), (8, 64, 8, 8), (16, 16, 8, 4), (32, 8, 8, 4), (32, 16, 8, 8), (64, 8, 8, 8),
    (8, 32, 16, 8), (16, 8, 16, 4), (16, 16, 16, 8),
    (8, 8, 32, 4), (8, 16, 32, 8), (16, 8, 32, 8),
]


def _dw_configs():
    def cfg(bn, bk, bb, w):
        return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=w, num_stages=1)

    # the interpreter keeps only the first config
    return [cfg(16, 16, 4, 4)] + [cfg(*t) for t in _DW_TILES]


def _prune_dw(configs, named_args, **kwargs):
    """Tiles no wider along the batch than a slice and no longer along K than the
    (bucketed) fan-in. Uses only the bucketed keys, so the choice holds for every size in
    the bucket."""
    b, k = int(named_args["b_bucket"]), int(named_args["k_bucket"])
    kept = [c for c in configs[1:] if c.kwargs["BLOCK_B"] <= max(b, 4) and c.kwargs["BLOCK_K"] <= max(k, 8)]
    return kept or configs[:1]


@autotune(configs=_dw_configs(), key=["n_bucket", "k_bucket", "b_bucket"], prune_configs_by={"early_config_prune": _prune_dw})
@triton.jit
def _condensed_dw_kernel(
    xT_ptr, gyT_ptr, indices_ptr, dv_ptr,
    B, n, K, in_features, b_per_split,
    n_bucket, k_bucket, b_bucket,
    stride_xt_i, stride_gyt_n,
    stride_i_n, stride_i_k,
    stride_dv_s, stride_dv_n, stride_dv_k,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    # axis 0: (row block, fan-in block) tiles, fan-in blocks fastest so the programs of a
    # row block (which share its grad_y rows) run together; axis 1: batch slices
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    k_blocks = tl.cdiv(K, BLOCK_K)
    pid_n = pid // k_blocks
    pid_k = pid - pid_n * k_blocks
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < n
    nk_mask = row_mask[:, None] & (ks < K)[None, :]
    rows64 = rows.to(tl.int64)
    idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
    idx = idx.to(tl.int32)
    in_range = (idx >= 0) & (idx < in_features)
    idx = tl.where(in_range, idx, 0)  # never read outside x; the slot is zeroed below
    x_base = xT_ptr + idx.to(tl.int64)[:, :, None] * stride_xt_i
    # grad_y is loaded as (BLOCK_N, 1, BLOCK_B), already in the gathered tile's layout:
    # no layout conversion through shared memory inside the loop
    gy_base = gyT_ptr + rows64[:, None, None] * stride_gyt_n

    b_start = pid_s * b_per_split
    b_end = tl.minimum(b_start + b_per_split, B)
    acc = tl.zeros((BLOCK_N, BLOCK_K, BLOCK_B), dtype=tl.float32)
    for b0 in range(b_start, b_end, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < b_end
        gy = tl.load(gy_base + bs[None, None, :], mask=row_mask[:, None, None] & b_mask[None, None, :], other=0.0)
        xg = tl.load(x_base + bs[None, None, :], mask=b_mask[None, None, :], other=0.0)
        acc = tl.fma(xg.to(tl.float32), gy.to(tl.float32), acc)

    dv = tl.where(in_range, tl.sum(acc, axis=2), 0.0)
    dv_ptrs = dv_ptr + pid_s.to(tl.int64) * stride_dv_s + rows64[:, None] * stride_dv_n + ks[None, :] * stride_dv_k
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=nk_mask)


# -- the batch split --------------------------------------------------------------------
_L1_SLICE_BYTES = 96 * 1024  # x columns a wave of programs should keep in an SM's L1 (of ~200 KB)
_MIN_SLICE = 32  # columns per slice: the fp32 partial sums cost 8 B / 32 = 0.25 B per FMA at most
_TARGET_PROGRAMS = 1024  # enough programs for several waves on a 132-SM GPU
_SLICE_GRAIN = 32  # slices are multiples of the widest BLOCK_B


def dw_split(n: int, K: int, batch: int, in_features: int, element_size: int) -> tuple[int, int]:
    """``(splits, b_per_split)`` for the dvalues kernel: slices of the batch narrow enough
    that ``in_features x b_per_split x element_size`` fits in L1 (at least 32 columns), and
    enough of them to fill the GPU when the (rows x fan-in) tiles are few. A batch of 32
    or less is not split."""
    if batch <= _MIN_SLICE:
        return 1, max(batch, 1)
    by_l1 = _L1_SLICE_BYTES // max(in_features * element_size, 1)
    cols = max(_MIN_SLICE, 1 << (max(by_l1, 1).bit_length() - 1))  # a power of two >= 32
    splits = triton.cdiv(batch, cols)
    tiles = triton.cdiv(max(n, 1), 16) * triton.cdiv(max(K, 1), 16)
    splits = max(splits, min(triton.cdiv(_TARGET_PROGRAMS, tiles), triton.cdiv(batch, _MIN_SLICE)))
    per = triton.cdiv(triton.cdiv(batch, splits), _SLICE_GRAIN) * _SLICE_GRAIN
    return triton.cdiv(batch, per), per


def dw_grid(n: int, K: int, splits: int, meta) -> tuple[int, int]:
    """Launch grid: the tiles on axis 0 (up to 2**31 - 1), the batch slices on axis 1."""
    return triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"]), splits


def condensed_dw(xT, grad_yT, indices, out, splits=None):
    """Launch the dvalues kernel. xT: (in_features, B) and grad_yT: (n, B), batch
    contiguous; indices: (n, K); out: (n, K), written in full. ``splits`` overrides the
    batch split of :func:`dw_split` (for tests)."""
    n, K = indices.shape
    in_features, B = xT.shape
    if B > 1 and (xT.stride(1) != 1 or grad_yT.stride(1) != 1):
        raise ValueError("xT and grad_yT must be contiguous along the batch (stride 1 in dim 1)")
    if grad_yT.shape != (n, B) or out.shape != (n, K):
        raise ValueError(f"grad_yT must be ({n}, {B}) and out ({n}, {K}); got {tuple(grad_yT.shape)}, {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    if B == 0:
        return out.zero_()
    if splits is None:
        splits, per = dw_split(n, K, B, in_features, xT.element_size())
    else:
        per = triton.cdiv(triton.cdiv(B, max(1, int(splits))), _SLICE_GRAIN) * _SLICE_GRAIN if B > _SLICE_GRAIN else B
        splits = triton.cdiv(B, per)
    dst = out if splits == 1 else torch.empty(splits, n, K, dtype=torch.float32, device=out.device)
    stride_s = 0 if splits == 1 else dst.stride(0)
    with launch_device(xT):
        _condensed_dw_kernel[lambda meta: dw_grid(n, K, splits, meta)](
            xT, grad_yT, indices, dst,
            B, n, K, in_features, per,
            size_bucket(n), size_bucket(K), batch_bucket(per),
            xT.stride(0), grad_yT.stride(0),
            indices.stride(0), indices.stride(1),
            stride_s, dst.stride(-2), dst.stride(-1),
        )
    if splits > 1:
        out.copy_(dst.sum(0))
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    ints = {k: "i32" for k in ("B", "n", "K", "in_features", "b_per_split", "n_bucket", "k_bucket", "b_bucket",
                                "stride_xt_i", "stride_gyt_n", "stride_i_n", "stride_i_k",
                                "stride_dv_s", "stride_dv_n", "stride_dv_k")}
    return [
        (_condensed_dw_kernel, {"xT_ptr": f"*{dt}", "gyT_ptr": f"*{dt}", "indices_ptr": f"*{it}", "dv_ptr": f"*{ot}", **ints}, {})
        for dt, it, ot in (("fp32", "i32", "fp32"), ("bf16", "i16", "bf16"))
    ]


AOT_SPECS = _aot_specs()

"""Gradient of the condensed values:

    dvalues[j, k] = sum_b grad_y[b, j] * x[b, indices[j, k]]

A program walks (BLOCK_N rows x BLOCK_K fan-in slots) tiles of dvalues over one *slice*
of the batch: per tile it loads the indices once, then walks the slice in chunks of
BLOCK_B, gathering ``xT[indices, b0:b0+BLOCK_B]`` (contiguous along the batch) and
multiplying it by the matching ``grad_yT`` (n, B) chunk into a 3-D (BLOCK_N, BLOCK_K,
BLOCK_B) fp32 accumulator; the batch axis is reduced once per tile, after the loop (no
shuffle or barrier in the hot loop). Each slice writes an fp32 partial sum of n x K; a
second small kernel (:func:`_dw_reduce_kernel`) sums the slices in slice order and writes
the values' dtype (deterministic: no atomics; one launch where a PyTorch ``sum`` and a
cast were two). With one slice the kernel writes the output directly.

Why slices: a program that walks the whole batch streams a B-long row of x per gathered
slot, and those rows (in_features x B x element size: 3 MB for a 3072-wide fp32 layer at
batch 256) do not fit an SM's L1, so every gathered element came from L2 (4 B per FMA in
fp32). :func:`dw_split` picks one of two regimes:

* **slice-affine programs** when two slices of >= 32 columns of x fit in L1 (ViT-B fc1,
  768 wide, fp32: slices of 32): about two programs per SM in all, each walking many tiles
  over its one slice, so an SM reads its slices' x columns from L2 about once.
* **a program per tile** otherwise (ViT-B fc2, 3072 wide), slices of >= 32 columns sized
  for L1: each SM then sees only ~n·K/132 slots per slice, too few for much L1 reuse.

**Modeled** on an H100 SXM (sm_90 SASS with the runtime's specialization; 90% sparse ViT-B
MLP, fp32, batch 256; the shared SASS roofline model's constants; the slice-affine figures
from an estimate that charges each program's whole tile loop at one instruction per
scheduler cycle against L2 traffic, plus the partial-sum reduction): 768 -> 3072 19 µs
(0.9 B of L2 traffic per FMA; 28 µs one program per tile, 42 µs before the change);
3072 -> 768 47 µs (4.1 B per FMA, L2-bound; 48 µs before). Dense fp32 SGEMM: 26 µs.
bf16 batch 16: 3.6 µs (4.1 before).

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


@triton.jit
def tile_indices(indices_ptr, pid_n, pid_k, n, K, stride_i_n, stride_i_k,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_N rows x BLOCK_K slots) tile (pid_n, pid_k) of an (n, K) index array:
    ``(rows, slots, row mask, tile mask, int64 rows, indices)``; masked slots read 0."""
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < n
    nk_mask = row_mask[:, None] & (ks < K)[None, :]
    rows64 = rows.to(tl.int64)
    idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
    return rows, ks, row_mask, nk_mask, rows64, idx


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
    # axis 1: the batch slice; axis 0: a program's share of the (row block, fan-in block)
    # tiles, visited with a stride of the axis-0 size (one tile each when the grid holds
    # every tile, many when few programs stay on one slice: its x columns then stay in L1)
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    pid_s = tl.program_id(1)
    k_blocks = tl.cdiv(K, BLOCK_K)
    n_tiles = tl.cdiv(n, BLOCK_N) * k_blocks
    b_start = pid_s * b_per_split
    b_end = tl.minimum(b_start + b_per_split, B)
    for t in range(pid, n_tiles, n_progs):
        pid_n = t // k_blocks
        pid_k = t - pid_n * k_blocks
        rows, ks, row_mask, nk_mask, rows64, idx = tile_indices(indices_ptr, pid_n, pid_k, n, K, stride_i_n, stride_i_k,
                                                                BLOCK_N, BLOCK_K)
        idx = idx.to(tl.int32)
        in_range = (idx >= 0) & (idx < in_features)
        idx = tl.where(in_range, idx, 0)  # never read outside x; the slot is zeroed below
        x_base = xT_ptr + idx.to(tl.int64)[:, :, None] * stride_xt_i
        # grad_y is loaded as (BLOCK_N, 1, BLOCK_B), already in the gathered tile's layout
        gy_base = gyT_ptr + rows64[:, None, None] * stride_gyt_n

        acc = tl.zeros((BLOCK_N, BLOCK_K, BLOCK_B), dtype=tl.float32)
        for b0 in range(b_start, b_end, BLOCK_B):
            bs = b0 + tl.arange(0, BLOCK_B)
            b_mask = bs < b_end
            gy = tl.load(gy_base + bs[None, None, :], mask=row_mask[:, None, None] & b_mask[None, None, :], other=0.0)
            xg = tl.load(x_base + bs[None, None, :], mask=b_mask[None, None, :], other=0.0)
            acc = tl.fma(xg.to(tl.float32), gy.to(tl.float32), acc)

        dv = tl.where(in_range, tl.sum(acc, axis=2), 0.0)  # the batch reduced once per tile
        dv_ptrs = dv_ptr + pid_s.to(tl.int64) * stride_dv_s + rows64[:, None] * stride_dv_n + ks[None, :] * stride_dv_k
        tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=nk_mask)


@autotune(configs=[triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1)], key=[])
@triton.jit
def _dw_reduce_kernel(part_ptr, out_ptr, numel, K, splits, stride_s, stride_on, stride_ok,
                      OUT_FLAT: tl.constexpr, BLOCK: tl.constexpr):
    """out[j, k] = sum over s = 0, 1, ... of part[s, j, k] (in that order: deterministic),
    cast to out's dtype. ``part``: (splits, n, K) contiguous fp32 partials, flattened per
    slice (``numel = n * K``); ``out`` at its strides, or flat when ``OUT_FLAT``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = part_ptr + offs
    for _ in range(splits):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += stride_s  # 64-bit pointers: no int32 product to overflow
    if OUT_FLAT:
        out_ptrs = out_ptr + offs
    else:
        rows = offs // K
        out_ptrs = out_ptr + rows * stride_on + (offs - rows * K) * stride_ok
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def reduce_partials(part: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out.copy_(part.sum(0))`` in one launch: the (splits, n, K) fp32 partial sums of the
    batch slices added in slice order (deterministic), written in ``out``'s dtype at its
    strides."""
    splits, n, K = part.shape
    if not part.is_contiguous() or part.dtype != torch.float32:
        raise ValueError("part must be a contiguous fp32 (splits, n, K) tensor")
    if out.shape != (n, K):
        raise ValueError(f"out must have shape {(n, K)}, got {tuple(out.shape)}")
    numel = n * K
    if numel == 0:
        return out
    flat = out.is_contiguous()
    with launch_device(part):
        _dw_reduce_kernel[lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)](
            part, out, numel, K, splits, part.stride(0), out.stride(0), out.stride(1), OUT_FLAT=flat)
    return out


# -- the batch split --------------------------------------------------------------------
_L1_BYTES = 192 * 1024  # L1 an SM can give to cached x columns (of 256 KB with shared memory)
_MIN_SLICE = 32  # columns per slice when x fits in L1 anyway: partial sums <= 0.25 B per FMA
_MAX_SPLITS = 32  # slices (fp32 partial sums of n x K each)
_RESIDENT = 2  # programs per SM assumed when programs stay on one slice
_SMS = 132  # an H100 SXM; more SMs only lower the reuse a little
_TARGET_PROGRAMS = 1024  # enough programs for several waves when each owns one tile


def dw_split(n: int, K: int, batch: int, in_features: int, element_size: int) -> tuple[int, int, int]:
    """``(splits, b_per_split, programs_per_slice)`` for the dvalues kernel
    (``programs_per_slice == 0``: one program per tile).

    * batch <= 32: one slice, one program per tile.
    * **slice-affine programs**, when two slices of at least 32 columns of x fit in an SM's
      L1 (``2 x in_features x 32 x element_size`` <= 192 KB): slices as wide as that
      allows (at most 32 of them), and about two programs per SM in all, each walking many
      tiles over its one slice, so an SM reads the x columns of its slices from L2 about
      once instead of once per gathered slot.
    * otherwise a program per tile, the batch in slices of >= 32 columns sized for L1 (and
      more of them if needed to fill the GPU, at most 32); each SM then sees only about n·K/132 slots
      per slice, too few for much L1 reuse, so wide layers stay L2-bound.
    Each slice is an fp32 partial sum of n x K, summed after the kernel.
    """
    if batch <= _MIN_SLICE:
        return 1, max(batch, 1), 0
    fit = _L1_BYTES // max(_RESIDENT * in_features * element_size, 1)  # columns of x two slices can keep in L1
    if fit >= _MIN_SLICE:
        per = max(1 << (fit.bit_length() - 1), 1 << (triton.cdiv(batch, _MAX_SPLITS) - 1).bit_length())
        per = min(per, 1 << (batch - 1).bit_length())
        splits = triton.cdiv(batch, per)
        return splits, per, max(1, triton.cdiv(_RESIDENT * _SMS, splits))
    by_l1 = _L1_BYTES // max(in_features * element_size, 1)  # columns of x one slice keeps in L1
    per = max(_MIN_SLICE, 1 << (max(by_l1, 1).bit_length() - 1))
    tiles = triton.cdiv(max(n, 1), 16) * triton.cdiv(max(K, 1), 16)
    splits = max(triton.cdiv(batch, per), min(triton.cdiv(_TARGET_PROGRAMS, tiles), triton.cdiv(batch, _MIN_SLICE)))
    splits = min(splits, _MAX_SPLITS)
    per = triton.cdiv(triton.cdiv(batch, splits), _MIN_SLICE) * _MIN_SLICE
    return triton.cdiv(batch, per), per, 0


def dw_grid(n: int, K: int, splits: int, programs: int, meta) -> tuple[int, int]:
    """Launch grid: axis 0 the programs per slice (every tile, up to 2**31 - 1, when
    ``programs`` is 0; else at most ``programs``), axis 1 the batch slices."""
    tiles = triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"])
    return (tiles if programs == 0 else min(tiles, programs)), splits


def condensed_dw(xT, grad_yT, indices, out, splits=None):
    """Launch the dvalues kernel. xT: (in_features, B) and grad_yT: (n, B), batch
    contiguous; indices: (n, K); out: (n, K), written in full. ``splits`` overrides the
    batch split of :func:`dw_split` (for tests; one program per tile)."""
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
        splits, per, programs = dw_split(n, K, B, in_features, xT.element_size())
    else:
        per, programs = triton.cdiv(B, max(1, int(splits))), 0
        splits = triton.cdiv(B, per)
    dst = out if splits == 1 else torch.empty(splits, n, K, dtype=torch.float32, device=out.device)
    stride_s = 0 if splits == 1 else dst.stride(0)
    with launch_device(xT):
        _condensed_dw_kernel[lambda meta: dw_grid(n, K, splits, programs, meta)](
            xT, grad_yT, indices, dst,
            B, n, K, in_features, per,
            size_bucket(n), size_bucket(K), batch_bucket(per),
            xT.stride(0), grad_yT.stride(0),
            indices.stride(0), indices.stride(1),
            stride_s, dst.stride(-2), dst.stride(-1),
        )
    if splits > 1:
        reduce_partials(dst, out)
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    ints = {k: "i32" for k in ("B", "n", "K", "in_features", "b_per_split", "n_bucket", "k_bucket", "b_bucket",
                                "stride_xt_i", "stride_gyt_n", "stride_i_n", "stride_i_k",
                                "stride_dv_s", "stride_dv_n", "stride_dv_k")}
    red = {k: "i32" for k in ("numel", "K", "splits", "stride_s", "stride_on", "stride_ok")}
    return [
        (_condensed_dw_kernel, {"xT_ptr": f"*{dt}", "gyT_ptr": f"*{dt}", "indices_ptr": f"*{it}", "dv_ptr": f"*{ot}", **ints}, {})
        for dt, it, ot in (("fp32", "i32", "fp32"), ("bf16", "i16", "bf16"))
    ] + [
        (_dw_reduce_kernel, {"part_ptr": "*fp32", "out_ptr": f"*{ot}", **red}, {"OUT_FLAT": flat})
        for ot in ("fp32", "bf16") for flat in (True, False)
    ]


AOT_SPECS = _aot_specs()

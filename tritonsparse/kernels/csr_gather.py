"""Row-gather product with a CSR matrix of rows of unequal length:

    out[b, r] = sum_{p in ptr[r]..ptr[r+1]-1} val[p] * inT[col[p], b]  (+ bias[r])

It serves the condensed dX (through the transposed index structure, where row r is
input feature r and its nonzeros are the (neuron, slot) pairs that read it) and the CSR
baseline ``csr_matmul`` (forward and dX).

Load balance. A program owns BLOCK_N rows and loops to the longest of them, so rows of
unequal length waste lanes. Two remedies, both host-side, computed once per pattern in a
:class:`GatherPlan` (see :func:`make_plan`):
  * rows are visited in order of decreasing length (``row_order``), so a program holds
    rows of similar length;
  * rows much longer than the mean (> ``SPLIT_FACTOR`` x mean) are split into segments of
    ``seg_len`` nonzeros. The same kernel reduces each segment into an fp32 workspace laid
    out (B, S, n_long) (S = segments of the longest split row; shorter rows pad with empty
    segments), and a sum over S finishes those rows. No atomics: the result is
    deterministic.
The kernel reads row r's nonzeros from ``starts[r]`` to ``ends[r]``: for plain rows these
are ``crow`` and ``crow[1:]``, for segments two arrays of the plan.

Loop bodies: those of the condensed forward (:mod:`._gather`): no reduction inside the
hot loop, ``tl.fma`` into fp32 accumulators, gathers masked per nonzero so a column index
outside [0, n_cols) is never read, whole steps unmasked up to the tile's shortest row and
masked to its longest. One grid axis (row tiles fastest, then batch tiles); bias read
with its stride; launched under the tensors' device; autotune keys bucketed.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, launch_device, next_power_of_2, size_bucket
from ._configs import gather_configs, prune_gather_configs
from ._gather import gather_rows

SPLIT_FACTOR = 8  # rows longer than this many times the mean length are split
MIN_SEGMENT = 256  # ... and longer than one segment, which holds at least this many nonzeros
MAX_SEGMENTS = 64  # segments per split row at most (bounds the workspace)


# Rows tiles of the shared gather space that build with a stack frame for this kernel
# (with row order and bias, without the runtime's specialization: ``python -m
# tritonsparse._aot``); the forward builds them clean.
_STACK_TILES = {(32, 1, 32, 4, 2), (32, 1, 64, 4, 4), (32, 1, 128, 2, 4)}


@autotune(
    configs=gather_configs(exclude=_STACK_TILES),
    key=["n_bucket", "len_bucket", "b_bucket", "INT64"],
    prune_configs_by={"early_config_prune": prune_gather_configs("n_bucket", "len_bucket", "inT_ptr")},
)
@triton.jit(do_not_specialize=["n_bucket", "len_bucket", "b_bucket"])
def _csr_gather_kernel(
    inT_ptr, starts_ptr, ends_ptr, col_ptr, val_ptr, vperm_ptr, order_ptr, bias_ptr, out_ptr,
    B, n_rows, n_cols, n_bucket, len_bucket, b_bucket,
    stride_in_r, stride_bias,
    stride_out_b, stride_out_r,
    HAS_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr, INT64: tl.constexpr, HAS_VPERM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, UNROLL: tl.constexpr,
):
    # program id -> (row tile, batch tile); row tiles vary fastest
    pid = tl.program_id(0)
    num_n = tl.cdiv(n_rows, BLOCK_N)
    pid_n = pid % num_n
    pid_b = pid // num_n
    lanes = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = lanes < n_rows
    # dead lanes stand in for the tile's first row (in bounds) and are not stored
    lanes_c = tl.where(row_mask, lanes, pid_n * BLOCK_N)
    if HAS_ORDER:
        rows = tl.load(order_ptr + lanes_c)
    else:
        rows = lanes_c
    if INT64:
        rows = rows.to(tl.int64)
    cols_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = cols_b < B

    # nonzero offsets in the index dtype: int32 arrays when nnz < 2**31, int64 beyond
    start = tl.load(starts_ptr + rows)
    length = (tl.load(ends_ptr + rows) - start).to(tl.int32)
    if BLOCK_K == 1:  # the rows body (see _gather.gather_rows)
        step = UNROLL
    else:
        step = BLOCK_K * UNROLL
    # whole steps up to the shortest row need no mask (rows of a tile have similar
    # lengths when the plan orders them); the rest, to the longest row, is masked
    k_full = (tl.min(length, axis=0) // step) * step
    if HAS_VPERM:  # nonzero p's value is val[vperm[p]] (see csr_gather)
        acc = gather_rows(col_ptr + start, vperm_ptr + start, inT_ptr, pid_b * BLOCK_B, B, n_cols, stride_in_r,
                          0, k_full, length, 1, 1, BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, False, INT64, val_ptr, True)
    else:
        acc = gather_rows(col_ptr + start, val_ptr + start, inT_ptr, pid_b * BLOCK_B, B, n_cols, stride_in_r,
                          0, k_full, length, 1, 1, BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, False, INT64)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows * stride_bias).to(tl.float32)[:, None]
    out_ptrs = out_ptr + cols_b[None, :].to(tl.int64) * stride_out_b + rows.to(tl.int64)[:, None] * stride_out_r
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & b_mask[None, :])


class GatherPlan(NamedTuple):
    """How to visit the rows of one CSR pattern (see the module docstring)."""

    order: torch.Tensor  # (n_plain,) int32: rows not split, longest first
    long_rows: torch.Tensor  # (n_long,) int64: rows split into segments, longest first
    seg_start: torch.Tensor  # (S * n_long,) nnz offsets, segment s of long row i at s * n_long + i
    seg_end: torch.Tensor  # (S * n_long,) padding segments have start == end
    n_segments: int  # S
    seg_len: int


def make_plan(crow: torch.Tensor, split_factor: float | None = None, min_segment: int | None = None) -> GatherPlan:
    """The :class:`GatherPlan` of a CSR pattern given by its row pointers (one host sync).

    A row is split when it is longer than ``split_factor`` x the mean row length and
    longer than one segment; segments hold ``seg_len`` nonzeros, a power of two of at least
    ``min_segment``, twice the mean, and the longest row / ``MAX_SEGMENTS``.
    """
    split_factor = SPLIT_FACTOR if split_factor is None else split_factor
    min_segment = MIN_SEGMENT if min_segment is None else min_segment
    crow64 = crow.long()
    lengths = crow64.diff()
    n_rows = lengths.numel()
    mean = float(crow64[-1]) / max(n_rows, 1) if n_rows else 0.0
    max_len = int(lengths.max()) if n_rows else 0
    seg_len = max(min_segment, next_power_of_2(int(2 * mean) + 1), next_power_of_2(-(-max_len // MAX_SEGMENTS)))
    is_long = (lengths > split_factor * mean) & (lengths > seg_len)
    by_length = torch.argsort(lengths, descending=True, stable=True)
    long_sorted = is_long[by_length]
    order = by_length[~long_sorted].to(torch.int32)
    long_rows = by_length[long_sorted]
    n_long = long_rows.numel()
    idx_dtype = crow.dtype
    if n_long == 0:
        empty = torch.zeros(0, dtype=idx_dtype, device=crow.device)
        return GatherPlan(order, long_rows, empty, empty, 0, seg_len)
    n_segments = -(-int(lengths[long_rows[0]]) // seg_len)
    s = torch.arange(n_segments, device=crow.device)[:, None]
    row_start = crow64[long_rows][None, :]
    row_end = crow64[long_rows + 1][None, :]
    seg_start = torch.minimum(row_start + s * seg_len, row_end)
    seg_end = torch.minimum(seg_start + seg_len, row_end)
    return GatherPlan(order, long_rows, seg_start.reshape(-1).to(idx_dtype), seg_end.reshape(-1).to(idx_dtype),
                      n_segments, seg_len)


def _launch(inT, starts, ends, col, val, out, bias, order, n_rows, avg_len, val_perm=None):
    B, n_cols = inT.shape[1], inT.shape[0]
    if n_rows == 0 or B == 0:
        return
    int64 = max(n_cols * inT.stride(0) + B, B * out.stride(0) + n_rows * out.stride(1)) >= 2**31 - 1

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(B, meta["BLOCK_B"]),)

    with launch_device(inT):
        _csr_gather_kernel[grid](
            inT, starts, ends, col, val,
            val_perm if val_perm is not None else starts,
            order if order is not None else starts,
            bias if bias is not None else val,
            out,
            B, n_rows, n_cols, size_bucket(n_rows), size_bucket(max(1, int(avg_len))), batch_bucket(B),
            inT.stride(0), bias.stride(0) if bias is not None else 0,
            out.stride(0), out.stride(1),
            HAS_ORDER=order is not None, HAS_BIAS=bias is not None, INT64=int64, HAS_VPERM=val_perm is not None,
        )


def csr_gather(inT, crow, col, val, out, bias=None, row_order=None, plan: GatherPlan | None = None, val_perm=None):
    """Launch the CSR row-gather kernel.

    inT: (n_cols, B) batch-contiguous (the dense operand, transposed); crow: (n_rows + 1,);
    col, val: (nnz,) contiguous; out: (B, n_rows), written in full; bias: (n_rows,) with
    any stride, or None; row_order: optional (n_rows,) permutation of the rows; plan: optional
    :class:`GatherPlan` of ``crow`` (from :func:`make_plan`), which replaces ``row_order``
    and splits long rows; val_perm: optional (nnz,) int32 or int64 positions into ``val``
    (then any contiguous 1-D tensor): nonzero p's value is ``val[val_perm[p]]``, so dX reads
    the condensed values in their own order through the CSC permutation instead of a
    permuted copy made on every call (one launch less). Column indices outside [0, n_cols)
    contribute nothing (they are never read). Launches on the tensors' CUDA device (or in
    the interpreter).
    """
    n_rows = crow.shape[0] - 1
    B = inT.shape[1]
    if B > 1 and inT.stride(1) != 1:
        raise ValueError(f"inT must be batch-contiguous (stride(1) == 1), got strides {tuple(inT.stride())}")
    if tuple(out.shape) != (B, n_rows):
        raise ValueError(f"out must have shape {(B, n_rows)}, got {tuple(out.shape)}")
    nnz = col.shape[0]
    if val_perm is not None and (val_perm.shape != col.shape or val_perm.dtype not in (torch.int32, torch.int64)
                                 or val.dim() != 1 or not val.is_contiguous()):
        raise ValueError(f"val_perm must be an int32/int64 tensor shaped like col {tuple(col.shape)} with val a "
                         f"contiguous 1-D tensor; got val_perm {tuple(val_perm.shape)} {val_perm.dtype}, "
                         f"val {tuple(val.shape)}")
    if nnz == 0 or n_rows == 0 or B == 0:  # nothing to gather: the bias alone
        out.zero_()
        if bias is not None:
            out += bias.to(out.dtype)
        return out
    avg_len = nnz // max(n_rows, 1)
    if plan is None:
        _launch(inT, crow, crow[1:], col, val, out, bias, row_order, n_rows, avg_len, val_perm)
        return out
    _launch(inT, crow, crow[1:], col, val, out, bias, plan.order, plan.order.shape[0], avg_len, val_perm)
    n_long = plan.long_rows.shape[0]
    if n_long:
        ws = torch.empty(B, plan.n_segments, n_long, dtype=torch.float32, device=out.device)
        _launch(inT, plan.seg_start, plan.seg_end, col, val, ws.view(B, -1), None, None,
                plan.seg_start.shape[0], plan.seg_len, val_perm)
        acc = ws.sum(1)
        if bias is not None:
            acc += bias[plan.long_rows].float()
        out[:, plan.long_rows] = acc.to(out.dtype)
    return out


def _aot_specs():
    """(kernel, signature, constexprs) for the ahead-of-time compile check: fp32 and bf16
    with int32 structure: the row-gather with order and bias (CSR forward; the dX and the
    fp32 segment pass are the same code with less of it) and the bf16 segment pass (fp32
    workspace), and the condensed dX, which reads the values through the CSC permutation
    (``HAS_VPERM``). The check merges each config's BLOCK_* in."""
    specs = []
    variants = [("fp32", "fp32", True, True, False), ("bf16", "bf16", True, True, False),
                ("bf16", "fp32", False, False, False), ("fp32", "fp32", False, False, True),
                ("bf16", "bf16", False, False, True)]
    for dt, out_dt, has_order, has_bias, has_vperm in variants:
        sig = {
            "inT_ptr": f"*{dt}", "starts_ptr": "*i32", "ends_ptr": "*i32", "col_ptr": "*i32",
            "val_ptr": f"*{dt}", "vperm_ptr": "*i32", "order_ptr": "*i32", "bias_ptr": f"*{dt}", "out_ptr": f"*{out_dt}",
            "B": "i32", "n_rows": "i32", "n_cols": "i32", "n_bucket": "i32", "len_bucket": "i32", "b_bucket": "i32",
            "stride_in_r": "i32", "stride_bias": "i32", "stride_out_b": "i32", "stride_out_r": "i32",
        }
        specs.append((_csr_gather_kernel, sig, {"HAS_ORDER": has_order, "HAS_BIAS": has_bias, "INT64": False,
                                                "HAS_VPERM": has_vperm}))
    return specs


AOT_SPECS = _aot_specs()

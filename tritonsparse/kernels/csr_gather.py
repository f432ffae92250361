"""Row-gather product with a CSR matrix of rows of unequal length:

    out[b, r] = sum_{p in ptr[r]..ptr[r+1]-1} val[p] * inT[col[p], b]  (+ bias[r])

It serves the condensed dX (through the transposed index structure, where row r is
input feature r and its nonzeros are the (neuron, slot) pairs that read it) and the CSR
baseline. Rows may be visited in a given order (``row_order``): sorting rows by length
puts rows of similar length in one program, so a long row does not keep the other
BLOCK_N - 1 lanes of its program idle.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton import autotune, batch_bucket
from ._configs import gather_configs, prune_gather_configs


@autotune(
    configs=gather_configs(),
    key=["n_rows", "avg_len", "b_bucket"],
    prune_configs_by={"early_config_prune": prune_gather_configs("n_rows", "avg_len")},
)
@triton.jit
def _csr_gather_kernel(
    inT_ptr, ptr_ptr, col_ptr, val_ptr, order_ptr, bias_ptr, out_ptr,
    B, n_rows, avg_len, b_bucket,
    stride_in_r,
    stride_out_b, stride_out_r,
    HAS_ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    lanes = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = lanes < n_rows
    if HAS_ORDER:
        rows = tl.load(order_ptr + lanes, mask=row_mask, other=0)
    else:
        rows = lanes
    rows64 = rows.to(tl.int64)
    cols_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = cols_b < B

    start = tl.load(ptr_ptr + rows64, mask=row_mask, other=0).to(tl.int64)
    length = tl.load(ptr_ptr + rows64 + 1, mask=row_mask, other=0).to(tl.int64) - start
    max_len = tl.max(length, axis=0)

    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    for p0 in range(0, max_len, BLOCK_K):
        ps = p0 + tl.arange(0, BLOCK_K)
        p_mask = ps[None, :] < length[:, None]
        offs = start[:, None] + ps[None, :]
        col = tl.load(col_ptr + offs, mask=p_mask, other=0)
        val = tl.load(val_ptr + offs, mask=p_mask, other=0.0)
        xg = tl.load(inT_ptr + col.to(tl.int64)[:, :, None] * stride_in_r + cols_b[None, None, :],
                     mask=b_mask[None, None, :], other=0.0)
        acc += tl.sum(val.to(tl.float32)[:, :, None] * xg.to(tl.float32), axis=1)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + cols_b[None, :].to(tl.int64) * stride_out_b + rows64[:, None] * stride_out_r
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & b_mask[None, :])


def csr_gather(inT, crow, col, val, out, bias=None, row_order=None):
    """Launch the CSR row-gather kernel.

    inT: (n_cols, B) contiguous (the dense operand, transposed); crow: (n_rows + 1,);
    col, val: (nnz,) contiguous; out: (B, n_rows), written in full; bias: (n_rows,) or
    None; row_order: optional (n_rows,) permutation of the rows.
    """
    n_rows = crow.shape[0] - 1
    B = inT.shape[1]
    assert inT.stride(1) == 1 or B == 1
    avg_len = max(1, col.shape[0] // max(n_rows, 1))
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]), triton.cdiv(B, meta["BLOCK_B"]))  # noqa: E731
    _csr_gather_kernel[grid](
        inT, crow, col, val,
        row_order if row_order is not None else crow,
        bias if bias is not None else val,
        out,
        B, n_rows, avg_len, batch_bucket(B),
        inT.stride(0),
        out.stride(0), out.stride(1),
        HAS_ORDER=row_order is not None, HAS_BIAS=bias is not None,
    )
    return out

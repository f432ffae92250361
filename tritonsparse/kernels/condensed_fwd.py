"""Forward of the condensed constant fan-in matmul:

    y[b, j] = sum_k values[j, k] * x[b, indices[j, k]] + bias[j]

Layout: x is read through a transposed copy ``xT`` (in_features, B) so that the gather
``xT[indices[j, k], b0:b0+BLOCK_B]`` reads contiguous batch elements (one cache line per
gathered index at BLOCK_B=32 fp32). A program owns a (BLOCK_N rows x BLOCK_B batch) tile
of y and walks the fan-in in chunks of BLOCK_K, so a chunk is a 3-D gather
(BLOCK_N, BLOCK_K, BLOCK_B) reduced over K.

Two regimes, two halves of the autotune space:
  * small batch (memory-bound): few batch columns, long K chunks, so the bytes of
    values + indices stream at full width;
  * large batch (L1/FMA-bound): wide batch tiles and short K chunks, so each gathered
    index and value is reused across many batch columns.
The program id over rows varies fastest, so programs that run together share the same
batch slice of xT and it stays in L1/L2.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton import autotune, batch_bucket
from ._configs import gather_configs, prune_gather_configs


@autotune(
    configs=gather_configs(),
    key=["n", "K", "b_bucket"],
    prune_configs_by={"early_config_prune": prune_gather_configs("n", "K")},
)
@triton.jit
def _condensed_fwd_kernel(
    xT_ptr, values_ptr, indices_ptr, bias_ptr, y_ptr,
    B, n, K, b_bucket,
    stride_xt_i,
    stride_v_n, stride_v_k,
    stride_i_n, stride_i_k,
    stride_y_b, stride_y_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n
    b_mask = cols_b < B
    rows64 = rows.to(tl.int64)

    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        nk_mask = row_mask[:, None] & (ks < K)[None, :]
        # masked entries read index 0 and value 0: a valid address that adds nothing
        idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
        val = tl.load(values_ptr + rows64[:, None] * stride_v_n + ks[None, :] * stride_v_k, mask=nk_mask, other=0.0)
        x_ptrs = xT_ptr + idx.to(tl.int64)[:, :, None] * stride_xt_i + cols_b[None, None, :]
        xg = tl.load(x_ptrs, mask=b_mask[None, None, :], other=0.0)
        acc += tl.sum(val.to(tl.float32)[:, :, None] * xg.to(tl.float32), axis=1)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    y_ptrs = y_ptr + cols_b[None, :].to(tl.int64) * stride_y_b + rows64[:, None] * stride_y_n
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & b_mask[None, :])


def condensed_fwd(xT, values, indices, bias, out):
    """Launch the forward kernel.

    xT: (in_features, B) contiguous; values, indices: (n, K) any strides;
    bias: (n,) contiguous or None; out: (B, n), written in full.
    """
    in_features, B = xT.shape
    n, K = values.shape
    assert xT.stride(1) == 1 or B == 1
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(B, meta["BLOCK_B"]))  # noqa: E731
    _condensed_fwd_kernel[grid](
        xT, values, indices, bias if bias is not None else values, out,
        B, n, K, batch_bucket(B),
        xT.stride(0),
        values.stride(0), values.stride(1),
        indices.stride(0), indices.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None,
    )
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    ints = {k: "i32" for k in ("B", "n", "K", "b_bucket", "stride_xt_i", "stride_v_n", "stride_v_k",
                                "stride_i_n", "stride_i_k", "stride_y_b", "stride_y_n")}
    specs = []
    for dt, it in (("fp32", "i32"), ("bf16", "i16"), ("fp16", "i32")):
        sig = {"xT_ptr": f"*{dt}", "values_ptr": f"*{dt}", "indices_ptr": f"*{it}", "bias_ptr": f"*{dt}",
               "y_ptr": f"*{dt}", **ints}
        specs.append((_condensed_fwd_kernel, sig, {"HAS_BIAS": True}))
    return specs


AOT_SPECS = _aot_specs()

"""Gradient of the condensed values:

    dvalues[j, k] = sum_b grad_y[b, j] * x[b, indices[j, k]]

A program owns a (BLOCK_N rows x BLOCK_K fan-in slots) tile of dvalues, loads its
indices once, then walks the batch in chunks of BLOCK_B: each step gathers
``xT[indices, b0:b0+BLOCK_B]`` (contiguous along the batch, as in the forward) and
reduces it against the matching slice of ``grad_yT`` (n, B). Deterministic: no atomics.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton import autotune, batch_bucket


# (BLOCK_N, BLOCK_K, BLOCK_B, num_warps), from an ahead-of-time compile survey for sm_90:
# no spills, at most ~100 registers per thread. Small BLOCK_B tiles serve small batches.
_DW_TILES = [
    (8, 32, 4, 4), (32, 8, 4, 4), (16, 16, 4, 4),
    (16, 32, 8, 8), (8, 64, 8, 8), (16, 16, 8, 4), (32, 8, 8, 4), (32, 16, 8, 8), (64, 8, 8, 8),
    (8, 32, 16, 8), (16, 8, 16, 4), (16, 16, 16, 8),
    (8, 8, 32, 4), (8, 16, 32, 8), (16, 8, 32, 8), (8, 8, 64, 8),
]


def _dw_configs():
    def cfg(bn, bk, bb, w):
        return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=w, num_stages=1)

    # the interpreter keeps only the first config
    return [cfg(16, 16, 4, 4)] + [cfg(*t) for t in _DW_TILES]


def _prune_dw(configs, named_args, **kwargs):
    b, k = named_args["b_bucket"], named_args["K"]
    kept = [c for c in configs[1:] if c.kwargs["BLOCK_B"] <= max(b, 4) and c.kwargs["BLOCK_K"] <= max(triton.next_power_of_2(k), 8)]
    return kept or configs[:1]


@autotune(configs=_dw_configs(), key=["n", "K", "b_bucket"], prune_configs_by={"early_config_prune": _prune_dw})
@triton.jit
def _condensed_dw_kernel(
    xT_ptr, gyT_ptr, indices_ptr, dv_ptr,
    B, n, K, b_bucket,
    stride_xt_i, stride_gyt_n,
    stride_i_n, stride_i_k,
    stride_dv_n, stride_dv_k,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < n
    nk_mask = row_mask[:, None] & (ks < K)[None, :]
    rows64 = rows.to(tl.int64)
    idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
    x_base = xT_ptr + idx.to(tl.int64)[:, :, None] * stride_xt_i
    gy_base = gyT_ptr + rows64[:, None] * stride_gyt_n

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < B
        gy = tl.load(gy_base + bs[None, :], mask=row_mask[:, None] & b_mask[None, :], other=0.0)
        xg = tl.load(x_base + bs[None, None, :], mask=b_mask[None, None, :], other=0.0)
        acc += tl.sum(xg.to(tl.float32) * gy.to(tl.float32)[:, None, :], axis=2)

    dv_ptrs = dv_ptr + rows64[:, None] * stride_dv_n + ks[None, :] * stride_dv_k
    tl.store(dv_ptrs, acc.to(dv_ptr.dtype.element_ty), mask=nk_mask)


def condensed_dw(xT, grad_yT, indices, out):
    """Launch the dvalues kernel. xT: (in_features, B) and grad_yT: (n, B), both
    contiguous; indices: (n, K); out: (n, K), written in full."""
    n, K = indices.shape
    B = xT.shape[1]
    assert B == 1 or (xT.stride(1) == 1 and grad_yT.stride(1) == 1)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]))  # noqa: E731
    _condensed_dw_kernel[grid](
        xT, grad_yT, indices, out,
        B, n, K, batch_bucket(B),
        xT.stride(0), grad_yT.stride(0),
        indices.stride(0), indices.stride(1),
        out.stride(0), out.stride(1),
    )
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    ints = {k: "i32" for k in ("B", "n", "K", "b_bucket", "stride_xt_i", "stride_gyt_n", "stride_i_n",
                                "stride_i_k", "stride_dv_n", "stride_dv_k")}
    return [
        (_condensed_dw_kernel, {"xT_ptr": f"*{dt}", "gyT_ptr": f"*{dt}", "indices_ptr": f"*{it}", "dv_ptr": f"*{dt}", **ints}, {})
        for dt, it in (("fp32", "i32"), ("bf16", "i16"))
    ]


AOT_SPECS = _aot_specs()

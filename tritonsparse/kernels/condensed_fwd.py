"""Forward of the condensed constant fan-in matmul:

    y[b, j] = sum_k values[j, k] * x[b, indices[j, k]] + bias[j]

Layout. x is read through a transposed copy ``xT`` (in_features, B) so that the gather
``xT[indices[j, k], b0:b0+BLOCK_B]`` reads contiguous batch elements (128-bit loads, 4 fp32
or 8 bf16 columns, when B is a multiple of 16, which the op arranges by padding). A
program owns a (BLOCK_N rows x BLOCK_B batch) tile of y and walks the fan-in.

No reduction inside the loop. The loop bodies live in :mod:`._gather`:
  * batch tiles of >= 32 columns (the large-batch regime): a 2-D accumulator and one
    nonzero at a time (``UNROLL`` per step); a thread holds two 128-bit vectors of each
    of its rows, so one index and one value feed 8 FMAs;
  * smaller tiles: a 3-D accumulator (BLOCK_N, BLOCK_K, BLOCK_B) with a row's nonzeros
    spread over lanes (coalesced index and value reads, which dominate the bytes at small
    batch), summed over K once after the loop (a 2-D one for a single column).
Every gathered element feeds one fused multiply-add (``tl.fma``: the fusion does not
depend on Triton's FP-fusion default) into its own fp32 accumulator. The previous
design summed over K inside the loop (``tl.sum(axis=1)`` per chunk), which put a shuffle
tree, and for some tiles a shared-memory exchange with barriers, into every iteration.

Hot loop on sm_90, compiled with the runtime's specialization (fp32, B = 256, int16
indices, 3072 -> 768 at 10% density): 2.9-3.0 warp instructions per FMA for the wide
tiles (e.g. (16, -, 256) x 2 per step: 64 FFMA, 16 LDG.E.128 gathers, 8 index and 8 value
loads, 187 instructions), no SHFL, no BAR, 0 bytes of stack.

Masks. A slot is live when it lies inside its row's fan-in *and* its index lies in
[0, in_features): the gather itself is masked (not only the value), so a dead slot never
reads x (an inf or NaN in x[:, 0] cannot leak through 0 * inf) and an out-of-range index
is never dereferenced: it contributes nothing (validating indices is the caller's job;
the kernel only guarantees it never reads outside x). Whole steps of the fan-in run
unmasked on the index / value loads (dead rows re-read the last row and are not stored);
the tail of the fan-in is masked.

Split-K. With few rows and a small batch there can be fewer programs than SMs. The
launcher then splits the fan-in over ``S`` programs per tile (see
``_configs.split_k_plan``); each writes fp32 partial sums into a workspace (S, B, n), summed
after the kernel (deterministic, no atomics).

Grid. One axis: program ids decompose as (row tile fastest, then batch tile, then split),
so programs that run together share a batch slice of xT in L1/L2, and no grid axis can
pass CUDA's 65535 limit on axes 1 and 2 however large the batch.

Offsets are int32 unless a product of sizes can pass 2**31 (``INT64``, chosen by the
launcher): 64-bit address arithmetic costs ~2 more instructions per gathered vector.
Autotune keys are size buckets (see ``_configs``), so a DST update that changes n or K
by a little reuses the tuned config.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, launch_device, size_bucket
from ._configs import gather_configs, prune_gather_configs, sm_count, split_k_plan
from ._gather import gather_rows


@autotune(
    configs=gather_configs(),
    key=["n_bucket", "k_bucket", "b_bucket", "SPLIT", "INT64"],
    prune_configs_by={"early_config_prune": prune_gather_configs("n_bucket", "k_bucket", "xT_ptr")},
)
@triton.jit(do_not_specialize=["n_bucket", "k_bucket", "b_bucket"])
def _condensed_fwd_kernel(
    xT_ptr, values_ptr, indices_ptr, bias_ptr, y_ptr,
    B, n, K, in_features, k_per_split,
    n_bucket, k_bucket, b_bucket,
    stride_xt_i,
    stride_v_n, stride_v_k,
    stride_i_n, stride_i_k,
    stride_bias,
    stride_y_s, stride_y_b, stride_y_n,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, INT64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, UNROLL: tl.constexpr,
):
    # program id -> (row tile, batch tile, split); row tiles vary fastest
    pid = tl.program_id(0)
    num_n = tl.cdiv(n, BLOCK_N)
    num_b = tl.cdiv(B, BLOCK_B)
    pid_n = pid % num_n
    pid_b = (pid // num_n) % num_b
    pid_s = pid // (num_n * num_b)

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n
    b_mask = cols_b < B
    # dead rows re-read the last row (always in bounds) and are not stored: no masks on
    # the index / value loads of whole steps
    rows_c = tl.minimum(rows, n - 1)
    if INT64:
        rows_c = rows_c.to(tl.int64)
    i_ptrs = indices_ptr + rows_c * stride_i_n
    v_ptrs = values_ptr + rows_c * stride_v_n

    k_lo = pid_s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    if BLOCK_K == 1:  # the rows body (see _gather.gather_rows)
        step = UNROLL
    else:
        step = BLOCK_K * UNROLL
    k_full = ((k_hi - k_lo) // step) * step
    kmax = tl.full((BLOCK_N,), 0, tl.int32) + k_hi
    acc = gather_rows(i_ptrs, v_ptrs, xT_ptr, pid_b * BLOCK_B, B, in_features, stride_xt_i, k_lo, k_full, kmax,
                      stride_i_k, stride_v_k, BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, False, INT64)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows * stride_bias, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    y_ptrs = (y_ptr + pid_s.to(tl.int64) * stride_y_s + cols_b[None, :].to(tl.int64) * stride_y_b
              + rows.to(tl.int64)[:, None] * stride_y_n)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & b_mask[None, :])


def _needs_int64(*extents: int) -> bool:
    return max(extents, default=0) >= 2**31 - 1


def condensed_fwd(xT, values, indices, bias, out):
    """Launch the forward kernel; returns ``out``.

    xT: (in_features, B), batch-contiguous (stride(1) == 1); values, indices: (n, K), any
    strides; bias: (n,) with any stride, or None; out: (B, n), written in full. Index
    entries outside [0, in_features) contribute nothing (they are never read). Launches
    on the tensors' CUDA device (or in the interpreter for CPU tensors).
    """
    in_features, B = xT.shape
    n, K = values.shape
    if B > 1 and xT.stride(1) != 1:
        raise ValueError(f"xT must be batch-contiguous (stride(1) == 1), got strides {tuple(xT.stride())}")
    if tuple(out.shape) != (B, n):
        raise ValueError(f"out must have shape {(B, n)}, got {tuple(out.shape)}")
    if B == 0 or n == 0:
        return out
    if K == 0 or in_features == 0:  # nothing to gather: the bias alone
        out.zero_()
        if bias is not None:
            out += bias.to(out.dtype)
        return out
    b_bucket = batch_bucket(B)
    split, k_per = split_k_plan(n, K, b_bucket, sm_count(xT.device))
    int64 = _needs_int64(
        in_features * xT.stride(0) + B,
        n * abs(values.stride(0)) + K * abs(values.stride(1)),
        n * abs(indices.stride(0)) + K * abs(indices.stride(1)),
        B * out.stride(0) + n * out.stride(1),
    )
    dest = torch.empty(split, B, n, dtype=torch.float32, device=out.device) if split > 1 else out.unsqueeze(0)
    has_bias = bias is not None and split == 1

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(B, meta["BLOCK_B"]) * split,)

    with launch_device(xT):
        _condensed_fwd_kernel[grid](
            xT, values, indices, bias if has_bias else values, dest,
            B, n, K, in_features, k_per,
            size_bucket(n), size_bucket(K), b_bucket,
            xT.stride(0),
            values.stride(0), values.stride(1),
            indices.stride(0), indices.stride(1),
            bias.stride(0) if has_bias else 0,
            dest.stride(0), dest.stride(1), dest.stride(2),
            HAS_BIAS=has_bias, SPLIT=split > 1, INT64=int64,
        )
    if split > 1:
        acc = dest.sum(0)
        if bias is not None:
            acc += bias.float()
        out.copy_(acc)
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check: fp32, bf16
    and fp16 values with int16 and int32 indices, with bias."""
    ints = {k: "i32" for k in ("B", "n", "K", "in_features", "k_per_split", "n_bucket", "k_bucket", "b_bucket",
                                "stride_xt_i", "stride_v_n", "stride_v_k", "stride_i_n", "stride_i_k", "stride_bias",
                                "stride_y_s", "stride_y_b", "stride_y_n")}
    specs = []
    for dt, it in (("fp32", "i16"), ("fp32", "i32"), ("bf16", "i16"), ("bf16", "i32"), ("fp16", "i16")):
        sig = {"xT_ptr": f"*{dt}", "values_ptr": f"*{dt}", "indices_ptr": f"*{it}", "bias_ptr": f"*{dt}",
               "y_ptr": f"*{dt}", **ints}
        specs.append((_condensed_fwd_kernel, sig, {"HAS_BIAS": True, "SPLIT": False, "INT64": False}))
    return specs


AOT_SPECS = _aot_specs()

"""Fused gradient top-k: per output row, the k columns with the largest

    |G[row, d]|,   G = grad_outputᵀ @ x   (out, in)

without ever writing G. A program owns BLOCK_M output rows. It walks the input columns
in tiles of TILE_D (= max(BLOCK_D, KP)): each tile of G is a ``tl.dot`` over the batch
(tensor cores, fp32 accumulation), turned into int64 sort keys

    key = (bits of |G| as int32) << 32 | (2**31 - 1 - d)

(|G| >= 0, so its float bits order like the value; the low word breaks ties towards the
smaller column, which makes the result deterministic), and merged into a running sorted
buffer of the KP best keys per row with ``tl.topk``. Tiles whose best key cannot enter
any row's buffer are skipped. Masked-out columns get key -1, below every real key.

``exclude`` (out, Kx) lists columns a row must not return (the active ones; negative
entries are padding). The buffer holds KP >= k + Kx keys, so after the last tile the
excluded columns are struck out once per row and the best k of the rest are exact.
Extra memory: the (out, k) outputs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, next_power_of_2

# Register budget, measured with the AOT compile (sm_80/sm_90, no spills): the fp32 tile,
# its int64 keys and the (BLOCK_M, 2*KP) int64 merge hold about
# BLOCK_M * (TILE_D + 2*KP) <= 1024 * num_warps elements.
_MAX_ELEMS_PER_WARP = 1024


def _tile_d(block_d: int, kp: int) -> int:
    return max(block_d, kp)


def _fits(bm, bd, kp, warps):
    return bm * (_tile_d(bd, kp) + 2 * kp) <= _MAX_ELEMS_PER_WARP * warps


def _configs():
    # The interpreter keeps only the first config: a small tile that handles every case.
    configs = [triton.Config({"BLOCK_M": 16, "BLOCK_D": 16, "BLOCK_B": 16}, num_warps=4, num_stages=2)]
    # (BLOCK_M, BLOCK_D, BLOCK_B, num_warps); two stages and BLOCK_B <= 32: more spills
    for bm, bd, bb, w in [(16, 64, 32, 4), (32, 64, 32, 8), (32, 128, 32, 8),
                          (16, 32, 32, 8)]:  # for long top-k lists (KP 128)
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_D": bd, "BLOCK_B": bb}, num_warps=w, num_stages=2))
    return configs


def _prune(configs, named_args, **kwargs):
    kp = int(kwargs.get("KP", named_args.get("KP", 16)))
    b = int(named_args["b_bucket"])
    out = int(named_args["out_features"])
    kept = [c for c in configs[1:]
            if _fits(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_D"], kp, c.num_warps)
            and c.kwargs["BLOCK_B"] <= max(b, 16) and c.kwargs["BLOCK_M"] <= max(next_power_of_2(out), 16)]
    return kept or configs[:1]


@autotune(configs=_configs(), key=["out_features", "in_features", "b_bucket", "KP", "HAS_EXCLUDE"],
          prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _gradient_topk_kernel(
    x_ptr, go_ptr, ex_ptr, scores_ptr, idx_ptr,
    B, out_features, in_features, k, Kx, b_bucket,
    stride_x_b, stride_x_d, stride_go_b, stride_go_n,
    stride_ex_n, stride_ex_k, stride_s_n, stride_i_n,
    KP: tl.constexpr, HAS_EXCLUDE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
):
    TILE_D: tl.constexpr = BLOCK_D * ((KP + BLOCK_D - 1) // BLOCK_D)
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < out_features
    rows64 = rows.to(tl.int64)
    go_rows = go_ptr + rows64[:, None] * stride_go_n

    buf = tl.full((BLOCK_M, KP), -1, tl.int64)  # best keys so far, descending
    thr = tl.full((BLOCK_M,), -1, tl.int64)  # the smallest key held per row
    for d0 in range(0, in_features, TILE_D):
        ds = d0 + tl.arange(0, TILE_D)
        d_mask = ds < in_features
        x_cols = x_ptr + ds.to(tl.int64)[None, :] * stride_x_d
        acc = tl.zeros((BLOCK_M, TILE_D), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            bs = b0 + tl.arange(0, BLOCK_B)
            b_mask = bs < B
            bs64 = bs.to(tl.int64)
            g = tl.load(go_rows + bs64[None, :] * stride_go_b, mask=row_mask[:, None] & b_mask[None, :], other=0.0)
            xv = tl.load(x_cols + bs64[:, None] * stride_x_b, mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            acc = tl.dot(g, xv, acc, input_precision=PRECISION)
        bits = tl.abs(acc).to(tl.int32, bitcast=True).to(tl.int64)
        key = (bits << 32) | (2147483647 - ds).to(tl.int64)[None, :]
        key = tl.where(d_mask[None, :], key, -1)
        gain = tl.max((tl.max(key, axis=1) > thr).to(tl.int32), axis=0)
        if gain > 0:
            if TILE_D > KP:
                cand = tl.topk(key, KP, dim=1)
            else:
                cand = key
            merged = tl.reshape(tl.join(buf, cand), (BLOCK_M, 2 * KP))
            buf = tl.topk(merged, KP, dim=1)
            thr = tl.min(buf, axis=1)

    cols = 2147483647 - (buf & 0xFFFFFFFF)  # int64; -1 keys give a negative column
    if HAS_EXCLUDE:
        hit = tl.zeros((BLOCK_M, KP), dtype=tl.int32)
        ex_rows = ex_ptr + rows64 * stride_ex_n
        for j in range(0, Kx):
            e = tl.load(ex_rows + j * stride_ex_k, mask=row_mask, other=-1).to(tl.int64)
            hit = tl.maximum(hit, (cols == e[:, None]).to(tl.int32))
        buf = tl.where(hit > 0, -1, buf)
        buf = tl.sort(buf, dim=1, descending=True)
        cols = 2147483647 - (buf & 0xFFFFFFFF)

    valid = buf >= 0
    # the float bits of the score (scores_ptr is the fp32 output viewed as int32); -inf if none
    score = tl.where(valid, (buf >> 32).to(tl.int32), -8388608)
    index = tl.where(valid, cols, -1)
    cs = tl.arange(0, KP)
    out_mask = row_mask[:, None] & (cs < k)[None, :]
    tl.store(scores_ptr + rows64[:, None] * stride_s_n + cs[None, :], score, mask=out_mask)
    tl.store(idx_ptr + rows64[:, None] * stride_i_n + cs[None, :], index, mask=out_mask)


def buffer_width(k: int, kx: int) -> int:
    """KP, the per-row buffer the kernel keeps for ``k`` results and ``kx`` exclusions."""
    return max(next_power_of_2(k + kx), 16)


def gradient_topk(x, grad_output, k, exclude, scores, indices, precision="tf32"):
    """Launch the kernel. x: (B, in), grad_output: (B, out) (any strides), exclude:
    (out, Kx) integer tensor or None; scores (out, k) fp32 and indices (out, k) int64
    are written in full (the kernel writes the scores' float bits through an int32 view)."""
    B, in_features = x.shape
    out_features = grad_output.shape[1]
    kx = exclude.shape[1] if exclude is not None else 0
    ex = exclude if exclude is not None else indices  # a placeholder pointer when unused
    grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_M"]),)  # noqa: E731
    _gradient_topk_kernel[grid](
        x, grad_output, ex, scores.view(torch.int32), indices,
        B, out_features, in_features, k, kx, batch_bucket(B),
        x.stride(0), x.stride(1), grad_output.stride(0), grad_output.stride(1),
        ex.stride(0), ex.stride(1), scores.stride(0), indices.stride(0),
        KP=buffer_width(k, kx), HAS_EXCLUDE=exclude is not None, PRECISION=precision,
    )
    return scores, indices


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check: fp32 and
    bf16 inputs, with and without an exclusion list, for a buffer of 64 keys."""
    ints = {n: "i32" for n in ("B", "out_features", "in_features", "k", "Kx", "b_bucket",
                               "stride_x_b", "stride_x_d", "stride_go_b", "stride_go_n",
                               "stride_ex_n", "stride_ex_k", "stride_s_n", "stride_i_n")}
    specs = []
    for dt, prec in (("fp32", "tf32"), ("bf16", "ieee")):
        for has_ex in (False, True):
            sig = {"x_ptr": f"*{dt}", "go_ptr": f"*{dt}", "ex_ptr": "*i32", "scores_ptr": "*i32",
                   "idx_ptr": "*i64", **ints}
            specs.append((_gradient_topk_kernel, sig, {"KP": 64, "HAS_EXCLUDE": has_ex, "PRECISION": prec}))
    return specs


AOT_SPECS = _aot_specs()

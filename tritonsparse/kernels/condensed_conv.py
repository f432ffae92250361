"""Implicit-im2col condensed convolution (groups=1, zero padding): the unfolded input
is never built; each gathered tap is read straight from x.

The weight is condensed over the unfolded axis C_in·kh·kw: row o holds K taps, and
``idx = indices[o, k]`` decodes as ``c = idx // (kh·kw)``, ``dy = (idx // kw) % kh``,
``dx = idx % kw`` (the column order of ``conv.weight.reshape(out, -1)``). With the output
pixels flattened as ``p = (b, oh, ow)`` over B·OH·OW:

    forward   y[b, o, oh, ow] = sum_k values[o, k] * xpad[b, c, oh·sh + dy·dh, ow·sw + dx·dw] (+ bias[o])
    dValues   dvalues[o, k]   = sum_{b, oh, ow} grad_y[b, o, oh, ow] * xpad[b, c, oh·sh + dy·dh, ow·sw + dx·dw]

``xpad`` is x with ``padding`` zeros around it; the padding is a load mask, there is no
padded copy. x may have any strides (NCHW or channels-last); y and grad_y are contiguous
NCHW. dX is not here: the layer computes it as the condensed dX of the unfolded gradient
followed by ``F.fold`` (see :mod:`tritonsparse.conv_ops`).

A forward program owns a (BLOCK_N output channels x BLOCK_P pixels) tile of y and walks
the fan-in in chunks of BLOCK_K: the chunk's indices are decoded once into a 2-D
(channel, tap) offset and the pixels into a 1-D offset, so the 3-D gather
(BLOCK_N, BLOCK_K, BLOCK_P) costs one add and the padding compares per element. A
dValues program owns a (BLOCK_N x BLOCK_K) tile of dvalues and walks its share of the
pixels in chunks of BLOCK_P; the pixels are split over a third grid axis into fp32
partial sums (summed on the host: deterministic, no atomics) so a layer with few weights
still fills the GPU.

Nothing here has run on a GPU yet: the kernels are checked in Triton's interpreter and
compiled ahead of time for sm_80/sm_90 (``python -m tritonsparse._aot``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, next_power_of_2

# (BLOCK_N, BLOCK_K, BLOCK_P, num_warps). The 3-D gathered tile costs a 64-bit address,
# a value and a mask per element, so tiles stay near 8-32 elements per thread. The
# first tile is the one the interpreter runs.
_FWD_TILES = [
    (16, 16, 16, 4),
    (16, 8, 32, 4), (32, 8, 32, 8), (64, 4, 32, 8), (8, 16, 32, 4), (32, 16, 16, 8),
    (8, 4, 64, 4), (16, 4, 64, 8), (8, 8, 64, 8),
    (8, 2, 128, 4), (16, 2, 128, 8),
]
# dValues keeps its decoded taps (3-D offsets and shifts) live across the pixel loop, so
# its tiles hold half as many elements per thread as the forward's.
_DW_TILES = [
    (16, 16, 16, 8),
    (8, 16, 16, 4), (16, 8, 16, 4), (8, 8, 32, 4), (8, 32, 16, 8), (32, 8, 16, 8),
    (8, 16, 32, 8), (16, 8, 32, 8), (8, 8, 64, 8), (4, 8, 64, 4),
]


def _configs(tiles):
    # one stage: the gathers are not a pipelined stream of tiles, and stages cost registers
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_P": bp}, num_warps=w, num_stages=1)
            for bn, bk, bp, w in tiles]


def _prune(configs, named_args, **kwargs):
    """Keep tiles no longer along K than the fan-in, no taller than the channels and no
    wider than the pixels (rounded up to powers of two)."""
    n = next_power_of_2(max(int(named_args["n"]), 1))
    k = next_power_of_2(max(int(named_args["K"]), 1))
    p = int(named_args["p_bucket"])
    kept = [c for c in configs[1:]
            if c.kwargs["BLOCK_N"] <= max(n, 8) and c.kwargs["BLOCK_K"] <= max(k, 2) and c.kwargs["BLOCK_P"] <= max(p, 16)]
    return kept or configs[:1]


@triton.jit
def _decode_pixels(ps, OH, OW, stride_h, stride_w, pad_h, pad_w, stride_xb, stride_xh, stride_xw):
    """Flattened output pixels -> (top-left input row, column, int64 x offset of that
    corner, batch, pixel within the image)."""
    ohw = OH * OW
    b = ps // ohw
    rem = ps - b * ohw
    oh = rem // OW
    ow = rem - oh * OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    off = b.to(tl.int64) * stride_xb + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw
    return ih0, iw0, off, b, rem


@triton.jit
def _decode_taps(idx, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw):
    """Condensed indices -> (row shift, column shift, int64 x offset of the tap)."""
    idx = idx.to(tl.int32)
    khw = KH * KW
    c = idx // khw
    r = idx - c * khw
    dy = (r // KW) * dil_h
    dx = (r % KW) * dil_w
    off = c.to(tl.int64) * stride_xc + dy.to(tl.int64) * stride_xh + dx.to(tl.int64) * stride_xw
    return dy, dx, off


@triton.jit
def _gather(x_ptr, tap_dy, tap_dx, tap_off, ih0, iw0, pix_off, p_mask, H, W):
    """(BLOCK_N, BLOCK_K, BLOCK_P) taps of x; zero in the padding and past the pixels."""
    ih = ih0[None, None, :] + tap_dy[:, :, None]
    iw = iw0[None, None, :] + tap_dx[:, :, None]
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & p_mask[None, None, :]
    return tl.load(x_ptr + tap_off[:, :, None] + pix_off[None, None, :], mask=inside, other=0.0)


@autotune(configs=_configs(_FWD_TILES), key=["n", "K", "p_bucket"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _condensed_conv_fwd_kernel(
    x_ptr, values_ptr, indices_ptr, bias_ptr, y_ptr,
    n, K, P, p_bucket,
    H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_v_n, stride_v_k,
    stride_i_n, stride_i_k,
    stride_y_b, stride_y_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # channels vary fastest: programs that run together read the same pixels of x
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = rows < n
    p_mask = ps < P
    rows64 = rows.to(tl.int64)
    ih0, iw0, pix_off, b, rem = _decode_pixels(ps, OH, OW, stride_h, stride_w, pad_h, pad_w,
                                               stride_xb, stride_xh, stride_xw)

    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        nk_mask = row_mask[:, None] & (ks < K)[None, :]
        # masked slots read index 0 and value 0: tap 0 of channel 0 (masked like any tap) adds nothing
        idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
        val = tl.load(values_ptr + rows64[:, None] * stride_v_n + ks[None, :] * stride_v_k, mask=nk_mask, other=0.0)
        dy, dx, tap_off = _decode_taps(idx, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw)
        xg = _gather(x_ptr, dy, dx, tap_off, ih0, iw0, pix_off, p_mask, H, W)
        acc += tl.sum(val.to(tl.float32)[:, :, None] * xg.to(tl.float32), axis=1)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    y_ptrs = y_ptr + rows64[:, None] * stride_y_n + (b.to(tl.int64) * stride_y_b + rem)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & p_mask[None, :])


@autotune(configs=_configs(_DW_TILES), key=["n", "K", "p_bucket"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _condensed_conv_dw_kernel(
    x_ptr, gy_ptr, indices_ptr, dv_ptr,
    n, K, P, p_bucket, p_per_split,
    H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_i_n, stride_i_k,
    stride_gy_b, stride_gy_n,
    stride_dv_s, stride_dv_n, stride_dv_k,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < n
    nk_mask = row_mask[:, None] & (ks < K)[None, :]
    rows64 = rows.to(tl.int64)
    idx = tl.load(indices_ptr + rows64[:, None] * stride_i_n + ks[None, :] * stride_i_k, mask=nk_mask, other=0)
    dy, dx, tap_off = _decode_taps(idx, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw)
    gy_rows = gy_ptr + rows64[:, None] * stride_gy_n

    p_start = pid_s * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_mask = ps < p_end
        ih0, iw0, pix_off, b, rem = _decode_pixels(ps, OH, OW, stride_h, stride_w, pad_h, pad_w,
                                                   stride_xb, stride_xh, stride_xw)
        gy = tl.load(gy_rows + (b.to(tl.int64) * stride_gy_b + rem)[None, :],
                     mask=row_mask[:, None] & p_mask[None, :], other=0.0)
        xg = _gather(x_ptr, dy, dx, tap_off, ih0, iw0, pix_off, p_mask, H, W)
        acc += tl.sum(xg.to(tl.float32) * gy.to(tl.float32)[:, None, :], axis=2)

    dv_ptrs = dv_ptr + pid_s.to(tl.int64) * stride_dv_s + rows64[:, None] * stride_dv_n + ks[None, :] * stride_dv_k
    tl.store(dv_ptrs, acc, mask=nk_mask)


def _geometry_args(x, out_hw, kernel_size, stride, padding, dilation):
    (h, w), (oh, ow) = x.shape[2:], out_hw
    return (h, w, oh, ow, *kernel_size, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            *x.stride())


def condensed_conv_fwd(x, values, indices, bias, out, kernel_size, stride, padding, dilation):
    """Launch the implicit forward.

    x: (B, C, H, W), any strides; values, indices: (n, K) any strides, indices in
    [0, C·kh·kw); bias: (n,) contiguous or None; out: (B, n, OH, OW) contiguous, written
    in full. Geometry arguments are (h, w) int pairs.
    """
    batch, n, oh, ow = out.shape
    K = values.shape[1]
    assert out.is_contiguous()
    P = batch * oh * ow
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(P, meta["BLOCK_P"]))  # noqa: E731
    _condensed_conv_fwd_kernel[grid](
        x, values, indices, bias if bias is not None else values, out,
        n, K, P, batch_bucket(P),
        *_geometry_args(x, (oh, ow), kernel_size, stride, padding, dilation),
        values.stride(0), values.stride(1),
        indices.stride(0), indices.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None,
    )
    return out


_DW_SPLIT_TARGET = 1024  # programs to aim for: several waves on a 132-SM GPU
_DW_SPLIT_GRAIN = 128  # pixels per split are a multiple of the widest BLOCK_P


def dw_splits(n, K, P):
    """How many pixel ranges dValues is split into: enough programs to fill a GPU with a
    nominal 16 x 16 tile, but at least 1024 pixels per range."""
    tiles = triton.cdiv(max(n, 1), 16) * triton.cdiv(max(K, 1), 16)
    return max(1, min(triton.cdiv(P, 1024), triton.cdiv(_DW_SPLIT_TARGET, tiles)))


def condensed_conv_dw(x, grad_y, indices, out, kernel_size, stride, padding, dilation, splits=None):
    """Launch the implicit dValues. x: (B, C, H, W) any strides; grad_y: (B, n, OH, OW)
    contiguous; indices: (n, K); out: (n, K), written in full (cast from the fp32 sum of
    ``splits`` partial sums; default :func:`dw_splits`)."""
    import torch

    batch, n, oh, ow = grad_y.shape
    K = indices.shape[1]
    assert grad_y.is_contiguous()
    P = batch * oh * ow
    splits = dw_splits(n, K, P) if splits is None else max(1, int(splits))
    per = triton.cdiv(triton.cdiv(max(P, 1), splits), _DW_SPLIT_GRAIN) * _DW_SPLIT_GRAIN
    splits = triton.cdiv(max(P, 1), per)
    partial = torch.empty(splits, n, K, dtype=torch.float32, device=out.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]), splits)  # noqa: E731
    _condensed_conv_dw_kernel[grid](
        x, grad_y, indices, partial,
        n, K, P, batch_bucket(per), per,
        *_geometry_args(x, (oh, ow), kernel_size, stride, padding, dilation),
        indices.stride(0), indices.stride(1),
        grad_y.stride(0), grad_y.stride(1),
        partial.stride(0), partial.stride(1), partial.stride(2),
    )
    out.copy_(partial[0] if splits == 1 else partial.sum(0))
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    geom = ("H", "W", "OH", "OW", "KH", "KW", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w",
            "stride_xb", "stride_xc", "stride_xh", "stride_xw")
    fwd_ints = {k: "i32" for k in ("n", "K", "P", "p_bucket", *geom, "stride_v_n", "stride_v_k",
                                   "stride_i_n", "stride_i_k", "stride_y_b", "stride_y_n")}
    dw_ints = {k: "i32" for k in ("n", "K", "P", "p_bucket", "p_per_split", *geom, "stride_i_n", "stride_i_k",
                                  "stride_gy_b", "stride_gy_n", "stride_dv_s", "stride_dv_n", "stride_dv_k")}
    specs = []
    for dt, it in (("fp32", "i32"), ("bf16", "i16")):
        specs.append((_condensed_conv_fwd_kernel,
                      {"x_ptr": f"*{dt}", "values_ptr": f"*{dt}", "indices_ptr": f"*{it}", "bias_ptr": f"*{dt}",
                       "y_ptr": f"*{dt}", **fwd_ints}, {"HAS_BIAS": True}))
        specs.append((_condensed_conv_dw_kernel,
                      {"x_ptr": f"*{dt}", "gy_ptr": f"*{dt}", "indices_ptr": f"*{it}", "dv_ptr": "*fp32", **dw_ints}, {}))
    return specs


AOT_SPECS = _aot_specs()

"""Implicit-im2col condensed convolution (groups=1, zero padding): the unfolded input
is never built; each gathered tap is read straight from x.

The weight is condensed over the unfolded axis C_in·kh·kw: row o holds K taps, and
``idx = indices[o, k]`` decodes as ``c = idx // (kh·kw)``, ``dy = (idx // kw) % kh``,
``dx = idx % kw`` (the column order of ``conv.weight.reshape(out, -1)``). With the output
pixels flattened as ``p = (b, oh, ow)`` over B·OH·OW:

    forward   y[b, o, oh, ow] = sum_k values[o, k] * xpad[b, c, oh·sh + dy·dh, ow·sw + dx·dw] (+ bias[o])
    dValues   dvalues[o, k]   = sum_{b, oh, ow} grad_y[b, o, oh, ow] * xpad[b, c, oh·sh + dy·dh, ow·sw + dx·dw]

``xpad`` is x with ``padding`` zeros around it. x may have any strides (NCHW or
channels-last); y and grad_y are contiguous NCHW. dX is not here: the layer computes it as
the condensed dX of the unfolded gradient followed by ``F.fold`` (see
:mod:`tritonsparse.conv_ops`).

Forward. ``xpad`` is made real, once per call: one ``F.pad`` writes a (B, C + 1,
H + 2·ph, W + 2·pw) copy in x's memory format whose extra channel is all zero (one read
and one write of x, and that much memory while the kernel runs). A small kernel then decodes
every index once into an (n, K) table of tap offsets into the copy; an index outside
[0, C·kh·kw), a fan-in tail slot and a row past n all point at the zero channel. The
forward program owns a (BLOCK_N output channels x BLOCK_P pixels) tile of y (a 1-D grid,
channel blocks fastest) and walks the fan-in in chunks of BLOCK_K: per element of the
(BLOCK_N, BLOCK_K, BLOCK_P) gather there is no decode, no padding test and no mask, only
``tap offset + pixel offset``, the load and an FMA into a 3-D fp32 accumulator that is
reduced over the fan-in once, after the loop. sm_90 SASS of the hot loop (ResNet-18 CIFAR
layer, 64 -> 64 channels, 3x3, K = 58, batch 128, runtime specialization): 5.8-9.6 warp
instructions per FMA in fp32 and 7.1-11.6 in bf16 over the tiles the autotuner would time,
no shared memory, no barrier, 0 spills (it was 28-84 with the decode and the padding
tests inside the loop).

dValues. A program owns a (BLOCK_N x BLOCK_K) tile of dvalues, decodes its taps once, and
walks its share of the pixels in chunks of BLOCK_P, padding by load masks (no copy); the
pixels are split over a third grid axis into fp32 partial sums (summed on the host:
deterministic, no atomics) so a layer with few weights still fills the GPU. An index out
of range reads nothing (its row shift points outside the image).

Nothing here has run on a GPU yet: the kernels are checked in Triton's interpreter and
compiled ahead of time for sm_80/sm_90 (``python -m tritonsparse._aot``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, launch_device, size_bucket
from .condensed_dw import tile_indices

# (BLOCK_N, BLOCK_K, BLOCK_P, num_warps). Triton spreads the lanes and warps of the 3-D
# tile over the pixels first, so a thread holds BLOCK_P / (32·num_warps) pixels of each of
# its (channel, slot) pairs: the forward's tiles keep that ratio at 2-8, so one tap-offset
# and one value load serve several FMAs (the sm_90 hot loop is ~6-10 warp instructions per
# FMA, no shared memory or barrier; see the module docstring). The first tile is the one
# the interpreter runs.
_FWD_TILES = [
    (2, 2, 256, 2),
    (2, 2, 1024, 4), (1, 4, 1024, 4), (2, 4, 512, 4),
    (2, 2, 512, 2), (2, 4, 256, 2), (4, 4, 128, 2),
    (4, 4, 64, 1), (8, 2, 64, 1),
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
    wider than the pixels, all three bucketed to powers of two (the autotune keys): the
    choice holds for every size in the bucket."""
    n, k, p = int(named_args["n_bucket"]), int(named_args["k_bucket"]), int(named_args["p_bucket"])
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
def clamped_pixel_offsets(ps, P, OH, OW, stride_h, stride_w, stride_xb, stride_xh, stride_xw, taps_ptr):
    """Flattened output pixels -> offset of their top-left tap in the padded input, in the
    tap table's integer type (int32 when every offset of the copy fits, else int64); a
    pixel past P reads pixel P - 1 (in bounds) and is not stored."""
    ohw = OH * OW
    pc = tl.minimum(ps, P - 1)
    b = pc // ohw
    rem = pc - b * ohw
    oh = rem // OW
    ow = rem - oh * OW
    off_ty = taps_ptr.dtype.element_ty
    return b.to(off_ty) * stride_xb + (oh * stride_h).to(off_ty) * stride_xh + (ow * stride_w).to(off_ty) * stride_xw


@triton.jit
def _decode_taps(idx, n_taps, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw):
    """Condensed indices -> (row shift, column shift, int64 x offset of the tap). An index
    outside [0, n_taps) gets a row shift far outside the image: it reads nothing."""
    idx = idx.to(tl.int32)
    valid = (idx >= 0) & (idx < n_taps)
    idx = tl.where(valid, idx, 0)
    khw = KH * KW
    c = idx // khw
    r = idx - c * khw
    dy = (r // KW) * dil_h
    dx = (r % KW) * dil_w
    off = c.to(tl.int64) * stride_xc + dy.to(tl.int64) * stride_xh + dx.to(tl.int64) * stride_xw
    return tl.where(valid, dy, -536870912), dx, off


@triton.jit
def _gather(x_ptr, tap_dy, tap_dx, tap_off, ih0, iw0, pix_off, p_mask, H, W):
    """(BLOCK_N, BLOCK_K, BLOCK_P) taps of x; zero in the padding and past the pixels."""
    ih = ih0[None, None, :] + tap_dy[:, :, None]
    iw = iw0[None, None, :] + tap_dx[:, :, None]
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & p_mask[None, None, :]
    return tl.load(x_ptr + tap_off[:, :, None] + pix_off[None, None, :], mask=inside, other=0.0)


@triton.jit
def _conv_taps_kernel(indices_ptr, taps_ptr, n, K, n_taps, zero_off, KH, KW, dil_h, dil_w,
                      stride_xc, stride_xh, stride_xw, stride_i_n, stride_i_k, BLOCK: tl.constexpr):
    """Decode every condensed index once into an (n, K) table of tap offsets into the
    padded input (channel, row shift and column shift folded into one number), in the
    table's integer type. An index outside [0, C·kh·kw) gets ``zero_off``, the offset of
    the all-zero extra channel: it reads zeros, never memory outside x."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n * K
    row = offs // K
    k = offs - row * K
    idx = tl.load(indices_ptr + row * stride_i_n + k * stride_i_k, mask=mask, other=0)
    dy, _dx, off = _decode_taps(idx, n_taps, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw)
    off = tl.where(dy >= 0, off, zero_off)  # _decode_taps marks an invalid index with a negative row shift
    tl.store(taps_ptr + offs, off.to(taps_ptr.dtype.element_ty), mask=mask)


@autotune(configs=_configs(_FWD_TILES), key=["n_bucket", "k_bucket", "p_bucket"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _condensed_conv_fwd_kernel(
    xp_ptr, values_ptr, taps_ptr, bias_ptr, y_ptr,
    n, K, P, n_bucket, k_bucket, p_bucket,
    OH, OW, stride_h, stride_w, zero_off,
    stride_xb, stride_xh, stride_xw,
    stride_v_n, stride_v_k, stride_t_n, stride_b,
    stride_y_b, stride_y_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # 1-D grid, channel blocks fastest: programs that run together read the same pixels
    # of x, and the pixel blocks (the large count) are not limited to 65,535
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(n, BLOCK_N)
    pid_p = pid // n_blocks
    pid_n = pid - pid_p * n_blocks
    # every tensor is built in the 3-D (BLOCK_N, BLOCK_K, BLOCK_P) layout: no layout
    # conversion (shared memory, barriers) inside the loop
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[:, None, None]
    ks0 = tl.arange(0, BLOCK_K)[None, :, None]
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, None, :]
    row_mask = rows < n
    pix_off = clamped_pixel_offsets(ps, P, OH, OW, stride_h, stride_w, stride_xb, stride_xh, stride_xw, taps_ptr)
    ohw = OH * OW
    t_rows = taps_ptr + rows.to(tl.int64) * stride_t_n
    v_rows = values_ptr + rows.to(tl.int64) * stride_v_n

    acc = tl.zeros((BLOCK_N, BLOCK_K, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + ks0
        nk_mask = row_mask & (ks < K)
        # a tail slot reads the zero channel with value 0; no per-element mask or bounds test
        tap_off = tl.load(t_rows + ks, mask=nk_mask, other=zero_off)
        val = tl.load(v_rows + ks * stride_v_k, mask=nk_mask, other=0.0)
        xg = tl.load(xp_ptr + (tap_off + pix_off))
        acc = tl.fma(val.to(tl.float32), xg.to(tl.float32), acc)

    out = tl.sum(acc, axis=1)  # (BLOCK_N, BLOCK_P): the fan-in reduced once, after the loop
    rows2 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ps2 = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows2.to(tl.int64) * stride_b, mask=rows2 < n, other=0.0).to(tl.float32)[:, None]
    b2 = ps2 // ohw
    y_ptrs = y_ptr + rows2.to(tl.int64)[:, None] * stride_y_n + (b2.to(tl.int64) * stride_y_b + (ps2 - b2 * ohw))[None, :]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(rows2 < n)[:, None] & (ps2 < P)[None, :])


@autotune(configs=_configs(_DW_TILES), key=["n_bucket", "k_bucket", "p_bucket"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _condensed_conv_dw_kernel(
    x_ptr, gy_ptr, indices_ptr, dv_ptr,
    n, K, P, n_bucket, k_bucket, p_bucket, p_per_split, n_taps,
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
    rows, ks, row_mask, nk_mask, rows64, idx = tile_indices(indices_ptr, pid_n, pid_k, n, K, stride_i_n, stride_i_k,
                                                            BLOCK_N, BLOCK_K)
    dy, dx, tap_off = _decode_taps(idx, n_taps, KH, KW, dil_h, dil_w, stride_xc, stride_xh, stride_xw)
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


def pad_input(x, padding):
    """x (B, C, H, W) -> (B, C + 1, H + 2·ph, W + 2·pw) in x's memory format (NCHW or
    channels-last): the zero padding made real and one all-zero extra channel (what masked
    slots read). One ``F.pad`` (reads x once, writes the copy once)."""
    import torch.nn.functional as F

    return F.pad(x, (padding[1], padding[1], padding[0], padding[0], 0, 1))


def conv_taps(xp, indices, kernel_size, dilation):
    """The (n, K) tap offsets of :func:`_conv_taps_kernel` into the padded input ``xp``
    (C + 1 channels, the last all zero): int32 when every offset fits, else int64."""
    n, K = indices.shape
    dtype = torch.int32 if xp.numel() < 2**31 - 1 else torch.int64
    taps = torch.empty(n, K, dtype=dtype, device=xp.device)
    if n * K:
        block = 1024
        c = xp.shape[1] - 1
        _conv_taps_kernel[(triton.cdiv(n * K, block),)](
            indices, taps, n, K, c * kernel_size[0] * kernel_size[1], c * xp.stride(1), *kernel_size, *dilation,
            xp.stride(1), xp.stride(2), xp.stride(3), indices.stride(0), indices.stride(1), BLOCK=block)
    return taps


def conv_fwd_grid(n, P, meta):
    """The forward's 1-D grid: every (channel block, pixel block) pair on axis 0, which
    holds 2**31 - 1 programs (axis 1 stops at 65,535)."""
    return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(P, meta["BLOCK_P"]),)


def condensed_conv_fwd(x, values, indices, bias, out, kernel_size, stride, padding, dilation):
    """Launch the implicit forward.

    x: (B, C, H, W), any strides; values, indices: (n, K) any strides (an index outside
    [0, C·kh·kw) reads zeros); bias: (n,) any stride, or None; out: (B, n, OH, OW)
    contiguous, written in full. Geometry arguments are (h, w) int pairs. Holds one
    padded copy of x (:func:`pad_input`) while it runs.
    """
    batch, n, oh, ow = out.shape
    K = values.shape[1]
    if not out.is_contiguous():
        raise ValueError("out must be contiguous (B, n, OH, OW)")
    P = batch * oh * ow
    if out.numel() == 0:
        return out
    if K == 0:
        out.copy_((bias if bias is not None else out.new_zeros(n)).view(1, n, 1, 1).expand_as(out))
        return out
    with launch_device(x):
        xp = pad_input(x, padding)
        taps = conv_taps(xp, indices, kernel_size, dilation)
        _condensed_conv_fwd_kernel[lambda meta: conv_fwd_grid(n, P, meta)](
            xp, values, taps, bias if bias is not None else values, out,
            n, K, P, size_bucket(n), size_bucket(K), batch_bucket(P),
            oh, ow, stride[0], stride[1], (xp.shape[1] - 1) * xp.stride(1),
            xp.stride(0), xp.stride(2), xp.stride(3),
            values.stride(0), values.stride(1), taps.stride(0), bias.stride(0) if bias is not None else 0,
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
    batch, n, oh, ow = grad_y.shape
    K = indices.shape[1]
    if not grad_y.is_contiguous():
        raise ValueError("grad_y must be contiguous (B, n, OH, OW)")
    P = batch * oh * ow
    if out.numel() == 0:
        return out
    if P == 0:
        return out.zero_()
    splits = dw_splits(n, K, P) if splits is None else max(1, int(splits))
    per = triton.cdiv(triton.cdiv(max(P, 1), splits), _DW_SPLIT_GRAIN) * _DW_SPLIT_GRAIN
    splits = triton.cdiv(max(P, 1), per)
    partial = torch.empty(splits, n, K, dtype=torch.float32, device=out.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]), splits)  # noqa: E731
    with launch_device(x):
        _condensed_conv_dw_kernel[grid](
            x, grad_y, indices, partial,
            n, K, P, size_bucket(n), size_bucket(K), batch_bucket(per), per, x.shape[1] * kernel_size[0] * kernel_size[1],
            *_geometry_args(x, (oh, ow), kernel_size, stride, padding, dilation),
            indices.stride(0), indices.stride(1),
            grad_y.stride(0), grad_y.stride(1),
            partial.stride(0), partial.stride(1), partial.stride(2),
        )
    out.copy_(partial[0] if splits == 1 else partial.sum(0))
    return out


def _aot_specs():
    """(autotuner, signature, constexprs) for the ahead-of-time compile check."""
    from types import SimpleNamespace

    fwd_ints = {k: "i32" for k in ("n", "K", "P", "n_bucket", "k_bucket", "p_bucket", "OH", "OW",
                                   "stride_h", "stride_w", "zero_off", "stride_xb", "stride_xh", "stride_xw",
                                   "stride_v_n", "stride_v_k", "stride_t_n", "stride_b", "stride_y_b", "stride_y_n")}
    geom = ("H", "W", "OH", "OW", "KH", "KW", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w",
            "stride_xb", "stride_xc", "stride_xh", "stride_xw")
    dw_ints = {k: "i32" for k in ("n", "K", "P", "n_bucket", "k_bucket", "p_bucket", "p_per_split", "n_taps", *geom,
                                  "stride_i_n", "stride_i_k", "stride_gy_b", "stride_gy_n",
                                  "stride_dv_s", "stride_dv_n", "stride_dv_k")}
    taps_ints = {k: "i32" for k in ("n", "K", "n_taps", "zero_off", "KH", "KW", "dil_h", "dil_w", "stride_xc", "stride_xh",
                                    "stride_xw", "stride_i_n", "stride_i_k")}
    taps = SimpleNamespace(fn=_conv_taps_kernel, configs=[triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1)])
    specs = []
    for dt, it, tt in (("fp32", "i32", "i32"), ("bf16", "i16", "i64")):
        specs.append((_condensed_conv_fwd_kernel,
                      {"xp_ptr": f"*{dt}", "values_ptr": f"*{dt}", "taps_ptr": f"*{tt}", "bias_ptr": f"*{dt}",
                       "y_ptr": f"*{dt}", **fwd_ints}, {"HAS_BIAS": True}))
        specs.append((_condensed_conv_dw_kernel,
                      {"x_ptr": f"*{dt}", "gy_ptr": f"*{dt}", "indices_ptr": f"*{it}", "dv_ptr": "*fp32", **dw_ints}, {}))
        specs.append((taps, {"indices_ptr": f"*{it}", "taps_ptr": f"*{tt}", **taps_ints}, {}))
    return specs


AOT_SPECS = _aot_specs()

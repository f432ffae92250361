"""Gather-MMA kernels for group-shared constant fan-in (G output rows share one index set).

Format: ``values`` (n, K) and ``indices`` (n/G, K); row ``j`` belongs to group ``j // G``
and reads the columns ``indices[j // G, :]``. Because a group's G rows read the same K
columns, one tile of the product is a dense matrix product over *gathered* rows of xT,
which ``tl.dot`` runs on tensor cores (HMMA on sm_80, wgmma on sm_90):

  forward   y[b, gG+r]   = sum_k values[gG+r, k] * xT[idx[g, k], b]
            (BLOCK_G x BLOCK_K) @ (BLOCK_K x BLOCK_B), accumulated over K chunks
  dValues   dv[gG+r, k]  = sum_b gy[b, gG+r] * xT[idx[g, k], b]
            (BLOCK_G x BLOCK_B) @ (BLOCK_B x BLOCK_K), accumulated over batch chunks
  dX        dx[b, idx[g, k]] += sum_r gy[b, gG+r] * values[gG+r, k]
            (BLOCK_B x BLOCK_G) @ (BLOCK_G x BLOCK_K) per group, then a scatter-add over
            the groups that share a column: either fp32 atomics straight into dX
            (fast, order-dependent), or a per-(group, slot) workspace reduced by a second
            kernel in the fixed order of the column's CSC list (deterministic, the default).

Every kernel accumulates in fp32. fp32 operands use IEEE fp32 products unless ``TF32`` is
set (then tensor cores in TF32). Slots k >= K are masked (storage may pad K to a multiple
of 16: the pad slots are never read), as are indices outside [0, in_features).

``WIDEN`` (set only by the launchers under Triton's interpreter, for bf16) widens the
operands to fp32 before ``tl.dot``: Triton 3.9's interpreter multiplies bf16 bit
patterns in ``tl.dot``. A bf16 x bf16 product is exact in fp32, and the accumulation is
fp32 either way, so the widened dot computes what the tensor cores compute.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, batch_bucket, interpreting, launch_device, size_bucket
from .condensed_conv import clamped_pixel_offsets


def _cfg(bg, bk, bb, warps, stages):
    return triton.Config({"BLOCK_G": bg, "BLOCK_K": bk, "BLOCK_B": bb}, num_warps=warps, num_stages=stages)


# (BLOCK_G, BLOCK_K, BLOCK_B, num_warps, num_stages). tl.dot needs every side >= 16.
# The first entry is the interpreter's (small: fast to interpret, covers every case).
# Two spaces per kernel: tensor-core tiles (bf16, fp16, fp32 as TF32) and small tiles for
# IEEE fp32, whose dot is FMA code holding the whole product tile in registers (larger
# tiles spill: checked with the AOT build). The gathered (BLOCK_K, BLOCK_B) operand costs a
# 64-bit address per element and stage, so wide batch tiles take short K chunks.
_INTERP = (16, 16, 16, 4, 1)
_FWD_MMA = [_INTERP, (16, 32, 64, 4, 3), (64, 16, 256, 8, 3), (64, 32, 128, 8, 2)]
_FWD_FMA = [_INTERP, (16, 32, 64, 4, 3), (16, 64, 32, 4, 3)]
_DW_MMA = [_INTERP, (16, 64, 32, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 8, 3), (128, 64, 32, 8, 3)]
_DW_FMA = [_INTERP, (16, 32, 32, 4, 3), (16, 64, 32, 4, 3), (32, 32, 32, 4, 3)]
_DX_MMA = [_INTERP, (16, 32, 64, 4, 3), (64, 64, 64, 4, 3), (64, 64, 128, 8, 3), (32, 64, 128, 8, 3)]
_DX_FMA = [_INTERP, (16, 32, 32, 4, 3), (16, 16, 64, 4, 3)]


def _configs(tiles):
    return [_cfg(*t) for t in tiles]


def _prune():
    """Keep the tiles no larger than the problem (rows of a group, fan-in, batch), so
    impossible or wasteful tiles never compile; the interpreter's tile is the fallback."""

    def prune(configs, named_args, **kwargs):
        g = max(triton.next_power_of_2(int(named_args["G"])), 16)
        k = max(int(named_args["k_bucket"]), 16)
        b = max(int(named_args["b_bucket"]), 16)
        kept = [c for c in configs[1:] if c.kwargs["BLOCK_G"] <= g and c.kwargs["BLOCK_K"] <= k
                and c.kwargs["BLOCK_B"] <= b]
        return kept or configs[:1]

    return prune


@triton.jit
def _dot(a, b, acc, TF32: tl.constexpr, WIDEN: tl.constexpr):
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _group_rows(G, BLOCK_G: tl.constexpr):
    """Program axis 0 walks groups, then BLOCK_G-row tiles inside a group: returns the
    group, the rows' mask (a tile past the group's G rows) and the rows as int64."""
    tiles = tl.cdiv(G, BLOCK_G)
    pid = tl.program_id(0)
    group = pid // tiles
    r = (pid % tiles) * BLOCK_G + tl.arange(0, BLOCK_G)
    return group, r < G, group.to(tl.int64) * G + r


@triton.jit
def _slot_ok(idx, k_mask, in_features):
    """Slots that hold a real index (k < K) inside [0, in_features): the only ones read."""
    return k_mask & (idx >= 0) & (idx < in_features)


@triton.jit
def _group_fwd_kernel(
    x_ptr, v_ptr, idx_ptr, bias_ptr, y_ptr,
    B, G, K, in_features, k_bucket, b_bucket,
    stride_x_i, stride_x_b, stride_v_n, stride_i_g, stride_y_n, stride_y_b,
    HAS_BIAS: tl.constexpr, TF32: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    group, r_mask, rows64 = _group_rows(G, BLOCK_G)
    bs = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = bs < B
    idx_row = idx_ptr + group.to(tl.int64) * stride_i_g
    v_rows = v_ptr + rows64[:, None] * stride_v_n
    x_cols = x_ptr + bs[None, :].to(tl.int64) * stride_x_b

    acc = tl.zeros((BLOCK_G, BLOCK_B), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_K)
    idx = tl.load(idx_row + ks, mask=ks < K, other=0)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        # the next chunk's indices one iteration ahead: their latency hides behind this dot
        idx_next = tl.load(idx_row + ks + BLOCK_K, mask=ks + BLOCK_K < K, other=0)
        ok = _slot_ok(idx, k_mask, in_features)
        xg = tl.load(x_cols + idx.to(tl.int64)[:, None] * stride_x_i, mask=ok[:, None] & b_mask[None, :], other=0.0)
        v = tl.load(v_rows + ks[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot(v, xg, acc, TF32, WIDEN)
        idx = idx_next

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows64, mask=r_mask, other=0.0).to(tl.float32)[:, None]
    y_ptrs = y_ptr + rows64[:, None] * stride_y_n + bs[None, :].to(tl.int64) * stride_y_b
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=r_mask[:, None] & b_mask[None, :])


@triton.jit
def _group_conv_fwd_kernel(
    xp_ptr, v_ptr, taps_ptr, bias_ptr, y_ptr,
    P, G, K, zero_off, k_bucket, b_bucket, OH, OW, stride_h, stride_w,
    stride_xb, stride_xh, stride_xw, stride_v_n, stride_t_g, stride_y_b, stride_y_n,
    HAS_BIAS: tl.constexpr, TF32: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Implicit-im2col group convolution forward: the forward's (BLOCK_G x BLOCK_K) @
    (BLOCK_K x BLOCK_B) tile with the output pixels as the batch. The gathered element
    (slot k, pixel p) is ``xp[tap[group, k] + pix_off[p]]`` in the padded input copy
    (:func:`tritonsparse.kernels.condensed_conv.pad_input`); tail slots hold the offset of
    its all-zero channel, a pixel past P reads pixel P - 1 and is not stored, so the
    gather needs no mask. y is (B, n, OH, OW) with its strides."""
    group, r_mask, rows64 = _group_rows(G, BLOCK_G)
    ps = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    p_mask = ps < P
    pix_off = clamped_pixel_offsets(ps, P, OH, OW, stride_h, stride_w, stride_xb, stride_xh, stride_xw, taps_ptr)
    t_row = taps_ptr + group.to(tl.int64) * stride_t_g
    v_rows = v_ptr + rows64[:, None] * stride_v_n

    acc = tl.zeros((BLOCK_G, BLOCK_B), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        tap = tl.load(t_row + ks, mask=k_mask, other=zero_off)
        xg = tl.load(xp_ptr + tap[:, None] + pix_off[None, :])
        v = tl.load(v_rows + ks[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot(v, xg, acc, TF32, WIDEN)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows64, mask=r_mask, other=0.0).to(tl.float32)[:, None]
    ohw = OH * OW
    b2 = ps // ohw
    y_ptrs = y_ptr + rows64[:, None] * stride_y_n + (b2.to(tl.int64) * stride_y_b + (ps - b2 * ohw))[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=r_mask[:, None] & p_mask[None, :])


@triton.jit
def _group_dw_kernel(
    x_ptr, gy_ptr, idx_ptr, dv_ptr,
    B, G, K, in_features, k_bucket, b_bucket,
    stride_x_i, stride_x_b, stride_gy_n, stride_gy_b, stride_i_g, stride_dv_n,
    TF32: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    group, r_mask, rows64 = _group_rows(G, BLOCK_G)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    idx = tl.load(idx_ptr + group.to(tl.int64) * stride_i_g + ks, mask=k_mask, other=0)
    ok = _slot_ok(idx, k_mask, in_features)
    x_rows = x_ptr + idx.to(tl.int64)[None, :] * stride_x_i
    gy_rows = gy_ptr + rows64[:, None] * stride_gy_n

    acc = tl.zeros((BLOCK_G, BLOCK_K), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < B
        gy = tl.load(gy_rows + bs[None, :].to(tl.int64) * stride_gy_b, mask=r_mask[:, None] & b_mask[None, :], other=0.0)
        xg = tl.load(x_rows + bs[:, None].to(tl.int64) * stride_x_b, mask=b_mask[:, None] & ok[None, :], other=0.0)
        acc = _dot(gy, xg, acc, TF32, WIDEN)

    dv_ptrs = dv_ptr + rows64[:, None] * stride_dv_n + ks[None, :]
    tl.store(dv_ptrs, acc.to(dv_ptr.dtype.element_ty), mask=r_mask[:, None] & k_mask[None, :])


@triton.jit
def _group_dx_kernel(
    gy_ptr, v_ptr, idx_ptr, out_ptr,
    B, G, K, in_features, k_bucket, b_bucket,
    stride_gy_n, stride_gy_b, stride_v_n, stride_i_g, stride_o_r, stride_o_b,
    ATOMIC: tl.constexpr, TF32: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """One program: one group, a BLOCK_B batch slice and a BLOCK_K slot slice;
    part (BLOCK_B, BLOCK_K) = gy[b, group rows] @ values[group rows, slots].
    ATOMIC: add part into dX (B, in_features) fp32 at the slots' columns (out row = column).
    Else: store part into the workspace (n_groups * K, B) at rows group*K + slot."""
    group = tl.program_id(0)
    bs = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = bs < B
    ks = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    row0 = group.to(tl.int64) * G
    gy_cols = gy_ptr + bs[:, None].to(tl.int64) * stride_gy_b

    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        r = g0 + tl.arange(0, BLOCK_G)
        r_mask = r < G
        gy = tl.load(gy_cols + (row0 + r)[None, :] * stride_gy_n, mask=b_mask[:, None] & r_mask[None, :], other=0.0)
        v = tl.load(v_ptr + (row0 + r)[:, None] * stride_v_n + ks[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot(gy, v, acc, TF32, WIDEN)

    if ATOMIC:
        idx = tl.load(idx_ptr + group.to(tl.int64) * stride_i_g + ks, mask=k_mask, other=0)
        ok = _slot_ok(idx, k_mask, in_features)
        o_ptrs = out_ptr + idx.to(tl.int64)[None, :] * stride_o_r + bs[:, None].to(tl.int64) * stride_o_b
        tl.atomic_add(o_ptrs, acc, mask=b_mask[:, None] & ok[None, :], sem="relaxed")
    else:
        o_rows = group.to(tl.int64) * K + ks
        o_ptrs = out_ptr + o_rows[None, :] * stride_o_r + bs[:, None].to(tl.int64) * stride_o_b
        tl.store(o_ptrs, acc, mask=b_mask[:, None] & k_mask[None, :])


@autotune(configs=[triton.Config({"BLOCK_B": bb}, num_warps=w, num_stages=1) for bb, w in
                   ((16, 1), (64, 2), (128, 4), (256, 4), (512, 8))],
          key=["b_bucket"], prune_configs_by={"early_config_prune": lambda cs, named_args, **kw: [
              c for c in cs[1:] if c.kwargs["BLOCK_B"] <= max(named_args["b_bucket"], 64)] or cs[:1]})
@triton.jit
def _column_reduce_kernel(
    ws_ptr, crow_ptr, perm_ptr, dx_ptr,
    B, b_bucket, stride_ws_r, stride_dx_b, stride_dx_i,
    BLOCK_B: tl.constexpr,
):
    """dX[b, c] = sum over the column's CSC entries e (in order) of ws[perm[e], b]: the
    deterministic second pass of dX. One program per (column, batch slice)."""
    col = tl.program_id(0)
    bs = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = bs < B
    start = tl.load(crow_ptr + col).to(tl.int64)
    end = tl.load(crow_ptr + col + 1).to(tl.int64)
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for e in range(start, end):
        src = tl.load(perm_ptr + e).to(tl.int64)
        acc += tl.load(ws_ptr + src * stride_ws_r + bs, mask=b_mask, other=0.0)
    tl.store(dx_ptr + bs.to(tl.int64) * stride_dx_b + col.to(tl.int64) * stride_dx_i,
             acc.to(dx_ptr.dtype.element_ty), mask=b_mask)


def _tuned(kernel, tiles, **kw):
    return autotune(configs=_configs(tiles), key=["G", "k_bucket", "b_bucket"],
                    prune_configs_by={"early_config_prune": _prune()}, **kw)(kernel)


# (tensor-core, IEEE fp32) autotuners over each kernel
_FWD = (_tuned(_group_fwd_kernel, _FWD_MMA), _tuned(_group_fwd_kernel, _FWD_FMA))
_DW = (_tuned(_group_dw_kernel, _DW_MMA), _tuned(_group_dw_kernel, _DW_FMA))
_CONV_FWD = (_tuned(_group_conv_fwd_kernel, _FWD_MMA), _tuned(_group_conv_fwd_kernel, _FWD_FMA))
_DX = (_tuned(_group_dx_kernel, _DX_MMA, reset_to_zero=["out_ptr"]),
       _tuned(_group_dx_kernel, _DX_FMA, reset_to_zero=["out_ptr"]))


def _pick(pair, dtype, tf32):
    return pair[1] if dtype == torch.float32 and not tf32 else pair[0]


# -- launchers --------------------------------------------------------------------------
def _widen(dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


def _group_tiles(n_groups, G, meta):
    return n_groups * triton.cdiv(G, meta["BLOCK_G"])


def group_fwd(x, values, indices, bias, out, *, x_batch_major: bool, out_transposed: bool = False, tf32: bool = False):
    """Forward. ``x`` is xT (in_features, B) when ``x_batch_major`` (the fast layout: a
    gathered row is contiguous along the batch), else x (B, in_features); any strides.
    values (n, K) with unit column stride; indices (n/G, K) with unit column stride;
    bias (n,) contiguous or None; out: y (B, n), or yT (n, B) when ``out_transposed`` (the
    next layer's batch-major input), any strides, written in full."""
    n, K = values.shape
    n_groups = indices.shape[0]
    G = n // n_groups
    if x_batch_major:
        in_features, B = x.shape
        sx_i, sx_b = x.stride(0), x.stride(1)
    else:
        B, in_features = x.shape
        sx_b, sx_i = x.stride(0), x.stride(1)
    if out_transposed:
        sy_n, sy_b = out.stride(0), out.stride(1)
    else:
        sy_b, sy_n = out.stride(0), out.stride(1)
    grid = lambda meta: (_group_tiles(n_groups, G, meta), triton.cdiv(B, meta["BLOCK_B"]))  # noqa: E731
    with launch_device(x):
        _pick(_FWD, values.dtype, tf32)[grid](
            x, values, indices, bias if bias is not None else values, out,
            B, G, K, in_features, size_bucket(K), batch_bucket(B),
            sx_i, sx_b, values.stride(0), indices.stride(0), sy_n, sy_b,
            HAS_BIAS=bias is not None, TF32=bool(tf32), WIDEN=_widen(values.dtype),
        )
    return out


def group_conv_fwd(x, values, indices, bias, out, kernel_size, stride, padding, dilation, *, tf32: bool = False):
    """Implicit-im2col forward of a group-shared conv. x: (B, C, H, W), any strides;
    values (n, K) with unit column stride; indices (n/G, K) over C·kh·kw (an index out
    of range reads zeros); bias (n,) contiguous or None; out: (B, n, OH, OW), any strides,
    written in full. Holds one padded copy of x and an (n/G, K) tap table while it runs."""
    from .condensed_conv import conv_taps, pad_input

    batch, n, oh, ow = out.shape
    K = values.shape[1]
    n_groups = indices.shape[0]
    G = n // n_groups
    P = batch * oh * ow
    with launch_device(x):
        xp = pad_input(x, padding)
        taps = conv_taps(xp, indices, kernel_size, dilation)
        grid = lambda meta: (_group_tiles(n_groups, G, meta), triton.cdiv(P, meta["BLOCK_B"]))  # noqa: E731
        _pick(_CONV_FWD, values.dtype, tf32)[grid](
            xp, values, taps, bias if bias is not None else values, out,
            P, G, K, (xp.shape[1] - 1) * xp.stride(1), size_bucket(K), batch_bucket(P), oh, ow, stride[0], stride[1],
            xp.stride(0), xp.stride(2), xp.stride(3), values.stride(0), taps.stride(0), out.stride(0), out.stride(1),
            HAS_BIAS=bias is not None, TF32=bool(tf32), WIDEN=_widen(values.dtype),
        )
    return out


def group_dw(xT, gy, indices, out, *, tf32: bool = False):
    """dValues (n, K) into ``out`` (unit column stride). xT: (in_features, B); gy: (B, n)
    dY, any strides."""
    in_features, B = xT.shape
    n, K = out.shape
    n_groups = indices.shape[0]
    G = n // n_groups
    grid = lambda meta: (_group_tiles(n_groups, G, meta), triton.cdiv(K, meta["BLOCK_K"]))  # noqa: E731
    with launch_device(xT):
        _pick(_DW, out.dtype, tf32)[grid](
            xT, gy, indices, out,
            B, G, K, in_features, size_bucket(K), batch_bucket(B),
            xT.stride(0), xT.stride(1), gy.stride(1), gy.stride(0), indices.stride(0), out.stride(0),
            TF32=bool(tf32), WIDEN=_widen(out.dtype),
        )
    return out


def group_dx(gy, values, indices, in_features, transposed, *, atomic: bool = False, tf32: bool = False):
    """dX (B, in_features) in gy's dtype. gy: (B, n) dY, any strides. ``transposed``: the
    group pattern's ``(crow, rows, perm)`` (used by the deterministic mode only)."""
    with launch_device(gy):
        return _group_dx(gy, values, indices, in_features, transposed, atomic, tf32)


def _group_dx(gy, values, indices, in_features, transposed, atomic, tf32):
    B, n = gy.shape
    K = values.shape[1]
    n_groups = indices.shape[0]
    G = n // n_groups
    grid = lambda meta: (n_groups, triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(K, meta["BLOCK_K"]))  # noqa: E731
    common = (B, G, K, in_features, size_bucket(K), batch_bucket(B), gy.stride(1), gy.stride(0),
              values.stride(0), indices.stride(0))
    if atomic:
        dx = torch.zeros(B, in_features, dtype=torch.float32, device=gy.device)
        _pick(_DX, values.dtype, tf32)[grid](gy, values, indices, dx, *common, dx.stride(1), dx.stride(0),
                               ATOMIC=True, TF32=bool(tf32), WIDEN=_widen(values.dtype))
        return dx.to(gy.dtype)
    ws = torch.empty(n_groups * K, B, dtype=torch.float32, device=gy.device)
    _pick(_DX, values.dtype, tf32)[grid](gy, values, indices, ws, *common, ws.stride(0), ws.stride(1),
                           ATOMIC=False, TF32=bool(tf32), WIDEN=_widen(values.dtype))
    crow, _rows, perm = transposed
    dx = torch.empty(B, in_features, dtype=gy.dtype, device=gy.device)
    grid2 = lambda meta: (in_features, triton.cdiv(B, meta["BLOCK_B"]))  # noqa: E731
    _column_reduce_kernel[grid2](ws, crow, perm, dx, B, batch_bucket(B), ws.stride(0), dx.stride(0), dx.stride(1))
    return dx


def _aot_specs():
    """(autotuner, signature, constexprs, values) for the ahead-of-time compile check: the
    tensor-core spaces for bf16 (int16 indices) and fp32-as-TF32 (int32 indices), the IEEE
    fp32 spaces, and the column reduction. fp16 builds the same code as bf16 with another
    MMA type and is left out to keep the check's compile time down. ``values`` are the ints
    of a representative launch (Llama 4096->14336 at 90%, G=64, batch 256, K=410 stored
    in rows of 416), so the build gets the runtime's specialization (unit strides become
    constants, strides divisible by 16 get the divisibility hint). The batch-major layouts
    (``batch_major_out``: the forward writes yT; a batch-major dY into dX and dValues) are
    other specializations (the unit stride moves to the batch); they are built for bf16."""
    ints = ("B", "G", "K", "in_features", "k_bucket", "b_bucket")
    B, n, G, K, KP, IN = 256, 14336, 64, 410, 416, 4096
    common = {"B": B, "G": G, "K": K, "in_features": IN, "k_bucket": 512, "b_bucket": B}
    fwd_vals = {**common, "stride_x_i": B, "stride_x_b": 1, "stride_v_n": KP, "stride_i_g": KP,
                "stride_y_n": 1, "stride_y_b": n}
    dw_vals = {**common, "stride_x_i": B, "stride_x_b": 1, "stride_gy_n": 1, "stride_gy_b": n, "stride_i_g": KP,
               "stride_dv_n": KP}
    dx_vals = {False: {**common, "stride_gy_n": 1, "stride_gy_b": n, "stride_v_n": KP, "stride_i_g": KP,
                       "stride_o_r": B, "stride_o_b": 1},
               True: {**common, "stride_gy_n": 1, "stride_gy_b": n, "stride_v_n": KP, "stride_i_g": KP,
                      "stride_o_r": 1, "stride_o_b": IN}}

    def sig(ptrs, strides):
        return {**ptrs, **{k: "i32" for k in ints + strides}}

    bm = {"stride_y_n": B, "stride_y_b": 1, "stride_gy_n": B, "stride_gy_b": 1}  # batch-major y / dY

    def batch_major(vals):
        return {**vals, **{k: v for k, v in bm.items() if k in vals}}

    specs = []
    for dt, it, tf32, which in (("bf16", "i16", False, 0), ("fp32", "i32", True, 0), ("fp32", "i32", False, 1)):
        const = {"TF32": tf32, "WIDEN": False}
        specs.append((_FWD[which], sig({"x_ptr": f"*{dt}", "v_ptr": f"*{dt}", "idx_ptr": f"*{it}", "bias_ptr": f"*{dt}",
                                        "y_ptr": f"*{dt}"},
                                       ("stride_x_i", "stride_x_b", "stride_v_n", "stride_i_g", "stride_y_n", "stride_y_b")),
                      {**const, "HAS_BIAS": True}, fwd_vals))
        specs.append((_DW[which], sig({"x_ptr": f"*{dt}", "gy_ptr": f"*{dt}", "idx_ptr": f"*{it}", "dv_ptr": f"*{dt}"},
                                      ("stride_x_i", "stride_x_b", "stride_gy_n", "stride_gy_b", "stride_i_g", "stride_dv_n")),
                      const, dw_vals))
        for atomic in (False, True):
            specs.append((_DX[which], sig({"gy_ptr": f"*{dt}", "v_ptr": f"*{dt}", "idx_ptr": f"*{it}", "out_ptr": "*fp32"},
                                          ("stride_gy_n", "stride_gy_b", "stride_v_n", "stride_i_g", "stride_o_r", "stride_o_b")),
                          {**const, "ATOMIC": atomic}, dx_vals[atomic]))
    dt, it = "bf16", "i16"
    const = {"TF32": False, "WIDEN": False}
    for kernel, ptrs, strides, extra, vals in (
            (_FWD[0], {"x_ptr": f"*{dt}", "v_ptr": f"*{dt}", "idx_ptr": f"*{it}", "bias_ptr": f"*{dt}", "y_ptr": f"*{dt}"},
             ("stride_x_i", "stride_x_b", "stride_v_n", "stride_i_g", "stride_y_n", "stride_y_b"), {"HAS_BIAS": True},
             fwd_vals),
            (_DW[0], {"x_ptr": f"*{dt}", "gy_ptr": f"*{dt}", "idx_ptr": f"*{it}", "dv_ptr": f"*{dt}"},
             ("stride_x_i", "stride_x_b", "stride_gy_n", "stride_gy_b", "stride_i_g", "stride_dv_n"), {}, dw_vals),
            *[(_DX[0], {"gy_ptr": f"*{dt}", "v_ptr": f"*{dt}", "idx_ptr": f"*{it}", "out_ptr": "*fp32"},
               ("stride_gy_n", "stride_gy_b", "stride_v_n", "stride_i_g", "stride_o_r", "stride_o_b"),
               {"ATOMIC": atomic}, dx_vals[atomic]) for atomic in (False, True)]):
        specs.append((kernel, sig(ptrs, strides), {**const, **extra}, batch_major(vals)))
    # the implicit group conv forward: 64 -> 64 channels, 3x3, padding 1, 16x16 input, batch 8,
    # K = 58 (rows of 64), G = 16; taps int32 (n/G, K); the padded copy (8, 65, 18, 18)
    conv_ints = ("P", "G", "K", "zero_off", "k_bucket", "b_bucket", "OH", "OW", "stride_h", "stride_w", "stride_xb",
                 "stride_xh", "stride_xw", "stride_v_n", "stride_t_g", "stride_y_b", "stride_y_n")
    conv_vals = {"P": 2048, "G": 16, "K": 58, "zero_off": 64 * 324, "k_bucket": 64, "b_bucket": 2048, "OH": 16, "OW": 16,
                 "stride_h": 1, "stride_w": 1, "stride_xb": 65 * 324, "stride_xh": 18, "stride_xw": 1, "stride_v_n": 64,
                 "stride_t_g": 58, "stride_y_b": 64 * 256, "stride_y_n": 256}
    for dt, tf32, which in (("bf16", False, 0), ("fp32", False, 1)):
        specs.append((_CONV_FWD[which], {"xp_ptr": f"*{dt}", "v_ptr": f"*{dt}", "taps_ptr": "*i32", "bias_ptr": f"*{dt}",
                                         "y_ptr": f"*{dt}", **{k: "i32" for k in conv_ints}},
                      {"HAS_BIAS": True, "TF32": tf32, "WIDEN": False}, conv_vals))
    red_vals = {"B": B, "b_bucket": B, "stride_ws_r": B, "stride_dx_b": IN, "stride_dx_i": 1}
    for dt in ("fp32", "bf16"):
        specs.append((_column_reduce_kernel, {"ws_ptr": "*fp32", "crow_ptr": "*i32", "perm_ptr": "*i64", "dx_ptr": f"*{dt}",
                                              **{k: "i32" for k in ("B", "b_bucket", "stride_ws_r", "stride_dx_b", "stride_dx_i")}},
                      {}, red_vals))
    return specs


AOT_SPECS = _aot_specs()

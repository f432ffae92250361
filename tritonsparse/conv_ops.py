"""Condensed 2-D convolution (groups=1, zero padding): backend dispatch and autograd.

The weight is condensed over the unfolded axis C_in·kh·kw (column ``c·kh·kw + i·kw + j``
is tap (c, i, j), the order of ``conv.weight.reshape(out, -1)``).

* ``backend_for(x.device) == "triton"`` (CUDA, or the interpreter): **implicit im2col**.
  The forward and dValues read the taps straight from x
  (:mod:`tritonsparse.kernels.condensed_conv`); the unfolded input is never built. dX is
  still the condensed dX of the unfolded gradient ((B·L, n) -> (B·L, C_in·kh·kw), the
  condensed matmul's CSR gather) followed by ``F.fold``, so the backward does hold one
  unfolded-sized gradient.
* ``"torch"`` (CPU), and while ``torch.compile`` traces: **unfold fallback**, ``F.unfold``
  into (B·L, C_in·kh·kw) patches and ``condensed_matmul`` (whose registered op is what
  compiled graphs keep).
* A group-shared pattern (``indices`` (n/G, K) with G > 1): on the Triton backend the
  forward is implicit im2col on tensor cores
  (:func:`tritonsparse.kernels.group_mma.group_conv_fwd`: the group forward tile with
  the output pixels as its batch, each tap gathered from a padded copy of x); the
  backward runs the group dX on the output gradient followed by ``F.fold``, and the
  group dValues on the input unfolded batch-major (the backward holds unfolded-sized
  tensors, the forward does not). On the torch backend and under ``torch.compile``, the
  unfolded patches go through ``condensed_matmul``'s group path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._structure import Pattern, pattern_for
from ._triton import backend_for
from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor
from .ops import _backward as _matmul_backward
from .group_ops import group_size_of
from .ops import _condensed_matmul, _grad_bias, _grouped


def output_size(hw, kernel_size, stride, padding, dilation):
    """(OH, OW) of a convolution of an (H, W) input."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(hw, kernel_size, stride, padding, dilation))


def unfold_rows(x, kernel_size, stride, padding, dilation):
    """im2col of x (B, C, H, W) as 2-D rows: (B·OH·OW, C·kh·kw), one row per output pixel."""
    patches = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # (B, CKK, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def unfold_batch_major(x, kernel_size, stride, padding, dilation):
    """The rows of :func:`unfold_rows` as a (B·OH·OW, C·kh·kw) view of batch-major storage
    (C·kh·kw, B·OH·OW): one copy, and the transposed operand the group kernels gather from
    is this storage itself (their launcher makes no second copy)."""
    patches = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # (B, CKK, L)
    return patches.transpose(0, 1).reshape(patches.shape[1], -1).t()


def rows_to_nchw(y2, batch, out_hw):
    """(B·OH·OW, n) rows back to a contiguous (B, n, OH, OW) map."""
    oh, ow = out_hw
    return y2.view(batch, oh * ow, y2.shape[-1]).transpose(1, 2).reshape(batch, y2.shape[-1], oh, ow)


def nchw_to_rows(y):
    """(B, n, OH, OW) -> (B·OH·OW, n) (a view when y is channels-last)."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _fold_rows(g2, x_shape, geometry):
    """The gradient of the unfolded rows (B·L, C·kh·kw) folded back onto x (B, C, H, W)."""
    kernel_size, stride, padding, dilation = geometry
    cols = g2.view(x_shape[0], -1, g2.shape[1]).transpose(1, 2)  # (B, CKK, L)
    return F.fold(cols, x_shape[2:], kernel_size, dilation=dilation, padding=padding, stride=stride)


def _implicit_forward(ctx, launch, x, values, indices, bias, geometry, pattern):
    """The forward of both implicit Functions: range check, output, ``launch`` of the
    forward kernel, and what the backward keeps."""
    pattern.check_range(indices)
    y = torch.empty(x.shape[0], values.shape[0], *output_size(x.shape[2:], *geometry), dtype=x.dtype,
                    device=x.device)
    bias = bias.contiguous() if bias is not None else None  # the kernels read the bias as contiguous
    launch(x, values, indices, bias, y, *geometry)
    ctx.save_for_backward(x, values, indices)
    ctx.geometry, ctx.has_bias, ctx.pattern = geometry, bias is not None, pattern
    return y


class _ImplicitConv2d(torch.autograd.Function):
    """Implicit-im2col forward and dValues on the Triton kernels; dX through the unfolded
    gradient and ``F.fold``."""

    @staticmethod
    def forward(ctx, x, values, indices, bias, geometry, pattern):
        from .kernels.condensed_conv import condensed_conv_fwd

        return _implicit_forward(ctx, condensed_conv_fwd, x, values, indices, bias, geometry, pattern)

    @staticmethod
    def backward(ctx, grad):
        from .kernels.condensed_conv import condensed_conv_dw

        x, values, indices = ctx.saved_tensors
        kernel_size, stride, padding, dilation = ctx.geometry
        grad = grad.contiguous()
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            in_features = x.shape[1] * kernel_size[0] * kernel_size[1]
            grad2 = nchw_to_rows(grad).contiguous()
            # only the dX half of the condensed matmul backward: x is not needed there
            gx2, _ = _matmul_backward(grad2, grad2.new_empty(0, in_features), False, values, indices, True, False,
                                      ctx.pattern)
            gx = _fold_rows(gx2, x.shape, ctx.geometry)
        if ctx.needs_input_grad[1]:
            ctx.pattern.check_range(indices)  # the indices may have been written since the forward
            gv = torch.empty(values.shape, dtype=values.dtype, device=values.device)
            condensed_conv_dw(x, grad, indices, gv, kernel_size, stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = _grad_bias(nchw_to_rows(grad), grad.dtype)
        return gx, gv, None, gb, None, None


class _ImplicitGroupConv2d(torch.autograd.Function):
    """Group-shared pattern: implicit-im2col forward on the group kernels; dX and dValues
    through the group backward on the output gradient rows (dX then ``F.fold``; dValues
    from the input unfolded batch-major, the transposed operand the group kernel reads)."""

    @staticmethod
    def forward(ctx, x, values, indices, bias, geometry, pattern):
        from .kernels.group_mma import group_conv_fwd

        return _implicit_forward(ctx, group_conv_fwd, x, values, indices, bias, geometry, pattern)

    @staticmethod
    def backward(ctx, grad):
        from .group_ops import _backward as group_backward

        x, values, indices = ctx.saved_tensors
        kernel_size = ctx.geometry[0]
        need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        in_features = x.shape[1] * kernel_size[0] * kernel_size[1]
        grad2 = nchw_to_rows(grad).contiguous()  # (B·L, n)
        # dValues gathers from the unfolded input as xT (C·kh·kw, B·L); dX needs no input
        x_t = unfold_batch_major(x, *ctx.geometry).t() if need_values else grad2.new_empty(in_features, 0)
        gx2, gv = group_backward(grad2, x_t, True, values, indices, need_x, need_values, ctx.pattern,
                                 "deterministic", False)
        gx = gb = None
        if need_x:
            gx = _fold_rows(gx2, x.shape, ctx.geometry)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = _grad_bias(grad2, grad.dtype)
        return gx, (gv if need_values else None), None, gb, None, None


def uses_implicit(x: torch.Tensor) -> bool:
    """Whether :func:`condensed_conv2d` runs the implicit-im2col kernels for x."""
    return backend_for(x.device) == "triton" and not torch.compiler.is_compiling()


def condensed_conv2d(x, values, indices, bias, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                     pattern: Pattern | None = None):
    """Convolution of x (B, C, H, W) with a condensed (n, K) weight over C·kh·kw.

    ``y[b, o, oh, ow] = sum_k values[o, k] * xpad[b, c, oh·sh + dy·dh, ow·sw + dx·dw] + bias[o]``
    with ``(c, dy, dx)`` decoded from ``indices[o, k]``. Returns (B, n, OH, OW).
    Geometry arguments are (h, w) int pairs. ``pattern`` is the owner's
    :class:`~tritonsparse._structure.Pattern` of ``indices`` (None: the one kept for the
    tensor); the indices are range-checked as in ``condensed_matmul``. Differentiable
    in x, values and bias. Implicit im2col on the Triton backend, unfold +
    ``condensed_matmul`` otherwise (also for an empty batch, n or K: no kernel launch).

    Group-shared patterns: ``indices`` (n/G, K) with ``values`` (n, K) (unit stride along
    K) make G consecutive output channels share their taps (``indices[o // G, k]``): the
    implicit group kernel on the Triton backend, unfold + the group op otherwise.
    """
    geometry = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    check_tensor("x", x, FLOAT_DTYPES, ndim=4)
    out_hw = output_size(x.shape[2:], *geometry)
    if min(out_hw) < 1:
        raise ValueError(f"x has spatial size {tuple(x.shape[2:])}, too small for kernel_size={geometry[0]}, "
                         f"padding={geometry[2]}, dilation={geometry[3]}")
    empty = x.shape[0] == 0 or (isinstance(values, torch.Tensor) and 0 in values.shape)
    if empty or not uses_implicit(x):  # an empty product launches no kernel: the unfold path handles it
        unfold = unfold_batch_major if _grouped(values, indices) else unfold_rows
        y2 = _condensed_matmul(unfold(x, *geometry), values, indices, bias, pattern=pattern)
        return rows_to_nchw(y2, x.shape[0], out_hw)
    if torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    check_tensor("values", values, FLOAT_DTYPES, ndim=2)
    check_tensor("indices", indices, INDEX_DTYPES, ndim=2)
    grouped = _grouped(values, indices)
    if grouped:
        group_size_of(values, indices)  # ValueError: rows not a multiple of the index rows, or fan-ins differ
        if values.stride(1) != 1:
            raise ValueError(f"values must have unit stride along the fan-in (got strides {values.stride()}) "
                             "for a group-shared pattern")
    elif values.shape != indices.shape:
        raise ValueError(f"values has shape {tuple(values.shape)} but indices has shape {tuple(indices.shape)}; they must match")
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != values.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries but values has {values.shape[0]} rows (out_channels)")
    check_same_device(x=x, values=values, indices=indices, bias=bias)
    if values.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"values/bias have dtype {values.dtype}/{None if bias is None else bias.dtype} "
                        f"but x has dtype {x.dtype}; they must match")
    in_features = x.shape[1] * geometry[0][0] * geometry[0][1]
    pattern = pattern if pattern is not None else pattern_for(indices, in_features)
    with torch.autocast(x.device.type, enabled=False):
        if grouped:
            return _ImplicitGroupConv2d.apply(x, values, indices, bias, geometry, pattern)
        return _ImplicitConv2d.apply(x, values, indices, bias, geometry, pattern)

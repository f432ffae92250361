"""Group-shared constant fan-in: the op, its autograd, its torch.library registration and
its plain-PyTorch path.

Format: ``values`` (n, K), ``indices`` (n/G, K); output row ``j`` reads the columns
``indices[j // G]``, so G consecutive rows share one index set while each keeps its own
values. ``G = n / indices.shape[0]`` (G=1 is the per-row format of ``condensed_matmul``,
which keeps its own kernels). The fan-in K may be a view of storage padded to a multiple
of 16 (``values_storage[:, :K]``): only the first K slots are read.

Backends: CUDA tensors (or CPU ones under ``TRITON_INTERPRET=1``) run the gather-MMA
kernels of :mod:`tritonsparse.kernels.group_mma`; other CPU tensors run a dense batched
matmul per chunk of groups over the gathered columns (fp32 accumulation).
"""
from __future__ import annotations

import torch

from ._layout import as_batch_major, kernel_layout
from ._structure import Pattern, pattern_for
from ._triton import backend_for
from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor, is_symbolic

__all__ = ["expand_group_indices", "group_condensed_matmul", "group_size_of"]

DX_MODES = ("deterministic", "atomic")
_CHUNK_ELEMS = 1 << 22  # gathered elements (B * groups * K) the torch path holds at once


def group_size_of(values: torch.Tensor, indices: torch.Tensor) -> int:
    """G = values.shape[0] / indices.shape[0]; ``ValueError`` when that is not a whole
    number or the fan-ins differ."""
    n, k = values.shape
    ng, ki = indices.shape
    if k != ki:
        raise ValueError(f"values has fan-in {k} (shape {tuple(values.shape)}) but indices has {ki} "
                         f"(shape {tuple(indices.shape)}); they must match")
    if ng == 0:
        if n != 0:
            raise ValueError(f"indices has 0 groups but values has {n} rows")
        return 1
    if n % ng:
        raise ValueError(f"values has {n} rows, not a multiple of indices' {ng} groups: n must be G * n_groups "
                         f"(indices (n/G, K), values (n, K))")
    return n // ng


def expand_group_indices(indices: torch.Tensor, group_size: int) -> torch.Tensor:
    """The per-row (n, K) indices of a group pattern (each group's row repeated G times)."""
    return indices.repeat_interleave(int(group_size), dim=0)


# -- plain-PyTorch path ---------------------------------------------------------------------
def _group_chunks(n_groups, batch, k):
    step = max(1, _CHUNK_ELEMS // max(batch * k, 1))
    return [(s, min(s + step, n_groups)) for s in range(0, n_groups, step)]


def _gather(xf, idx):
    """(B, in) fp32, (c, K) -> (c, B, K) gathered columns."""
    c, k = idx.shape
    return xf.index_select(1, idx.reshape(-1).long()).view(xf.shape[0], c, k).transpose(0, 1)


def torch_fwd(x2, values, indices, bias):
    """y (B, n) = per group (B, K) gathered x @ (K, G) values, in fp32."""
    (n, k), ng = values.shape, indices.shape[0]
    g, batch = n // ng, x2.shape[0]
    xf, vf = x2.float(), values.float()
    y = torch.empty(batch, ng, g, dtype=torch.float32, device=x2.device)
    for s, e in _group_chunks(ng, batch, k):
        part = torch.bmm(_gather(xf, indices[s:e]), vf[s * g:e * g].view(e - s, g, k).transpose(1, 2))
        y[:, s:e] = part.transpose(0, 1)
    y = y.view(batch, n)
    if bias is not None:
        y += bias.float()
    return y.to(x2.dtype)


def torch_dw(grad2, x2, indices, out_dtype):
    """dValues (n, K) = per group (G, B) dY slice @ (B, K) gathered x, in fp32."""
    batch, n = grad2.shape
    ng, k = indices.shape
    g = n // ng
    xf, gf = x2.float(), grad2.float()
    out = torch.empty(n, k, dtype=out_dtype, device=x2.device)
    for s, e in _group_chunks(ng, batch, k):
        gy = gf[:, s * g:e * g].reshape(batch, e - s, g).permute(1, 2, 0)  # (c, G, B)
        out[s * g:e * g] = torch.bmm(gy, _gather(xf, indices[s:e])).reshape(-1, k).to(out_dtype)
    return out


def torch_dx(grad2, values, indices, in_features):
    """dX (B, in) = scatter-add over groups of (B, G) dY slice @ (G, K) values, in fp32
    (``index_add_`` on CPU adds in a fixed order)."""
    batch, n = grad2.shape
    ng, k = indices.shape
    g = n // ng
    gf, vf = grad2.float(), values.float()
    dx = torch.zeros(batch, in_features, dtype=torch.float32, device=grad2.device)
    for s, e in _group_chunks(ng, batch, k):
        gy = gf[:, s * g:e * g].reshape(batch, e - s, g).transpose(0, 1)  # (c, B, G)
        part = torch.bmm(gy, vf[s * g:e * g].view(e - s, g, k))  # (c, B, K)
        dx.index_add_(1, indices[s:e].reshape(-1).long(), part.transpose(0, 1).reshape(batch, -1))
    return dx.to(grad2.dtype)


# -- implementations on 2-D inputs ----------------------------------------------------------
def _forward(x2, values, indices, bias, pattern, tf32, batch_major_out=False):
    """(y, xT or x2, transposed?). ``x2.t()`` contiguous (a batch-major x) is gathered from
    in place; any other layout is transposed once into xT."""
    pattern.check_range(indices)
    batch, (n, k) = x2.shape[0], values.shape
    if 0 in (batch, n, k):  # nothing to gather: no kernel is launched
        y = x2.new_zeros(batch, n)
        y = y if bias is None else y + bias
        return (as_batch_major(y) if batch_major_out else y), x2, False
    if backend_for(x2.device) == "torch":
        y = torch_fwd(x2, values, indices, bias)
        return (as_batch_major(y) if batch_major_out else y), x2, False
    from .kernels.group_mma import group_fwd

    x_t = x2.t().contiguous()
    if batch_major_out:  # yT (n, B) storage, returned as its (B, n) view
        out = torch.empty(n, batch, dtype=x2.dtype, device=x2.device).t()
    else:
        out = torch.empty(batch, n, dtype=x2.dtype, device=x2.device)
    bias = bias.contiguous() if bias is not None else None
    group_fwd(x_t, values, indices, bias, out, x_batch_major=True, tf32=tf32)  # out: any strides
    return out, x_t, True


def _backward(grad2, x_saved, transposed, values, indices, need_x, need_values, pattern, dx_mode, tf32):
    in_features = x_saved.shape[0] if transposed else x_saved.shape[1]
    batch = grad2.shape[0]
    gx = gv = x_saved.new_empty(0)
    if 0 in (batch, *values.shape):  # zeros where asked for, else the empty placeholder
        return (grad2.new_zeros(batch, in_features) if need_x else gx,
                values.new_zeros(values.shape) if need_values else gv)
    pattern.check_range(indices)
    if backend_for(grad2.device) == "torch":
        x2 = x_saved.t() if transposed else x_saved
        if need_x:
            gx = torch_dx(grad2, values, indices, in_features)
        if need_values:
            gv = torch_dw(grad2, x2, indices, values.dtype)
        return gx, gv
    from .kernels.group_mma import group_dw, group_dx

    if need_x:
        atomic = dx_mode == "atomic"
        gx = group_dx(grad2, values, indices, in_features, None if atomic else pattern.transposed(indices),
                      atomic=atomic, tf32=tf32)
    if need_values:
        x_t = x_saved if transposed else x_saved.t().contiguous()
        gv = torch.empty(values.shape, dtype=values.dtype, device=values.device)
        group_dw(x_t, grad2, indices, gv, tf32=tf32)
    return gx, gv


def _grad_bias(grad2, dtype):
    return grad2.sum(0, dtype=torch.float32).to(dtype)


class _GroupMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, values, indices, bias, pattern, dx_mode, tf32, batch_major_out):
        y, x_saved, transposed = _forward(x2, values, indices, bias, pattern, tf32, batch_major_out)
        ctx.save_for_backward(x_saved, values, indices)
        ctx.transposed, ctx.pattern, ctx.dx_mode, ctx.tf32 = transposed, pattern, dx_mode, tf32
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x_saved, values, indices = ctx.saved_tensors
        need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = kernel_layout(grad)
        gx, gv = _backward(grad, x_saved, ctx.transposed, values, indices, need_x, need_values, ctx.pattern,
                           ctx.dx_mode, ctx.tf32)
        gb = _grad_bias(grad, grad.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return (gx if need_x else None), (gv if need_values else None), None, gb, None, None, None, None


# -- torch.library registration (what torch.compile traces) ----------------------------------
@torch.library.custom_op("tritonsparse::group_condensed_matmul", mutates_args=())
def _group_op(x2: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, bias: torch.Tensor | None,
              dx_mode: str, tf32: bool) -> torch.Tensor:
    return _forward(x2, values, indices, bias, pattern_for(indices, x2.shape[1]), tf32)[0].contiguous()


@_group_op.register_fake
def _(x2, values, indices, bias, dx_mode, tf32):
    return x2.new_empty(x2.shape[0], values.shape[0])


@torch.library.custom_op("tritonsparse::group_condensed_matmul_backward", mutates_args=())
def _group_backward_op(grad2: torch.Tensor, x2: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                       need_x: bool, need_values: bool, dx_mode: str, tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pattern = pattern_for(indices, x2.shape[1])
    return _backward(grad2.contiguous(), x2, False, values, indices, need_x, need_values, pattern, dx_mode, tf32)


@_group_backward_op.register_fake
def _(grad2, x2, values, indices, need_x, need_values, dx_mode, tf32):
    gx = x2.new_empty(x2.shape) if need_x else x2.new_empty(0)
    gv = values.new_empty(values.shape) if need_values else x2.new_empty(0)
    return gx, gv


def _setup_context(ctx, inputs, output):
    x2, values, indices, bias, dx_mode, tf32 = inputs
    ctx.save_for_backward(x2, values, indices)
    ctx.has_bias, ctx.dx_mode, ctx.tf32 = bias is not None, dx_mode, tf32


def _op_backward(ctx, grad):
    x2, values, indices = ctx.saved_tensors
    need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gv = torch.ops.tritonsparse.group_condensed_matmul_backward(grad, x2, values, indices, need_x, need_values,
                                                                     ctx.dx_mode, ctx.tf32)
    gb = _grad_bias(grad, x2.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return (gx if need_x else None), (gv if need_values else None), None, gb, None, None


_group_op.register_autograd(_op_backward, setup_context=_setup_context)


# -- public API -------------------------------------------------------------------------------
def _validate(x, values, indices, bias, dx_mode, tf32, batch_major_out=False):
    check_tensor("x", x, FLOAT_DTYPES)
    check_tensor("values", values, FLOAT_DTYPES, ndim=2)
    check_tensor("indices", indices, INDEX_DTYPES, ndim=2)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., in_features)")
    group_size_of(values, indices)
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != values.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries but values has {values.shape[0]} rows (out_features)")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but x has dtype {x.dtype}; they must match")
    check_same_device(x=x, values=values, indices=indices, bias=bias)
    if values.dtype != x.dtype:
        raise TypeError(f"values has dtype {values.dtype} but x has dtype {x.dtype}; they must match")
    if values.shape[1] and values.stride(1) != 1:
        raise ValueError(f"values must have unit stride along the fan-in (got strides {values.stride()}); "
                         "a column slice of padded storage, values_storage[:, :K], is fine")
    if indices.shape[1] and indices.stride(1) != 1:
        raise ValueError(f"indices must have unit stride along the fan-in (got strides {indices.stride()})")
    if dx_mode not in DX_MODES:
        raise ValueError(f"dx_mode must be one of {DX_MODES}, got {dx_mode!r}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    if not isinstance(batch_major_out, bool):
        raise TypeError(f"batch_major_out must be a bool, got {type(batch_major_out).__name__}")
    if indices.dtype == torch.int16 and x.shape[-1] > torch.iinfo(torch.int16).max + 1:
        raise TypeError(f"indices is int16 but x has in_features={x.shape[-1]} > 32768; use int32 indices")


def group_condensed_matmul(x, values, indices, bias=None, *, dx_mode: str = "deterministic", tf32: bool = False,
                           pattern: Pattern | None = None, batch_major_out: bool = False):
    """Product of ``x`` with a group-shared constant fan-in weight.

    ``y[..., j] = sum_k values[j, k] * x[..., indices[j // G, k]] + bias[j]``,
    ``G = values.shape[0] / indices.shape[0]``.

    Args:
        x: (..., in_features), fp32, fp16 or bf16.
        values: (n, K), x's dtype, unit stride along K (a ``[:, :K]`` view of storage
            padded to a multiple of 16 is the intended layout: 16-byte aligned rows).
        indices: (n/G, K) int16/int32 columns in [0, in_features), unit stride along K.
        bias: optional (n,).
        dx_mode: ``"deterministic"`` (default: a per-(group, slot) workspace reduced per
            column in a fixed order) or ``"atomic"`` (fp32 atomics into dX: faster on a
            GPU, summation order varies run to run). The CPU path is deterministic.
        tf32: run fp32 operands on tensor cores in TF32 (10-bit mantissa products,
            fp32 accumulation). Default False: IEEE fp32 products. No effect on fp16/bf16.
        pattern: the owner's :class:`~tritonsparse._structure.Pattern` of ``indices``
            (None: the one kept for this indices tensor).
        batch_major_out: return y as a view of batch-major (n, B) storage (``y.t()`` is
            contiguous for 2-D x; the kernel writes yT). Same values, other strides. An x
            in that layout is gathered from in place, so a following group op (after
            elementwise ops, which keep the layout) needs no transpose of its input; any
            other x is transposed once per call. Ignored (row-major y) under
            ``torch.compile``.

    Returns:
        (..., n) in x's dtype, differentiable in x, values and bias (accumulated in fp32).

    Raises:
        ValueError/TypeError naming the argument: n not a multiple of indices' rows, fan-ins
        that differ, an index outside [0, in_features), a strided fan-in, a bad dx_mode.
    """
    if isinstance(x, torch.Tensor) and torch.amp.is_autocast_available(x.device.type) \
            and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return group_condensed_matmul(x, values, indices, bias, dx_mode=dx_mode, tf32=tf32, pattern=pattern,
                                          batch_major_out=batch_major_out)
    _validate(x, values, indices, bias, dx_mode, tf32, batch_major_out)
    lead, in_features = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(lead.numel(), in_features)
    symbolic = torch.compiler.is_compiling() or is_symbolic(x2) or is_symbolic(values) or is_symbolic(indices)
    if symbolic:
        y = torch.ops.tritonsparse.group_condensed_matmul(x2, values, indices, bias, dx_mode, tf32)
    else:
        if pattern is None:
            pattern = pattern_for(indices, in_features)
        elif pattern.in_features != in_features:
            raise ValueError(f"pattern describes in_features={pattern.in_features} but x has {in_features}")
        y = _GroupMatmul.apply(x2, values, indices, bias, pattern, dx_mode, tf32, batch_major_out)
    return y.reshape(*lead, values.shape[0])

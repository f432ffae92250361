"""The public op ``condensed_matmul``: validation, backend dispatch and autograd.

Eager calls go through a ``torch.autograd.Function`` (least Python overhead). The same
implementation is registered as ``torch.ops.tritonsparse.condensed_matmul`` with
``torch.library`` (autograd and fake-tensor rules included), which is what runs while
``torch.compile`` traces, so compiled models keep the kernels.
"""
from __future__ import annotations

import torch

from . import cpu
from ._cache import memo_of
from ._layout import as_batch_major, is_batch_major, kernel_layout
from ._structure import Pattern, pattern_for
from ._triton import backend_for
from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor, is_symbolic


# -- implementations on 2-D inputs (x2: (B, in_features)) ----------------------------------
def _batch_major(t):
    """(B, m) -> (m, B_pad): the batch made contiguous for the gathers. Past batch 16 the
    batch is zero-padded to a multiple of 16, so the row stride and the batch bound are
    multiples of 16: Triton then issues 128-bit gathers (one per 4 fp32 columns; checked
    in the PTX) instead of scalar loads. The padded columns are zero, so they add nothing."""
    batch, m = t.shape
    padded = batch if batch <= 16 or batch % 16 == 0 else (batch + 15) // 16 * 16
    if padded == batch:
        return t.t().contiguous()
    out = t.new_empty(m, padded)
    out[:, :batch].copy_(t.t())
    out[:, batch:].zero_()
    return out


def _empty_product(batch, n, K) -> bool:
    """Nothing to gather (no kernel is launched): the output is the bias alone, or zero."""
    return batch == 0 or n == 0 or K == 0


def _forward(x2, values, indices, bias, pattern: Pattern, batch_major_out: bool = False):
    """Returns ``(y, x_saved, transposed)``: what the backward needs of x is x2 itself on the
    torch path, and its batch-contiguous transpose (in_features, B) on the Triton path, which
    the forward builds anyway, so the backward does not transpose x again. When x2 is
    already batch-major (a (B, in) view of (in, B) storage, as ``batch_major_out`` leaves
    y), that transpose is x2's own storage: no copy. ``batch_major_out``: y is a (B, n)
    view of (n, B) storage (the kernel writes it so; other paths re-lay it out).

    The indices are range-checked here, on every backend and also inside compiled graphs
    (``pattern.check_range``: every call for CPU tensors, once per tensor version on CUDA),
    so no path reads outside x."""
    pattern.check_range(indices)
    batch, (n, k) = x2.shape[0], values.shape
    if _empty_product(batch, n, k):
        y = x2.new_zeros(batch, n)
        y = y if bias is None else y + bias
        return (as_batch_major(y) if batch_major_out else y), x2, False
    if backend_for(x2.device) == "torch":
        y = cpu.condensed_fwd(x2, values, indices, bias)
        return (as_batch_major(y) if batch_major_out else y), x2, False
    from .kernels.condensed_fwd import condensed_fwd

    x_t = _batch_major(x2)
    if batch_major_out:  # yT storage (n, B_pad), written through its (B_pad, n) view
        out = torch.empty(n, x_t.shape[1], dtype=x2.dtype, device=x2.device).t()
    else:
        out = torch.empty(x_t.shape[1], n, dtype=x2.dtype, device=x2.device)
    bias = bias.contiguous() if bias is not None else None  # the kernels read the bias as contiguous
    return condensed_fwd(x_t, values, indices, bias, out)[:batch], x_t, True


def _backward(grad2, x_saved, transposed, values, indices, need_x: bool, need_values: bool, pattern: Pattern | None = None,
              dx_batch_major: bool = False):
    """(dX, dValues) with dX of shape (B, in_features); an entry not needed is an empty tensor.
    ``grad2`` may be row-major or batch-major (then the kernels read its storage in place);
    ``dx_batch_major``: write dX as a view of (in_features, B) storage, the layout x came in."""
    in_features = x_saved.shape[0] if transposed else x_saved.shape[1]
    pattern = pattern if pattern is not None else pattern_for(indices, in_features)
    batch = grad2.shape[0]
    grad_x = grad_values = x_saved.new_empty(0)
    if _empty_product(batch, *values.shape):
        if need_x:
            grad_x = grad2.new_zeros(batch, in_features)
        if need_values:
            grad_values = values.new_zeros(values.shape)
        return grad_x, grad_values
    pattern.check_range(indices)  # the indices may have been written since the forward
    if backend_for(x_saved.device) == "torch":
        grad2 = grad2.contiguous()
        x2 = x_saved.t() if transposed else x_saved
        if need_x:
            grad_x = cpu.condensed_dx(grad2, values, pattern.transposed(indices), in_features)
        if need_values:
            grad_values = cpu.condensed_dw(grad2, x2, indices, values.dtype)
        return grad_x, grad_values
    from .kernels.condensed_dw import condensed_dw
    from .kernels.csr_gather import csr_gather

    grad_t = _batch_major(grad2)  # (n, B_pad): the batch is contiguous for both gathers (free if dY is batch-major)
    if need_x:
        crow, rows, perm = pattern.transposed(indices)
        if dx_batch_major:  # x came batch-major: so does dX, (in, B_pad) storage through its (B_pad, in) view
            grad_x = torch.empty(in_features, grad_t.shape[1], dtype=grad2.dtype, device=grad2.device).t()
        else:
            grad_x = torch.empty(grad_t.shape[1], in_features, dtype=grad2.dtype, device=grad2.device)
        if values.is_contiguous():  # the kernel reads values[perm[p]]: no permuted copy per call
            grad_x = csr_gather(grad_t, crow, rows, values.reshape(-1), grad_x, val_perm=_perm32(perm))[:batch]
        else:
            grad_x = csr_gather(grad_t, crow, rows, values.reshape(-1).index_select(0, perm), grad_x)[:batch]
    if need_values:
        x_t = x_saved if transposed else _batch_major(x_saved)
        grad_values = torch.empty(values.shape, dtype=values.dtype, device=values.device)
        condensed_dw(x_t, grad_t, indices, grad_values)
    return grad_x, grad_values


def _perm32(perm):
    """The CSC permutation of a pattern as int32 when its positions fit (half the bytes the
    dX kernel loads per nonzero), made once per transposed structure (kept in its memo)."""
    if perm.dtype == torch.int32 or perm.numel() >= 2**31 - 1:
        return perm
    memo = memo_of(perm)
    got = memo.get("perm32")
    if got is None:
        got = memo["perm32"] = perm.to(torch.int32)
    return got


def _grad_bias(grad2, dtype):
    return grad2.sum(0, dtype=torch.float32).to(dtype)


class _CondensedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, values, indices, bias, pattern, batch_major_out):
        y, x_saved, transposed = _forward(x2, values, indices, bias, pattern, batch_major_out)
        ctx.save_for_backward(x_saved, values, indices)
        ctx.transposed, ctx.pattern = transposed, pattern
        ctx.dx_batch_major = transposed and is_batch_major(x2)  # dX in the layout x came in
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x_saved, values, indices = ctx.saved_tensors
        need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = kernel_layout(grad)
        gx, gv = _backward(grad, x_saved, ctx.transposed, values, indices, need_x, need_values, ctx.pattern,
                           ctx.dx_batch_major)
        gb = _grad_bias(grad, grad.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return (gx if need_x else None), (gv if need_values else None), None, gb, None, None


# -- torch.library registration (used while torch.compile traces) --------------------------
@torch.library.custom_op("tritonsparse::condensed_matmul", mutates_args=())
def _condensed_matmul_op(x2: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    pattern = pattern_for(indices, x2.shape[1])
    return _forward(x2, values, indices, bias, pattern)[0].contiguous()  # the fake rule promises row-major


@_condensed_matmul_op.register_fake
def _(x2, values, indices, bias):
    return x2.new_empty(x2.shape[0], values.shape[0])


@torch.library.custom_op("tritonsparse::condensed_matmul_backward", mutates_args=())
def _condensed_matmul_backward_op(
    grad2: torch.Tensor, x2: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, need_x: bool, need_values: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad2.contiguous(), x2, False, values, indices, need_x, need_values)


@_condensed_matmul_backward_op.register_fake
def _(grad2, x2, values, indices, need_x, need_values):
    gx = x2.new_empty(x2.shape) if need_x else x2.new_empty(0)
    gv = values.new_empty(values.shape) if need_values else x2.new_empty(0)
    return gx, gv


def _setup_context(ctx, inputs, output):
    x2, values, indices, bias = inputs
    ctx.save_for_backward(x2, values, indices)
    ctx.has_bias = bias is not None


def _op_backward(ctx, grad):
    x2, values, indices = ctx.saved_tensors
    need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gv = torch.ops.tritonsparse.condensed_matmul_backward(grad, x2, values, indices, need_x, need_values)
    gb = _grad_bias(grad, x2.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return (gx if need_x else None), (gv if need_values else None), None, gb


_condensed_matmul_op.register_autograd(_op_backward, setup_context=_setup_context)


# -- public API ----------------------------------------------------------------------------
def _validate(x, values, indices, bias):
    check_tensor("x", x, FLOAT_DTYPES)
    check_tensor("values", values, FLOAT_DTYPES, ndim=2)
    check_tensor("indices", indices, INDEX_DTYPES, ndim=2)
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, ndim=1)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., in_features)")
    if values.shape != indices.shape:
        raise ValueError(f"values has shape {tuple(values.shape)} but indices has shape {tuple(indices.shape)}; they must match")
    if bias is not None and bias.shape[0] != values.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} entries but values has {values.shape[0]} rows (out_features)")
    check_same_device(x=x, values=values, indices=indices, bias=bias)
    if values.dtype != x.dtype:
        raise TypeError(f"values has dtype {values.dtype} but x has dtype {x.dtype}; they must match")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but x has dtype {x.dtype}; they must match")
    in_features = x.shape[-1]
    if indices.dtype == torch.int16 and in_features > torch.iinfo(torch.int16).max + 1:
        raise TypeError(f"indices is int16 but x has in_features={in_features} > 32768; use int32 indices")


def condensed_matmul(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, bias: torch.Tensor | None = None,
                     *, batch_major_out: bool = False) -> torch.Tensor:
    """Product of ``x`` with a constant fan-in sparse weight in condensed form.

    ``y[..., j] = sum_k values[j, k] * x[..., indices[j, k]] + bias[j]``

    Args:
        x: (..., in_features) input, fp32, fp16 or bf16; any number of leading dims.
        values: (n, K) nonzero weights, same dtype as ``x``. Accumulation is in fp32.
        indices: (n, K) int16 or int32 column indices in [0, in_features). Not
            differentiable. Repeated indices in a row add up. An (n/G, K) array means
            G consecutive rows share one index set (group-shared format, tensor-core
            kernels): see :func:`tritonsparse.group_ops.group_condensed_matmul`.
        bias: optional (n,) bias, same dtype as ``x``.
        batch_major_out: return y as a view of batch-major storage (for a 2-D x, ``y.t()``
            is contiguous: the kernel writes yT). The Triton kernels read x through a
            batch-major copy; an x laid out so (a previous layer's ``batch_major_out``,
            with elementwise ops between, which keep the layout) is read in place, and its
            gradient comes back in the same layout. One operator and a pass over the
            activations fewer per layer in a chain. Same values as the default row-major y.

    Returns:
        (..., n) tensor of ``x``'s dtype. Differentiable with respect to ``x``, ``values``
        and ``bias``. CUDA tensors run the Triton kernels; CPU tensors run a
        ``torch.sparse`` path (or the Triton interpreter when ``TRITON_INTERPRET=1``).
        Under ``torch.autocast`` the inputs are cast to the autocast dtype first.
        Empty shapes (a batch, n, K or in_features of 0) give the empty, bias-only or
        zero result without launching a kernel; meta and fake tensors give the shape.

    Raises:
        ValueError/TypeError naming the argument. An index outside [0, in_features) is
        a ``ValueError``: CPU tensors are checked on every call (one pass over the
        indices), CUDA tensors once per version of the ``indices`` tensor (a write
        that bypasses the version counter is left to the kernels' index mask). The
        transposed structure of the backward is kept
        per ``indices`` tensor and rebuilt when it changes (see
        :mod:`tritonsparse._structure`).

    Example:
        >>> x = torch.randn(8, 3072)
        >>> indices = torch.stack([torch.randperm(3072)[:307] for _ in range(768)]).int()
        >>> values = torch.randn(768, 307)
        >>> condensed_matmul(x, values, indices).shape
        torch.Size([8, 768])
    """
    return _condensed_matmul(x, values, indices, bias, batch_major_out=batch_major_out)


def _autocast_on(x) -> bool:
    device_type = x.device.type
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _condensed_matmul(x, values, indices, bias=None, check_index_range=True, pattern: Pattern | None = None,
                      batch_major_out: bool = False):
    """``condensed_matmul`` for the layers: ``pattern`` is the owner's
    :class:`~tritonsparse._structure.Pattern` of ``indices`` (None: the one kept for
    this indices tensor). ``check_index_range`` is accepted for older callers and
    ignored: the pattern decides when the range is checked, and it is never skipped."""
    del check_index_range
    if not isinstance(batch_major_out, bool):
        raise TypeError(f"batch_major_out must be a bool, got {type(batch_major_out).__name__}")
    if _grouped(values, indices):  # indices (n/G, K) with G > 1: the tensor-core kernels
        from .group_ops import group_condensed_matmul

        return group_condensed_matmul(x, values, indices, bias, pattern=pattern, batch_major_out=batch_major_out)
    autocast = isinstance(x, torch.Tensor) and _autocast_on(x)
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _validate(x, values, indices, bias)
    lead, in_features = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, in_features) if in_features != 0 else x.reshape(lead.numel(), 0)
    if torch.compiler.is_compiling():  # the registered op derives what it needs at run time
        pattern = None
    elif pattern is None:
        pattern = pattern_for(indices, in_features)
    elif pattern.in_features != in_features:
        raise ValueError(f"pattern describes in_features={pattern.in_features} but x has {in_features}")
    if autocast:  # the inputs are cast: keep autocast away from the ops inside
        with torch.autocast(x.device.type, enabled=False):
            y = _dispatch(x2, values, indices, bias, pattern, batch_major_out)
    else:
        y = _dispatch(x2, values, indices, bias, pattern, batch_major_out)
    return y.reshape(*lead, values.shape[0])


def _grouped(values, indices) -> bool:
    """True for the group-shared format: 2-D ``values`` (n, K) and ``indices`` (n/G, K)
    with fewer index rows than value rows (G > 1)."""
    return (isinstance(values, torch.Tensor) and isinstance(indices, torch.Tensor) and values.dim() == 2
            and indices.dim() == 2 and indices.shape[0] != values.shape[0] and indices.shape[0] > 0)


def _dispatch(x2, values, indices, bias, pattern, batch_major_out=False):
    if torch.compiler.is_compiling() or is_symbolic(x2) or is_symbolic(values) or is_symbolic(indices):
        y = torch.ops.tritonsparse.condensed_matmul(x2, values, indices, bias)  # its fake rule gives the shape
        return as_batch_major(y) if batch_major_out else y  # the layout promised, by a copy the compiler sees
    return _CondensedMatmul.apply(x2, values, indices, bias, pattern, batch_major_out)

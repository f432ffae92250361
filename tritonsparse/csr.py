"""The public op ``csr_matmul``: a product with a general ``torch.sparse_csr_tensor``
weight, rows of any length. It is the unstructured baseline the condensed kernels are
measured against, and usable for training (gradients for ``x``, ``weight`` and ``bias``).

Backends as for ``condensed_matmul`` (:mod:`tritonsparse._triton`):
  * Triton: the forward and dX are the row-gather kernel
    (:mod:`tritonsparse.kernels.csr_gather`) with a load-balancing plan (rows sorted by
    length, long rows split); dX runs over the transposed (CSC) structure. The weight
    gradient is ``torch.sparse.sampled_addmm`` (cuSPARSE SDDMM), not a Triton kernel.
  * torch: ``torch.sparse.mm`` (MKL on CPU) in fp32, cast back (MKL has no bf16).
The weight's structure (crow, columns) is validated on every call for CPU weights and
once per weight (and version) on CUDA. The index structures derived from a weight (int32
copies, the transpose, the plans) are computed once per CUDA weight and kept while the
weight object is alive and its structure unchanged; on CPU only the transpose of the
backward is kept, while the columns equal those it was built from.
"""
from __future__ import annotations

import warnings

import torch

from ._cache import memo_of
from ._structure import same_content, transpose_structure
from ._triton import backend_for
from ._validate import FLOAT_DTYPES, check_same_device, check_tensor, is_symbolic

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

# -- per-weight cache of derived index structures -------------------------------------------
def _stamp(weight):
    crow, col = weight.crow_indices(), weight.col_indices()
    version = "inference" if weight.is_inference() else weight._version
    return (crow.data_ptr(), col.data_ptr(), col.numel(), tuple(weight.shape), version)


def _derived(weight, name, compute, on_cpu=False):
    """``compute()`` memoised per (weight object, name) while its structure is unchanged
    (same index arrays and version). Writes into ``weight.col_indices()`` bypass that
    stamp, so CPU weights are memoised only where the caller re-checks the content
    (``on_cpu=True``, the transposed structure); the CUDA kernels mask what they read."""
    if weight.device.type != "cuda" and not on_cpu:
        return compute()
    memo = memo_of(weight)
    stamp = _stamp(weight)
    if memo.get("stamp") != stamp:
        memo.clear()
        memo["stamp"] = stamp
    if name not in memo:
        memo[name] = compute()
    return memo[name]


def _check_structure(weight):
    """``ValueError`` unless ``weight`` is a well-formed CSR matrix: one value per
    column index; crow of length out_features + 1, starting at 0, non-decreasing, ending
    at nnz; columns in [0, in_features). ``torch.sparse_csr_tensor(..., check_invariants=False)`` (the
    default) accepts anything, and MKL/the kernels would read out of bounds. CPU
    weights are checked on every call (O(nnz + out_features)); CUDA ones once per stamp."""
    if is_symbolic(weight):
        return

    def check():
        out_features, in_features = weight.shape
        crow, col = weight.crow_indices(), weight.col_indices()
        nnz = col.numel()
        vals = weight.values()
        if col.dim() != 1 or vals.dim() != 1 or vals.numel() != nnz:
            raise ValueError(f"weight.values() has shape {tuple(vals.shape)} and weight.col_indices() {tuple(col.shape)}; "
                             "both must be 1-D with one entry per nonzero")
        if crow.dim() != 1 or crow.numel() != out_features + 1:
            raise ValueError(f"weight.crow_indices() has shape {tuple(crow.shape)}; expected ({out_features + 1},)")
        if int(crow[0]) != 0 or int(crow[-1]) != nnz or (out_features and bool((crow.diff() < 0).any())):
            raise ValueError(f"weight.crow_indices() must start at 0, never decrease and end at nnz={nnz}")
        if nnz:
            ext = torch.aminmax(col)
            lo, hi = int(ext.min), int(ext.max)
            if lo < 0 or hi >= in_features:
                bad = lo if lo < 0 else hi
                raise ValueError(f"weight.col_indices() holds {bad}, out of range for in_features={in_features}")
        return True

    if weight.device.type != "cuda":
        check()
    else:
        _derived(weight, "checked", check)


def _index_dtype(nnz, n):
    return torch.int32 if max(nnz, n) < 2**31 - 1 else torch.int64


def _structure(weight):
    """(crow, col) in the smallest index dtype."""

    def compute():
        dt = _index_dtype(weight._nnz(), weight.shape[1])
        return weight.crow_indices().to(dt).contiguous(), weight.col_indices().to(dt).contiguous()

    return _derived(weight, "structure", compute)


def _transposed(weight):
    """(crow_t, rows_t, perm): column i of the weight holds the nonzeros ``perm[crow_t[i]:
    crow_t[i+1]]``, which sit in rows ``rows_t[...]`` (the CSC structure, for dX). On
    CPU it is reused only while the column indices equal those it was built from."""
    col_now = weight.col_indices()
    cpu = col_now.device.type != "cuda"

    def compute():
        crow, col = _structure(weight)
        crow_t, _, perm = transpose_structure(col.view(-1, 1), weight.shape[1])
        lengths = crow.long().diff()
        row_of = torch.repeat_interleave(torch.arange(weight.shape[0], device=crow.device), lengths)
        return (crow_t, row_of[perm].to(crow_t.dtype), perm), (col_now.clone() if cpu else None)

    result, built_from = _derived(weight, "transposed", compute, on_cpu=True)
    if cpu and not same_content(col_now, built_from):  # written in place behind the stamp
        memo_of(weight).clear()
        result, built_from = _derived(weight, "transposed", compute, on_cpu=True)
    return result


def _plans(weight):
    """Load-balancing plans of the forward (rows) and dX (columns) structures."""
    from .kernels.csr_gather import make_plan

    def compute():
        return make_plan(_structure(weight)[0]), make_plan(_transposed(weight)[0])

    return _derived(weight, "plans", compute)


# -- implementations on 2-D inputs (x2: (B, in_features)) ----------------------------------
def _csr(crow, col, values, shape):
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _forward(x2, weight, bias):
    if x2.shape[0] == 0 or weight._nnz() == 0:  # nothing to gather: no kernel launch
        y = x2.new_zeros(x2.shape[0], weight.shape[0])
        return y if bias is None else y + bias
    if backend_for(x2.device) == "torch":
        y = torch.sparse.mm(weight.float(), x2.t().float()).t()
        if bias is not None:
            y = y + bias.float()
        return y.to(x2.dtype).contiguous()
    from .kernels.csr_gather import csr_gather

    crow, col = _structure(weight)
    out = torch.empty(x2.shape[0], weight.shape[0], dtype=x2.dtype, device=x2.device)
    bias = bias.contiguous() if bias is not None else None  # the kernel reads the bias as contiguous
    return csr_gather(x2.t().contiguous(), crow, col, weight.values().contiguous(), out, bias, plan=_plans(weight)[0])


def _grad_x(grad2, weight):
    """dX = grad2 @ W, over the transposed structure."""
    if grad2.shape[0] == 0 or weight._nnz() == 0:
        return grad2.new_zeros(grad2.shape[0], weight.shape[1])
    crow_t, rows_t, perm = _transposed(weight)
    vals_t = weight.values()[perm]
    shape_t = (weight.shape[1], weight.shape[0])
    if backend_for(grad2.device) == "torch":
        wt = _csr(crow_t.long(), rows_t.long(), vals_t.float(), shape_t)
        return torch.sparse.mm(wt, grad2.t().float()).t().to(grad2.dtype).contiguous()
    from .kernels.csr_gather import csr_gather

    out = torch.empty(grad2.shape[0], weight.shape[1], dtype=grad2.dtype, device=grad2.device)
    return csr_gather(grad2.t().contiguous(), crow_t, rows_t, vals_t.contiguous(), out, plan=_plans(weight)[1])


def _grad_weight(grad2, x2, weight):
    """dW = (grad2ᵀ x2) sampled at the pattern of W, as a CSR tensor like ``weight``
    (``torch.sparse.sampled_addmm`` in fp32: no low-precision SDDMM on CPU)."""
    crow, col = weight.crow_indices(), weight.col_indices()
    pattern = _csr(crow, col, torch.zeros(col.shape[0], dtype=torch.float32, device=col.device), tuple(weight.shape))
    dw = torch.sparse.sampled_addmm(pattern, grad2.t().float(), x2.float(), beta=0.0)
    return _csr(crow, col, dw.values().to(weight.dtype), tuple(weight.shape))


class _CSRMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias):
        ctx.save_for_backward(x2)
        ctx.weight = weight  # the same object: its cached structures serve the backward
        ctx.has_bias = bias is not None
        return _forward(x2, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (x2,) = ctx.saved_tensors
        weight = ctx.weight
        _check_structure(weight)  # the weight may have been written since the forward
        grad = grad.contiguous()
        gx = _grad_x(grad, weight) if ctx.needs_input_grad[0] else None
        gw = _grad_weight(grad, x2, weight) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0, dtype=torch.float32).to(x2.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


# -- public API ----------------------------------------------------------------------------
def _validate(x, weight, bias):
    check_tensor("x", x, FLOAT_DTYPES)
    if not isinstance(weight, torch.Tensor) or weight.layout != torch.sparse_csr:
        got = weight.layout if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a torch.sparse_csr_tensor (layout torch.sparse_csr), got {got}; "
                        "convert with weight.to_sparse_csr()")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight has dtype {weight.dtype}; supported: float32, float16, bfloat16")
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, ndim=1)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., in_features)")
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension but weight has shape "
                         f"{tuple(weight.shape)} (out_features, in_features={in_features})")
    if bias is not None and bias.shape[0] != out_features:
        raise ValueError(f"bias has {bias.shape[0]} entries but weight has out_features={out_features}")
    check_same_device(x=x, weight=weight, bias=bias)
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has dtype {x.dtype}; they must match")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but x has dtype {x.dtype}; they must match")


def csr_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with a sparse CSR weight whose rows may have any length.

    Args:
        x: (..., in_features) input, fp32, fp16 or bf16; any number of leading dims.
        weight: ``torch.sparse_csr_tensor`` of shape (out_features, in_features), same
            dtype as ``x``. Accumulation is in fp32.
        bias: optional (out_features,) bias, same dtype as ``x``.

    Returns:
        (..., out_features) tensor of ``x``'s dtype. Differentiable with respect to ``x``
        (dX runs over the transposed structure, built once per weight), ``bias``, and
        ``weight`` (a CSR gradient with the weight's pattern). CUDA tensors run the
        Triton row-gather kernel, load-balanced (rows sorted by length, long rows split);
        CPU tensors run ``torch.sparse.mm`` (or the Triton interpreter when
        ``TRITON_INTERPRET=1``). ``TRITONSPARSE_BACKEND=torch|triton`` forces one.

    Example:
        >>> w = (torch.randn(768, 3072) * (torch.rand(768, 3072) < 0.1)).to_sparse_csr()
        >>> csr_matmul(torch.randn(8, 3072), w).shape
        torch.Size([8, 768])
    """
    if (isinstance(x, torch.Tensor) and torch.amp.is_autocast_available(x.device.type)
            and torch.is_autocast_enabled(x.device.type)):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _validate(x, weight, bias)
    _check_structure(weight)
    lead, in_features = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, in_features) if in_features != 0 else x.reshape(lead.numel(), 0)
    with torch.autocast(x.device.type, enabled=False):
        y = _CSRMatmul.apply(x2, weight, bias)
    return y.reshape(*lead, weight.shape[0])

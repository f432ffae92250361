"""Batch-major layouts shared by the per-row and group ops.

The gather kernels read x and dY with the batch contiguous: a (B, m) tensor is
*batch-major* when it is a view of (m, B) storage (``t.t()`` contiguous), the layout that
``batch_major_out=True`` gives y, so a following op reads it in place.
"""
from __future__ import annotations


def as_batch_major(y):
    """The same values as a (B, n) view of (n, B) storage."""
    return y.t().contiguous().t()


def is_batch_major(t) -> bool:
    """True for a (B, m) view of (m, B) storage with B > 1."""
    return t.dim() == 2 and t.shape[0] > 1 and t.stride(0) == 1 and t.t().is_contiguous()


def kernel_layout(grad):
    """dY as the kernels take it: row-major or batch-major kept as is (the dX and dValues
    kernels read either), anything else (an expanded or sliced gradient) made contiguous."""
    return grad if grad.is_contiguous() or is_batch_major(grad) else grad.contiguous()

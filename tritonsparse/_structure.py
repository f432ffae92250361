"""Index structures derived from a condensed pattern, and who keeps them.

A condensed pattern is its ``indices`` (n, K) array for ``in_features`` columns. Two
things are derived from it: the index-range check, and the transposed (CSC) structure
that dX gathers over. :class:`Pattern` keeps both for one pattern.

Ownership (see the README, ``condensed_matmul``):

* A layer (``CondensedLinear``/``CondensedConv2d``) or a ``CondensedWeight`` owns its
  ``Pattern``; ``set_pattern``, ``load_state_dict`` and device moves build a new one.
* The functional ``condensed_matmul(x, values, indices)`` has no owner to ask, so it
  keeps one ``Pattern`` per live indices tensor (:func:`pattern_for`).

Either way a Pattern re-checks the indices before its structures are used:

* CPU tensors (the torch path and the interpreter): the range is checked on every
  call (one ``aminmax`` over n·K indices); the transposed structure is reused only
  while the indices equal the snapshot it was built from (an exact comparison). So no
  write to the indices, not even through ``.data``, a numpy alias or DLPack (which do
  not bump the version counter), can make MKL or the interpreter read outside ``x``.
* CUDA tensors: a check syncs with the host, so both are redone only when the tensor's
  version counter moves (ordinary in-place writes) or the owner starts a new Pattern
  (``set_pattern``, ``load_state_dict``). A write that bypasses both is left to the
  kernels' mask on indices >= in_features.

Data flows one way: this module knows nothing of ops, formats or layers.
"""
from __future__ import annotations

import torch

from ._cache import memo_of
from ._validate import check_indices_in_range, is_symbolic


def transpose_structure(indices: torch.Tensor, in_features: int):
    """Column-major (CSC) view of a condensed pattern, for dX = dY @ W.

    Returns ``(crow, rows, perm)``: input feature ``i`` is read by the flattened
    nonzeros ``perm[crow[i]:crow[i+1]]`` (stable order), which sit in rows
    ``rows[crow[i]:crow[i+1]]``. The indices must lie in [0, in_features) (callers
    check first). Computed on every call: :class:`Pattern` keeps the result.
    """
    flat = indices.reshape(-1).long()
    nnz = flat.numel()
    k = indices.shape[1] if indices.dim() == 2 else 1
    perm = torch.argsort(flat, stable=True)
    crow = torch.zeros(in_features + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.cumsum(torch.bincount(flat, minlength=in_features), 0)
    small = torch.int32 if nnz < 2**31 - 1 else torch.int64
    rows = torch.div(perm, max(k, 1), rounding_mode="floor").to(small)
    return crow.to(small), rows, perm


def follows_cuda_rule(t: torch.Tensor) -> bool:
    """Whether a Pattern re-checks ``t`` only when its stamp moves (the CUDA rule) rather
    than on every call (the CPU rule): true for CUDA tensors. The SASS report replays the
    library on CPU tensors to model what it runs on a GPU, and answers true there."""
    return t.device.type == "cuda"


def _stamp(t: torch.Tensor):
    """What identifies an unchanged CUDA tensor without reading it. Inference tensors
    carry no version counter; they can only be written inside inference mode."""
    version = "inference" if t.is_inference() else t._version
    return (t.data_ptr(), version, tuple(t.shape), tuple(t.stride()), t.dtype)


def same_content(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Exact equality of two index arrays, compared as 64-bit words where the bytes
    allow (``torch.equal`` on int16 is several times slower than on int64)."""
    if b is None or a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    a = a.contiguous()
    nbytes = a.numel() * a.element_size()
    for dtype, size in ((torch.int64, 8), (torch.int32, 4)):
        if nbytes % size == 0 and a.element_size() <= size:
            try:
                return torch.equal(a.reshape(-1).view(dtype), b.reshape(-1).view(dtype))
            except RuntimeError:  # storage offset not aligned for the wider view
                break
    return torch.equal(a, b)


class Pattern:
    """The derived structures of a condensed pattern (n, K) for ``in_features``
    columns: its range check and its transposed (CSC) structure.

    Built by the pattern's owner (a layer, a ``CondensedWeight``) whenever the pattern
    is replaced, or by :func:`pattern_for` for the functional op. The methods take the
    indices tensor (a Pattern holds no reference to it, so a memo of Patterns keeps no
    tensor alive); see the module docstring for when they re-check it.
    """

    __slots__ = ("in_features", "_checked", "_transposed", "_built_from")

    def __init__(self, in_features: int):
        self.in_features = int(in_features)
        self._checked = None      # CUDA: the stamp at the last range check
        self._transposed = None   # (crow, rows, perm)
        self._built_from = None   # CPU: a copy of the indices; CUDA: their stamp

    def check_range(self, indices: torch.Tensor, name: str = "indices") -> None:
        """``ValueError`` naming ``name`` if an index is outside [0, in_features).
        CPU: checked on every call; CUDA: once per version of the tensor."""
        if indices.numel() == 0 or is_symbolic(indices):
            return
        if not follows_cuda_rule(indices):
            check_indices_in_range(name, indices, self.in_features)
            return
        stamp = _stamp(indices)
        if stamp != self._checked:
            check_indices_in_range(name, indices, self.in_features)
            self._checked = stamp

    def checked_by_owner(self, indices: torch.Tensor) -> None:
        """Record that the owner has just range-checked ``indices`` (``set_pattern`` does,
        through ``CondensedWeight``): on CUDA the next check is skipped until the tensor
        changes, which saves a host sync per pattern update. CPU checks every call anyway."""
        if follows_cuda_rule(indices) and not is_symbolic(indices):
            self._checked = _stamp(indices)

    def transposed(self, indices: torch.Tensor):
        """``transpose_structure(indices, in_features)``, rebuilt (and range-checked)
        when the indices differ from those it was built from."""
        cuda = follows_cuda_rule(indices)
        if self._transposed is not None:
            fresh = _stamp(indices) == self._built_from if cuda else same_content(indices, self._built_from)
            if fresh:
                return self._transposed
        self.check_range(indices)
        self._transposed = transpose_structure(indices, self.in_features)
        self._built_from = _stamp(indices) if cuda else indices.clone(memory_format=torch.contiguous_format)
        return self._transposed


def pattern_for(indices: torch.Tensor, in_features: int) -> Pattern:
    """The :class:`Pattern` of a bare indices tensor (the functional op's), kept while
    the tensor is alive; one per ``in_features``."""
    memo = memo_of(indices)
    pattern = memo.get(("pattern", in_features))
    if pattern is None:
        pattern = memo[("pattern", in_features)] = Pattern(in_features)
    return pattern

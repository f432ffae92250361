"""The condensed constant fan-in weight format and its conversions.

A constant fan-in weight of shape (out_features, in_features) has exactly K nonzeros in
every *active* row and none in the ablated rows. It is stored as

  values       (n_active, K)   the nonzero weights of the active rows, in row order
  indices      (n_active, K)   their columns (int16 when in_features fits, else int32)
  active_rows  (n_active,)     which rows of the out_features are active (ascending)

A condensed weight *is* a CSR matrix with equal row lengths: ``crow_indices`` is
``arange(0, n*K + 1, K)`` and ``col_indices``/``values`` are the flattened arrays.
"""
from __future__ import annotations

import torch

from ._structure import Pattern, transpose_structure
from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_in_features, check_indices_in_range, check_tensor, is_symbolic
from .ops import _condensed_matmul
from .reference import condensed_to_dense

__all__ = ["CondensedWeight", "default_index_dtype", "scatter_active_rows", "transpose_structure"]


def default_index_dtype(in_features: int) -> torch.dtype:
    """Smallest supported index dtype for ``in_features`` columns (int16 halves the
    index bytes, which matter at small batch where the layer is memory-bound)."""
    return torch.int16 if in_features <= torch.iinfo(torch.int16).max + 1 else torch.int32


class CondensedWeight:
    """A constant fan-in sparse weight in condensed form (see the module docstring).

    Args:
        values: (n_active, K) float tensor.
        indices: (n_active, K) int16/int32 tensor of column indices in [0, in_features).
        active_rows: (n_active,) integer tensor of the active rows, strictly ascending.
            ``None`` means every row is active (n_active == out_features).
        shape: (out_features, in_features).
    """

    def __init__(self, values, indices, active_rows=None, shape=None):
        check_tensor("values", values, FLOAT_DTYPES, ndim=2)
        check_tensor("indices", indices, INDEX_DTYPES, ndim=2)
        if values.shape != indices.shape:
            raise ValueError(f"values has shape {tuple(values.shape)} but indices has shape {tuple(indices.shape)}; they must match")
        if values.device != indices.device:
            raise ValueError(f"values is on {values.device} but indices is on {indices.device}")
        n_active = values.shape[0]
        if shape is None:
            raise ValueError("shape=(out_features, in_features) is required")
        out_features, in_features = (int(s) for s in shape)
        if active_rows is None:
            if n_active != out_features:
                raise ValueError(f"active_rows is None (all rows active) but values has {n_active} rows for out_features={out_features}")
            active_rows = torch.arange(out_features, device=values.device)
        else:
            check_tensor("active_rows", active_rows, (torch.int32, torch.int64), ndim=1)
            active_rows = active_rows.to(device=values.device, dtype=torch.int64)
            if active_rows.numel() != n_active:
                raise ValueError(f"active_rows has {active_rows.numel()} entries but values has {n_active} rows")
            bad = n_active and not is_symbolic(active_rows) and bool(
                active_rows[0] < 0 or active_rows[-1] >= out_features or (active_rows.diff() <= 0).any())
            if bad:
                raise ValueError(f"active_rows must be strictly ascending row numbers in [0, {out_features})")
        check_indices_in_range("indices", indices, in_features)
        self.values = values
        self.indices = indices
        self.active_rows = active_rows
        self.shape = torch.Size((out_features, in_features))
        self._pattern = Pattern(in_features)  # derived structures, owned by this weight

    # -- properties ------------------------------------------------------------------
    @property
    def fan_in(self) -> int:
        """K, the number of nonzeros of every active row."""
        return self.values.shape[1]

    @property
    def n_active(self) -> int:
        return self.values.shape[0]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / max(self.shape[0] * self.shape[1], 1)

    @property
    def all_rows_active(self) -> bool:
        return self.n_active == self.shape[0]

    def __repr__(self):
        return (f"CondensedWeight(shape={tuple(self.shape)}, fan_in={self.fan_in}, n_active={self.n_active}, "
                f"dtype={self.values.dtype}, index_dtype={self.indices.dtype}, device={self.values.device})")

    # -- conversions -----------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, index_dtype: torch.dtype | None = None):
        """Condense a dense weight whose nonzeros (or ``mask``) have constant fan-in.

        Rows with no nonzero become ablated (inactive) rows. Raises ``ValueError``
        naming the first row whose count differs from the others.
        """
        check_tensor("weight", weight, FLOAT_DTYPES, ndim=2)
        if mask is None:
            mask = weight != 0
        else:
            check_tensor("mask", mask, ndim=2)
            if mask.shape != weight.shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)} but weight has shape {tuple(weight.shape)}")
            mask = mask.to(device=weight.device, dtype=torch.bool)
        out_features, in_features = weight.shape
        if index_dtype is None:
            index_dtype = default_index_dtype(in_features)
        if index_dtype not in INDEX_DTYPES:
            raise TypeError(f"index_dtype must be torch.int16 or torch.int32, got {index_dtype}")
        if index_dtype == torch.int16 and in_features > torch.iinfo(torch.int16).max + 1:
            raise ValueError(f"index_dtype=int16 cannot address in_features={in_features}; use torch.int32")
        counts = mask.sum(dim=1)
        active_rows = torch.nonzero(counts > 0).flatten()
        if active_rows.numel() == 0:
            empty = weight.new_zeros(0, 0)
            return cls(empty, torch.zeros(0, 0, dtype=index_dtype, device=weight.device), active_rows, weight.shape)
        k = int(counts[active_rows[0]])
        bad = torch.nonzero((counts != k) & (counts > 0)).flatten()
        if bad.numel():
            r = int(bad[0])
            raise ValueError(
                f"weight is not constant fan-in: row {r} has {int(counts[r])} nonzeros but row "
                f"{int(active_rows[0])} has {k} (ablated rows, with none, are allowed)")
        cols = torch.nonzero(mask[active_rows])[:, 1].view(-1, k)  # ascending within each row
        values = weight[active_rows].gather(1, cols).contiguous()
        return cls(values, cols.to(index_dtype).contiguous(), active_rows, weight.shape)

    def to_dense(self) -> torch.Tensor:
        """The (out_features, in_features) dense weight; ablated rows are zero."""
        dense = self.values.new_zeros(self.shape)
        dense[self.active_rows] = condensed_to_dense(self.values, self.indices, self.shape[1])
        return dense

    def to_csr(self) -> torch.Tensor:
        """A ``torch.sparse_csr_tensor`` of shape (out_features, in_features), columns
        sorted within each row (repeated columns, if any, are kept as separate entries)."""
        cols, order = torch.sort(self.indices.long(), dim=1, stable=True)
        vals = self.values.gather(1, order)
        counts = torch.zeros(self.shape[0], dtype=torch.int64, device=self.values.device)
        counts[self.active_rows] = self.fan_in
        crow = torch.zeros(self.shape[0] + 1, dtype=torch.int64, device=self.values.device)
        crow[1:] = torch.cumsum(counts, 0)
        return torch.sparse_csr_tensor(crow, cols.reshape(-1), vals.reshape(-1), tuple(self.shape), check_invariants=False)

    def to(self, *args, **kwargs) -> "CondensedWeight":
        """Move/cast like ``Tensor.to``; only the values take a new float dtype."""
        values = self.values.to(*args, **kwargs)
        indices = self.indices.to(device=values.device)
        return CondensedWeight(values, indices, self.active_rows.to(values.device), self.shape)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T (+ bias) for x of shape (..., in_features); output (..., out_features).
        The transposed structure of the backward is built once for this weight."""
        check_in_features(x, self.shape[1])
        if self.all_rows_active:
            return _condensed_matmul(x, self.values, self.indices, bias, pattern=self._pattern)
        y_active = _condensed_matmul(x, self.values, self.indices, pattern=self._pattern)
        return scatter_active_rows(y_active, self.active_rows, self.shape[0], bias)


def scatter_active_rows(y_active, active_rows, out_features, bias=None):
    """Place the outputs of the active rows (..., n_active) into (..., out_features);
    ablated rows get the bias alone (or zero)."""
    y = y_active.new_zeros(*y_active.shape[:-1], out_features).index_copy(-1, active_rows, y_active)
    return y if bias is None else y + bias

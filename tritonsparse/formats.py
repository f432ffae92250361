"""The condensed constant fan-in weight format and its conversions.

A constant fan-in weight of shape (out_features, in_features) has exactly K nonzeros in
every *active* row and none in the ablated rows. It is stored as

  values       (n_active, K)   the nonzero weights of the active rows, in row order
  indices      (n_active, K)   their columns (int16 when in_features fits, else int32)
  active_rows  (n_active,)     which rows of the out_features are active (ascending)

A condensed weight *is* a CSR matrix with equal row lengths: ``crow_indices`` is
``arange(0, n*K + 1, K)`` and ``col_indices``/``values`` are the flattened arrays.

Group-shared patterns (G > 1): ``indices`` is (n_active/G, K) and active row ``j`` reads
the columns ``indices[j // G]``: G consecutive active rows share one index set and keep
their own values, so the kernels run a dense (G x K) @ (K x B) product on tensor cores
(:mod:`tritonsparse.group_ops`). ``G = n_active / indices.shape[0]``; G=1 is the per-row
format above. A G > 1 weight keeps ``values`` and ``indices`` as ``[:, :K]`` views of
storage whose rows are padded to a multiple of 16 (zeros; the kernels never read the pads).
"""
from __future__ import annotations

import torch

from ._structure import Pattern, transpose_structure
from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_in_features, check_indices_in_range, check_tensor, is_symbolic
from .group_ops import expand_group_indices, group_size_of
from .ops import _condensed_matmul
from .reference import condensed_to_dense

__all__ = ["CondensedWeight", "default_index_dtype", "pad_fan_in", "scatter_active_rows", "transpose_structure"]

FAN_IN_ALIGN = 16  # group-shared storage pads K to a multiple of this (16-byte rows, MMA-sized chunks)


def pad_fan_in(t: torch.Tensor, multiple: int = FAN_IN_ALIGN) -> torch.Tensor:
    """``t`` (rows, K) as the ``[:, :K]`` view of zero-padded storage whose row stride is
    a multiple of ``multiple``; ``t`` itself when it already is such a view."""
    rows, k = t.shape
    kp = (k + multiple - 1) // multiple * multiple
    if t.stride(1) == 1 and (t.stride(0) % multiple == 0 or rows <= 1) and (k == kp or t.stride(0) >= kp):
        return t
    storage = t.new_zeros(rows, max(kp, multiple))
    storage[:, :k] = t
    return storage[:, :k]


def default_index_dtype(in_features: int) -> torch.dtype:
    """Smallest supported index dtype for ``in_features`` columns (int16 halves the
    index bytes, which matter at small batch where the layer is memory-bound)."""
    return torch.int16 if in_features <= torch.iinfo(torch.int16).max + 1 else torch.int32


class CondensedWeight:
    """A constant fan-in sparse weight in condensed form (see the module docstring).

    Args:
        values: (n_active, K) float tensor.
        indices: (n_active, K) int16/int32 tensor of column indices in [0, in_features),
            or (n_active/G, K) for a group-shared pattern (G consecutive active rows
            share one index row; see the module docstring).
        active_rows: (n_active,) integer tensor of the active rows, strictly ascending.
            ``None`` means every row is active (n_active == out_features).
        shape: (out_features, in_features).
    """

    def __init__(self, values, indices, active_rows=None, shape=None):
        check_tensor("values", values, FLOAT_DTYPES, ndim=2)
        check_tensor("indices", indices, INDEX_DTYPES, ndim=2)
        if values.shape != indices.shape:
            if indices.shape[0] == 0 or values.shape[0] == indices.shape[0]:
                raise ValueError(f"values has shape {tuple(values.shape)} but indices has shape {tuple(indices.shape)}; "
                                 "they must match (or indices be (n_active/G, K) for a group-shared pattern)")
            group_size_of(values, indices)  # ValueError: n_active not a multiple, or fan-ins differ
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
        if values.shape != indices.shape and not (is_symbolic(values) or is_symbolic(indices)):
            values, indices = pad_fan_in(values), pad_fan_in(indices)
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
    def group_size(self) -> int:
        """G, the active rows that share one index row (1: the per-row format)."""
        return self.values.shape[0] // self.indices.shape[0] if self.indices.shape[0] else 1

    @property
    def row_indices(self) -> torch.Tensor:
        """(n_active, K) per-row indices (the group rows expanded for G > 1)."""
        g = self.group_size
        return self.indices if g == 1 else expand_group_indices(self.indices, g)

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
                f"dtype={self.values.dtype}, index_dtype={self.indices.dtype}, device={self.values.device}"
                + (f", group_size={self.group_size})" if self.group_size > 1 else ")"))

    # -- conversions -----------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, index_dtype: torch.dtype | None = None,
                   group_size: int | str | None = None):
        """Condense a dense weight whose nonzeros (or ``mask``) have constant fan-in.

        Rows with no nonzero become ablated (inactive) rows. Raises ``ValueError``
        naming the first row whose count differs from the others.

        ``group_size``: None or 1 gives the per-row format; an int G > 1 groups every G
        consecutive active rows (``ValueError`` naming the first group whose rows differ
        in their columns, or when n_active is not a multiple of G); ``"auto"`` picks the
        largest G that the pattern has (1 when no two neighbouring rows share columns).
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
        g = _group_size_for(cols, group_size)
        if g > 1:
            cols = cols[::g]
        return cls(values, cols.to(index_dtype).contiguous(), active_rows, weight.shape)

    def ungrouped(self) -> "CondensedWeight":
        """The same weight in the per-row format (G = 1)."""
        if self.group_size == 1:
            return self
        return CondensedWeight(self.values.contiguous(), self.row_indices.contiguous(), self.active_rows, self.shape)

    def grouped(self, group_size: int | str) -> "CondensedWeight":
        """The same weight with ``group_size`` rows per index row (``"auto"``: the largest
        the pattern allows); ``ValueError`` when the pattern does not have that structure."""
        rows = self.row_indices
        g = _group_size_for(rows, group_size)
        if g == self.group_size:
            return self
        indices = rows[::g].contiguous()
        return CondensedWeight(self.values.contiguous(), indices, self.active_rows, self.shape)

    def to_dense(self) -> torch.Tensor:
        """The (out_features, in_features) dense weight; ablated rows are zero."""
        dense = self.values.new_zeros(self.shape)
        dense[self.active_rows] = condensed_to_dense(self.values, self.row_indices, self.shape[1])
        return dense

    def to_csr(self) -> torch.Tensor:
        """A ``torch.sparse_csr_tensor`` of shape (out_features, in_features), columns
        sorted within each row (repeated columns, if any, are kept as separate entries)."""
        cols, order = torch.sort(self.row_indices.long(), dim=1, stable=True)
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


def _group_size_for(rows: torch.Tensor, group_size) -> int:
    """Check (or, for ``"auto"``, find) a group size for per-row indices ``rows`` (n, K)."""
    n = rows.shape[0]
    if group_size is None:
        return 1
    if group_size == "auto":
        for g in range(n, 1, -1):
            if n % g == 0 and bool((rows.view(n // g, g, -1) == rows[::g, None]).all()):
                return g
        return 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, None or 'auto', got {group_size!r}")
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {n} active rows")
    if group_size > 1:
        same = (rows.view(n // group_size, group_size, -1) == rows[::group_size, None]).all(dim=2)
        bad = torch.nonzero(~same)
        if bad.numel():
            grp, r = (int(v) for v in bad[0])
            raise ValueError(f"group_size={group_size}: active row {grp * group_size + r} does not share the columns "
                             f"of row {grp * group_size}, the first row of its group")
    return group_size


def scatter_active_rows(y_active, active_rows, out_features, bias=None):
    """Place the outputs of the active rows (..., n_active) into (..., out_features);
    ablated rows get the bias alone (or zero)."""
    y = y_active.new_zeros(*y_active.shape[:-1], out_features).index_copy(-1, active_rows, y_active)
    return y if bias is None else y + bias

"""``CondensedLinear``: a drop-in for ``nn.Linear`` whose weight has constant fan-in."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._structure import Pattern
from .._validate import FLOAT_DTYPES, check_in_features, check_indices_in_range, check_tensor, is_symbolic
from ..formats import FAN_IN_ALIGN, CondensedWeight, default_index_dtype, scatter_active_rows
from ..ops import _condensed_matmul


class CondensedLinear(nn.Module):
    """Linear layer ``y = x Wᵀ + b`` with W stored condensed: every active output row has
    exactly ``fan_in`` nonzero weights; ablated rows output the bias alone.

    Storage is flat and of fixed size (``capacity`` = out_features * fan_in by default):
    the parameter ``values`` and the buffer ``indices`` hold the (n_active, K) arrays in
    their first n_active*K entries. Dynamic sparse training can change K and the active
    rows in place while the optimizer keeps the same parameter object.

    Args:
        in_features, out_features: as ``nn.Linear``.
        fan_in: K, the nonzeros per active row (1..in_features).
        bias: learn an additive bias.
        index_dtype: int16 or int32 (default: the smallest that fits in_features).
        capacity: size of the flat storage (default out_features * fan_in; with
            group_size > 1, room for any fan-in within ``nnz_budget`` with every row
            padded to a multiple of 16 slots).
        nnz_budget: group_size > 1 only: the nonzero budget kept by dynamic sparse
            training (default out_features * fan_in).
        group_size: G, consecutive active rows that share one index row (default 1:
            a pattern per row). G > 1 runs the tensor-core kernels of
            :mod:`tritonsparse.group_ops`; the storage then pads each row of values and
            each index row to a multiple of 16 slots (zeros, never read), and the
            active rows must come in whole groups. ``out_features`` must be a multiple of G.
        batch_major_out: return y as a (B, out) view of batch-major storage (``y.t()``
            contiguous; the kernel writes yT), which a following condensed layer gathers
            from in place instead of transposing its input (one operator and a pass over
            the activations fewer per layer; elementwise ops between the layers keep the
            layout, and the gradient flows back in it). Same values as the default
            row-major y. While some rows are ablated the output is re-scattered to all
            rows and comes back row-major.

    A new layer gets a random pattern (K distinct columns per row) and values drawn
    uniformly in ±1/sqrt(K), the scale ``nn.Linear`` uses for a dense fan-in of K.

    ``capture_hook``: when set (by :mod:`tritonsparse.dst` on the steps it needs them),
    ``capture_hook(x, y)`` is called on every forward under grad with the matmul input
    (..., in_features) and the output (..., out_features), before it is returned.
    """

    capture_hook = None

    def __init__(self, in_features, out_features, fan_in, bias=True, device=None, dtype=None,
                 index_dtype=None, capacity=None, group_size=1, nnz_budget=None, batch_major_out=False):
        super().__init__()
        if not isinstance(batch_major_out, bool):
            raise TypeError(f"batch_major_out must be a bool, got {type(batch_major_out).__name__}")
        if not 1 <= fan_in <= in_features:
            raise ValueError(f"fan_in must be in [1, in_features={in_features}], got {fan_in}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if out_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide out_features={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.group_size = int(group_size)
        self.batch_major_out = batch_major_out
        need = self.out_features * self._row_stride(int(fan_in))
        if self.group_size > 1:  # room for any fan-in that keeps the budget, with each row padded
            budget = int(nnz_budget) if nnz_budget is not None else self.out_features * int(fan_in)
            need = max(need, budget + (FAN_IN_ALIGN - 1) * self.out_features)
        capacity = int(capacity) if capacity is not None else need
        if capacity < need:
            raise ValueError(f"capacity={capacity} is below the {need} slots of out_features * fan_in"
                             + (" (fan_in padded to a multiple of 16)" if self.group_size > 1 else ""))
        index_dtype = index_dtype or default_index_dtype(self.in_features)
        self.values = nn.Parameter(torch.zeros(capacity, device=device, dtype=dtype or torch.get_default_dtype()))
        self.register_buffer("indices", torch.zeros(capacity, device=device, dtype=index_dtype))
        self.register_buffer("active_mask", torch.ones(self.out_features, device=device, dtype=torch.bool))
        self.register_buffer("fan_in_buffer", torch.tensor(int(fan_in), device=device))
        if self.group_size > 1:  # the nonzero budget DST keeps (capacity also holds the row padding)
            self.register_buffer("nnz_budget_buffer", torch.tensor(budget, device=device))
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=self.values.dtype)) if bias else None
        self._refresh(int(fan_in), torch.arange(self.out_features, device=self.active_mask.device))
        self.reset_parameters()

    # -- pattern bookkeeping -----------------------------------------------------------
    def _row_stride(self, fan_in: int) -> int:
        """Slots per stored row: K, or K padded to a multiple of 16 for group patterns."""
        if self.group_size == 1:
            return fan_in
        return max((fan_in + FAN_IN_ALIGN - 1) // FAN_IN_ALIGN * FAN_IN_ALIGN, FAN_IN_ALIGN)

    def _rows_view(self, flat, rows: int):
        """(rows, K) view of the first rows of flat storage (row stride ``_row_stride``)."""
        stride = self._row_stride(self.fan_in)
        view = flat[: rows * stride].view(rows, stride)
        return view if stride == self.fan_in else view[:, : self.fan_in]

    def _refresh(self, fan_in: int | None = None, active_rows: torch.Tensor | None = None):
        """Recompute the Python-side view of the pattern (from the buffers unless given:
        after a pattern change, a state_dict load or a device move), and start a new
        :class:`~tritonsparse._structure.Pattern`: the derived structures (range check,
        transposed structure of dX) belong to this layer and are rebuilt here."""
        if fan_in is None:
            fan_in, active_rows = self._sizes_from_buffers()
        self.fan_in = int(fan_in)
        self.active_rows = active_rows
        self.n_active = int(self.active_rows.numel())
        self._indices_view = self._rows_view(self.indices, self.n_active // self.group_size)
        self._pattern = Pattern(self.in_features)

    def _sizes_from_buffers(self):
        """(fan_in, active_rows) stored in the buffers; ``ValueError`` naming the buffer
        when they cannot describe a pattern of this layer."""
        fan_in, active_rows = int(self.fan_in_buffer), torch.nonzero(self.active_mask).flatten()
        if (not 0 <= fan_in <= self.in_features or active_rows.numel() * self._row_stride(fan_in) > self.capacity
                or active_rows.numel() % self.group_size):
            raise ValueError(f"fan_in_buffer holds {fan_in} for {active_rows.numel()} active rows: not a pattern of "
                             f"in_features={self.in_features} within capacity={self.capacity}"
                             + (f" in whole groups of {self.group_size}" if self.group_size > 1 else ""))
        return fan_in, active_rows

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        try:
            self._refresh()
        except (ValueError, RuntimeError):
            # meta/fake buffers hold no values, and ``to_empty`` leaves garbage: keep the sizes
            # known on the Python side (a state_dict load or set_pattern sets the real ones)
            rows, device = self.active_rows, self.active_mask.device
            rows = torch.arange(rows.numel(), device=device) if is_symbolic(rows) else rows.to(device)
            self._refresh(self.fan_in, rows)
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()
        check_indices_in_range("indices", self._indices_view, self.in_features)
        self._pattern.checked_by_owner(self._indices_view)

    @property
    def capacity(self) -> int:
        return self.values.numel()

    @property
    def nnz_budget(self) -> int:
        """The nonzero budget dynamic sparse training keeps: the capacity, or for
        group_size > 1 the budget given at construction (the capacity adds row padding)."""
        return int(self.nnz_budget_buffer) if self.group_size > 1 else self.capacity

    @property
    def weight_values(self) -> torch.Tensor:
        """(n_active, K) view of the values (shares storage and gradient with ``values``)."""
        return self._rows_view(self.values, self.n_active)

    @property
    def weight_indices(self) -> torch.Tensor:
        """(n_active, K) view of the column indices ((n_active/G, K) with group_size G)."""
        return self._indices_view

    @torch.no_grad()
    def set_pattern(self, values: torch.Tensor, indices: torch.Tensor, active_rows: torch.Tensor | None = None):
        """Replace the pattern in place: ``values``/``indices`` (n_active, K) for the
        ``active_rows`` (ascending; None = all rows). Storage past n_active*K is zeroed.
        With group_size G > 1, ``indices`` is (n_active/G, K) (or the (n_active, K) per-row
        indices of a pattern that has the group structure)."""
        cw = CondensedWeight(values.to(self.values.dtype), indices.to(self.indices.dtype), active_rows,
                             (self.out_features, self.in_features))
        if cw.group_size != self.group_size:
            try:
                cw = cw.grouped(self.group_size) if self.group_size > 1 else cw.ungrouped()
            except ValueError as e:
                raise ValueError(f"indices: not a pattern of group_size={self.group_size}: {e}") from None
        slots = cw.n_active * self._row_stride(cw.fan_in)
        if slots > self.capacity:
            raise ValueError(f"the pattern needs {slots} slots, more than capacity={self.capacity}")
        self.values.zero_()
        self.indices.zero_()
        self.active_mask.zero_()
        self.active_mask[cw.active_rows] = True
        self.fan_in_buffer.fill_(cw.fan_in)
        self._refresh(cw.fan_in, cw.active_rows)
        self.weight_values.copy_(cw.values)
        self._indices_view.copy_(cw.indices)
        self._pattern.checked_by_owner(self._indices_view)  # CondensedWeight checked these values

    @torch.no_grad()
    def reset_parameters(self):
        k = self.fan_in
        groups = self.out_features // self.group_size
        cols = torch.rand(groups, self.in_features, device=self.values.device).argsort(dim=1)[:, :k]
        cols = cols.sort(dim=1).values
        bound = 1.0 / math.sqrt(k)
        vals = torch.empty(self.out_features, k, device=self.values.device, dtype=self.values.dtype).uniform_(-bound, bound)
        self.set_pattern(vals, cols, None)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    # -- conversions -------------------------------------------------------------------
    def condensed_weight(self) -> CondensedWeight:
        """The weight as a :class:`CondensedWeight` (views of this layer's storage)."""
        return CondensedWeight(self.weight_values.detach(), self._indices_view, self.active_rows,
                               (self.out_features, self.in_features))

    def to_dense_weight(self) -> torch.Tensor:
        return self.condensed_weight().to_dense()

    @classmethod
    def from_condensed(cls, weight: CondensedWeight, bias: torch.Tensor | None = None, capacity=None):
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, max(weight.fan_in, 1), bias=bias is not None,
                    device=weight.values.device, dtype=weight.values.dtype, index_dtype=weight.indices.dtype,
                    capacity=capacity, group_size=weight.group_size)
        layer.set_pattern(weight.values, weight.indices, weight.active_rows)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, index_dtype=None, group_size=None):
        """Condense an ``nn.Linear`` whose zero pattern (or ``mask``) has constant fan-in
        (``group_size``: as :meth:`CondensedWeight.from_dense`)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_tensor("linear.weight", linear.weight.data, FLOAT_DTYPES, ndim=2)
        cw = CondensedWeight.from_dense(linear.weight.detach(), mask, index_dtype, group_size=group_size)
        if cw.n_active == 0:
            raise ValueError("linear has no nonzero weight: nothing to condense")
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls.from_condensed(cw, bias)

    # -- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_in_features(x, self.in_features)
        if self.n_active == self.out_features:
            y = _condensed_matmul(x, self.weight_values, self._indices_view, self.bias, pattern=self._pattern,
                                  batch_major_out=self.batch_major_out)
        else:
            y = _condensed_matmul(x, self.weight_values, self._indices_view, pattern=self._pattern)
            y = scatter_active_rows(y, self.active_rows, self.out_features, self.bias)
        if self.capture_hook is not None and torch.is_grad_enabled():
            self.capture_hook(x, y)
        return y

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, fan_in={self.fan_in}, "
                f"active={self.n_active}, bias={self.bias is not None}, index_dtype={self.indices.dtype}"
                + (f", group_size={self.group_size}" if self.group_size > 1 else "")
                + (", batch_major_out=True" if self.batch_major_out else ""))

"""``BlockedCondensedLinear``: a frozen condensed linear layer stored for CPU
matrix-vector products.

At batch 1 the plain-PyTorch path is MKL's sparse matrix-vector product over the
condensed weight as CSR. Every row gathers from all of x; when x is larger than a core's
L1 data cache (fp32 x of 14336 features is 57 KB) each gather goes to L2, and the product
slows down by about 1.6x (measured: 2.5 ms on 14336 -> 4096 against 1.6 ms on
4096 -> 14336, the same 5.9 M nonzeros, 2 threads of an AMD EPYC with 48 KB of L1d).
Splitting the columns into blocks of at most 4096 (16 KB of x) and summing one product
per block keeps x's block in L1. The split needs the values in block order, a copy that a
training layer would have to redo after every optimizer step; this layer holds that copy
*instead of* the condensed one (inference only: nothing can go stale).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import cpu
from .._validate import check_in_features
from .condensed_linear import CondensedLinear


class BlockedCondensedLinear(nn.Module):
    """Inference form of a :class:`CondensedLinear` (same outputs, up to fp32 summation
    order): the weight as column-blocked CSR (``cpu.column_blocks``), buffers only, no
    parameters and no gradient with respect to the weight. Built with
    :meth:`from_condensed` or by ``tritonsparse.export(model, cpu_blocked=True)``.

    Computes in fp32 (MKL has no bf16 sparse kernels) and returns x's dtype; any batch
    works, the layout pays at small batch on large ``in_features`` (see the module doc).
    Runs wherever ``torch.sparse`` CSR products run (CPU; CUDA through cuSPARSE), but it
    is meant for CPU: on a GPU keep the :class:`CondensedLinear` and its Triton kernels.

    Buffers: ``crow`` (C, out_features + 1) int32, ``col`` (nnz,) int32, ``vals`` (nnz,)
    fp32, ``edges`` (C + 1,) int64, ``bias`` (out_features,) or None.
    """

    def __init__(self, in_features: int, out_features: int, crow: torch.Tensor, col: torch.Tensor,
                 vals: torch.Tensor, edges: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if crow.dim() != 2 or crow.shape[1] != self.out_features + 1:
            raise ValueError(f"crow must be (blocks, out_features + 1) = (C, {self.out_features + 1}), "
                             f"got {tuple(crow.shape)}")
        if edges.shape != (crow.shape[0] + 1,) or int(edges[0]) != 0 or int(edges[-1]) != self.in_features:
            raise ValueError(f"edges must run from 0 to in_features={self.in_features} in {crow.shape[0]} blocks, "
                             f"got {edges.tolist()}")
        if col.shape != vals.shape or col.dim() != 1 or int(crow[:, -1].sum()) != col.numel():
            raise ValueError(f"col and vals must be (nnz,) with nnz = the blocks' total {int(crow[:, -1].sum())}, "
                             f"got {tuple(col.shape)} and {tuple(vals.shape)}")
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias must be ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("crow", crow.to(torch.int32))
        self.register_buffer("col", col.to(torch.int32))
        self.register_buffer("vals", vals.float())
        self.register_buffer("edges", edges.to(torch.int64))
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    @classmethod
    def from_condensed(cls, layer: CondensedLinear, block_columns: int = cpu.BLOCK_COLUMNS) -> "BlockedCondensedLinear":
        """The blocked copy of ``layer``'s current weight and bias (ablated rows output the
        bias alone, as in the layer). ``block_columns``: x columns per block at most
        (default 4096: 16 KB of fp32)."""
        if not isinstance(layer, CondensedLinear):
            raise TypeError(f"layer must be a CondensedLinear, got {type(layer).__name__}")
        w = layer.condensed_weight().ungrouped()  # a group's index row, repeated for each of its rows
        crow, col, vals, edges = cpu.column_blocks(w.values, w.indices, w.active_rows, tuple(w.shape), block_columns)
        return cls(layer.in_features, layer.out_features, crow, col, vals, edges, layer.bias)

    @property
    def blocks(self) -> int:
        return self.crow.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_in_features(x, self.in_features)
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.device != self.vals.device:
            raise ValueError(f"x is on {x.device} but the layer's buffers are on {self.vals.device}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:
            return x.new_zeros(*lead, self.out_features)
        y = cpu.blocked_matmul(x2, self.crow, self.col, self.vals, self.edges, self.bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}, "
                f"nnz={self.col.numel()}, bias={self.bias is not None}")

"""Sparse-IFT per-layer modules (Thangarasa et al., "Sparse Iso-FLOP Transformations").

Each module replaces one dense ``nn.Linear`` or ``nn.Conv2d`` and is built *dense-shaped*:
the parts listed in ``sparse_parts`` are meant to be made sparse afterwards (by
``tritonsparse.dst.sparsify``) at the sparsity the module was built for, which makes the
module cost the FLOPs of the layer it replaced. Parts outside ``sparse_parts`` (the
low-rank branch of Sparse Doped) stay dense.

The normalisation used after a branch is ``BatchNorm2d`` for convolutions and
``LayerNorm`` for linear layers (LayerNorm works for any number of leading dims, e.g.
the tokens of a ViT).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _check_sparsity(sparsity) -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_layer(layer):
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"layer must be an nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"layer is a grouped convolution (groups={layer.groups}); Sparse-IFT supports groups=1 only")


def layer_dims(layer) -> tuple[int, int]:
    """(D_in, D_out) of a dense layer: for a k_h x k_w conv, D_in = k_h * k_w * C_in."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    kh, kw = layer.kernel_size
    return kh * kw * layer.in_channels // layer.groups, layer.out_channels


def parallel_branches(sparsity: float) -> int:
    """Sparse Parallel: round(1 / (1 - s)) branches."""
    return max(1, round(1.0 / (1.0 - _check_sparsity(sparsity))))


def wide_factor(sparsity: float) -> float:
    """Sparse Wide: k = sqrt(round(1 / (1 - s))) (the authors round 1/(1-s) first)."""
    return math.sqrt(parallel_branches(sparsity))


def factorized_width(d_in: int, d_out: int, sparsity: float) -> int:
    """Sparse Factorized inner width d = ceil(D_in D_out / ((1 - s)(D_in + D_out)))."""
    s = _check_sparsity(sparsity)
    return int(math.ceil(d_in * d_out / ((1.0 - s) * (d_in + d_out)) - 1e-9))


def doped_rank(d_in: int, d_out: int, sparsity: float) -> int:
    """Sparse Doped low-rank width r = floor(s D_in D_out / (D_in + D_out))."""
    s = _check_sparsity(sparsity)
    return int(math.floor(s * d_in * d_out / (d_in + d_out) + 1e-9))


def _like(layer, in_dim=None, out_dim=None, bias=None, pointwise=False):
    """A fresh layer of the same kind as ``layer`` (its geometry kept), with other
    input/output widths; ``pointwise`` makes a 1x1 stride-1 conv (the V of a factorisation)."""
    bias = layer.bias is not None if bias is None else bias
    p = layer.weight
    kw = dict(device=p.device, dtype=p.dtype)
    if isinstance(layer, nn.Linear):
        return nn.Linear(in_dim or layer.in_features, out_dim or layer.out_features, bias=bias, **kw)
    if pointwise:
        return nn.Conv2d(in_dim or layer.in_channels, out_dim or layer.out_channels, 1, bias=bias, **kw)
    return nn.Conv2d(in_dim or layer.in_channels, out_dim or layer.out_channels, layer.kernel_size,
                     stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                     padding_mode=layer.padding_mode, bias=bias, **kw)


def _norm(layer, width):
    p = layer.weight
    if isinstance(layer, nn.Conv2d):
        return nn.BatchNorm2d(width, device=p.device, dtype=p.dtype)
    return nn.LayerNorm(width, device=p.device, dtype=p.dtype)


class SparseParallel(nn.Module):
    """Sparse Parallel: ``sum_i norm_i(branch_i(x))`` with round(1/(1-s)) branches, each
    the shape of ``layer`` and meant to be sparse at ``sparsity``. The non-linearity that
    followed ``layer`` in the model follows the sum. The original bias is not kept: each
    branch's norm has its own shift."""

    def __init__(self, layer, sparsity: float):
        super().__init__()
        _check_layer(layer)
        self.sparsity = _check_sparsity(sparsity)
        n = parallel_branches(self.sparsity)
        self.branches = nn.ModuleList(_like(layer, bias=False) for _ in range(n))
        self.norms = nn.ModuleList(_norm(layer, layer_dims(layer)[1]) for _ in range(n))
        self.sparse_parts = tuple(f"branches.{i}" for i in range(n))

    def forward(self, x):
        out = self.norms[0](self.branches[0](x))
        for branch, norm in zip(self.branches[1:], self.norms[1:]):
            out = out + norm(branch(x))
        return out


class SparseFactorized(nn.Module):
    """Sparse Factorized: ``W -> V . relu(norm(U x))`` with inner width
    d = ceil(D_in D_out / ((1-s)(D_in + D_out))); U has the geometry of ``layer`` (a
    k x k conv keeps its kernel, stride and padding), V is linear / 1x1; both sparse."""

    def __init__(self, layer, sparsity: float):
        super().__init__()
        _check_layer(layer)
        self.sparsity = _check_sparsity(sparsity)
        d_in, d_out = layer_dims(layer)
        self.inner = factorized_width(d_in, d_out, self.sparsity)
        self.u = _like(layer, out_dim=self.inner, bias=False)
        self.norm = _norm(layer, self.inner)
        self.act = nn.ReLU()
        self.v = _like(layer, in_dim=self.inner, pointwise=True)
        self.sparse_parts = ("u", "v")

    def forward(self, x):
        return self.v(self.act(self.norm(self.u(x))))


class SparseDoped(nn.Module):
    """Sparse Doped: ``sparse(x) + V U x``: a full-size sparse layer plus a dense low-rank
    branch of rank r = floor(s D_in D_out / (D_in + D_out)), no non-linearity in between
    (U has the geometry of ``layer``, V is linear / 1x1). With r = 0 the branch is absent."""

    def __init__(self, layer, sparsity: float):
        super().__init__()
        _check_layer(layer)
        self.sparsity = _check_sparsity(sparsity)
        d_in, d_out = layer_dims(layer)
        self.rank = doped_rank(d_in, d_out, self.sparsity)
        self.sparse = _like(layer)
        if self.rank > 0:
            self.low_rank_u = _like(layer, out_dim=self.rank, bias=False)
            self.low_rank_v = _like(layer, in_dim=self.rank, bias=False, pointwise=True)
        else:
            self.low_rank_u = self.low_rank_v = None
        self.sparse_parts = ("sparse",)

    def forward(self, x):
        out = self.sparse(x)
        if self.low_rank_u is not None:
            out = out + self.low_rank_v(self.low_rank_u(x))
        return out


IFT_LAYERS = {"parallel": SparseParallel, "factorized": SparseFactorized, "doped": SparseDoped}

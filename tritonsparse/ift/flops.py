"""A FLOP counter for the matmul layers of a model, dense vs sparse / Sparse-IFT.

Counted: ``nn.Linear``, ``nn.Conv2d``, ``CondensedLinear`` and condensed convolutions
(any module with ``in_channels``/``out_channels``/``kernel_size`` and a condensed weight):
2 x multiply-adds per example of a forward pass. A sparse layer costs density x its
dense FLOPs. Not counted: attention score products, norms, activations, pooling (they
are unchanged by the sparse transformations, apart from the norms Sparse Parallel /
Factorized add, which are O(width), not O(width^2)).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import CondensedLinear
from .transforms import sparse_ift


def _is_conv_like(m) -> bool:
    return isinstance(m, nn.Conv2d) or (
        all(hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size")) and hasattr(m, "fan_in"))


def _is_counted(m) -> bool:
    return isinstance(m, (nn.Linear, CondensedLinear)) or _is_conv_like(m)


def module_density(m) -> float:
    """Fraction of the weight that is active: exact for condensed layers (active rows x
    fan-in), the share of nonzero weights for a dense or masked-dense layer."""
    if hasattr(m, "n_active") and hasattr(m, "fan_in") and not isinstance(m, nn.Conv2d):
        dense = m.out_features * m.in_features if hasattr(m, "out_features") else None
        if dense is None:  # condensed conv: fan-in runs over in_channels * kh * kw
            kh, kw = _pair(m.kernel_size)
            dense = m.out_channels * m.in_channels * kh * kw
        return m.n_active * m.fan_in / max(dense, 1)
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor) and w.numel() and not w.is_meta:
        mask = getattr(m, "mask", None)
        if isinstance(mask, torch.Tensor) and mask.shape == w.shape:
            return float(mask.float().mean())
        return float((w != 0).float().mean())
    return 1.0


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _dense_macs(m, out: torch.Tensor) -> float:
    """Dense multiply-adds of one forward of ``m`` that produced ``out``."""
    if _is_conv_like(m):
        kh, kw = _pair(m.kernel_size)
        groups = getattr(m, "groups", 1)
        return out.numel() * (m.in_channels // groups) * kh * kw
    return out.numel() * m.in_features


@dataclass
class FlopCount:
    """FLOPs per example of one forward pass.

    Attributes:
        total: FLOPs at the layers' densities.
        dense_total: FLOPs if every counted layer were dense.
        layers: ``{name: {"dense": ..., "flops": ..., "density": ...}}``.
    """

    total: float = 0.0
    dense_total: float = 0.0
    layers: dict = field(default_factory=dict)


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor, densities: dict | None = None) -> FlopCount:
    """Count the forward FLOPs per example of ``model`` on ``example_input``.

    Args:
        model: any module; its linear / conv / condensed layers are counted.
        example_input: a batch (first dim = batch size) the model accepts.
        densities: optional ``{layer name: density}`` that overrides the density read
            from the layer (used to count a dense-shaped model at the sparsity it is
            built for, e.g. ``SparseIFT.densities()``).
    Returns:
        a :class:`FlopCount` (2 FLOPs per multiply-add, per example).
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError("example_input must be a tensor with a batch dimension of size >= 1")
    densities = densities or {}
    names = {m: n for n, m in model.named_modules() if _is_counted(m)}
    batch = example_input.shape[0]
    result = FlopCount()

    def hook(m, _inp, out):
        name = names[m]
        dense = 2.0 * _dense_macs(m, out) / batch
        density = float(densities[name]) if name in densities else module_density(m)
        rec = result.layers.setdefault(name, {"dense": 0.0, "flops": 0.0, "density": density})
        rec["dense"] += dense
        rec["flops"] += density * dense
        result.dense_total += dense
        result.total += density * dense

    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return result


def iso_flop_report(model: nn.Module, kind: str, sparsity: float, example_input: torch.Tensor,
                    dense_modules=None) -> dict:
    """Dense FLOPs of ``model`` vs the FLOPs of its Sparse-IFT ``kind`` at ``sparsity``
    (a copy is transformed; ``model`` is left alone). Sparse parts are counted at the
    sparsity the transformation was built for.

    Returns ``{"kind", "sparsity", "dense_flops", "transformed_flops", "ratio"}``.
    """
    dense = count_flops(model, example_input).total
    ift = sparse_ift(copy.deepcopy(model), kind, sparsity, dense_modules)
    transformed = count_flops(ift.model, example_input, ift.densities()).total
    return {"kind": kind, "sparsity": float(sparsity), "dense_flops": dense, "transformed_flops": transformed,
            "ratio": transformed / dense if dense else float("nan")}

"""``sparse_ift``: apply a Sparse Iso-FLOP Transformation to a whole model."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .layers import IFT_LAYERS, _check_sparsity, wide_factor

IFT_KINDS = ("none", "wide", "parallel", "factorized", "doped")


def _matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def compute_layers(model: nn.Module):
    """Names of the ``nn.Linear`` / ``nn.Conv2d`` modules of ``model``, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@dataclass
class SparseIFT:
    """What :func:`sparse_ift` built.

    Attributes:
        model: the transformed, still dense-shaped model.
        kind, sparsity: the transformation and the sparsity it was built for.
        sparse_layers: ``{name: sparsity}`` for every ``nn.Linear``/``nn.Conv2d`` that is
            meant to be sparse, at the sparsity that keeps its FLOPs iso (``sparsity``,
            except the first/last layers of a Sparse Wide model, widened on one side
            only, which get 1 - 1/k).
        dense_layers: the other ``nn.Linear``/``nn.Conv2d`` names (stem, head, the
            low-rank branch of Sparse Doped): pass them as ``dense_modules`` to
            ``tritonsparse.dst.sparsify``.
        group_size: G for ``tritonsparse.dst.sparsify(..., group_size=G)`` (group-shared
            patterns on the tensor-core kernels); 1: a pattern per row.
    """

    model: nn.Module
    kind: str
    sparsity: float
    sparse_layers: dict = field(default_factory=dict)
    dense_layers: list = field(default_factory=list)
    group_size: int = 1

    def densities(self) -> dict:
        """``{name: density}`` of every compute layer, for :func:`count_flops`."""
        out = {n: 1.0 for n in self.dense_layers}
        out.update({n: 1.0 - s for n, s in self.sparse_layers.items()})
        return out


def _replace(model, name, new):
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _widen(model, k):
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"kind='wide' rebuilds the model with wider layers and needs a model with a `config` dict of "
            f"constructor arguments accepting `width_mult` (the tritonsparse.models do); got {type(model).__name__}")
    wide = type(model)(**{**config, "width_mult": config.get("width_mult", 1.0) * k})
    p = next(model.parameters(), None)
    return wide.to(p.device) if p is not None else wide


def sparse_ift(model: nn.Module, kind: str, sparsity: float, dense_modules=None, group_size: int = 1) -> SparseIFT:
    """Apply the Sparse-IFT ``kind`` at ``sparsity`` to ``model``.

    Args:
        model: a dense model. For ``"wide"`` it must carry a ``config`` dict of its
            constructor arguments and accept ``width_mult`` (the models in
            ``tritonsparse.models`` do): a new, wider model is built (fresh weights).
            Other kinds replace layers in place.
        kind: ``"none"`` (no transformation: every eligible layer sparse at ``sparsity``),
            ``"wide"`` (every width times k = sqrt(round(1/(1-s))), truncated to integers;
            the network's input and output sizes unchanged), ``"parallel"``,
            ``"factorized"`` or ``"doped"`` (each eligible ``nn.Linear``/``nn.Conv2d`` is
            replaced by :class:`SparseParallel`, :class:`SparseFactorized` or
            :class:`SparseDoped`).
        sparsity: s in [0, 1).
        dense_modules: module-name prefixes left dense and untransformed (default: the
            model's ``default_dense_modules``, e.g. ``("stem", "head")``). Sparse Wide
            still widens them on their inner side.
        group_size: G carried to the returned ``SparseIFT`` for ``sparsify``; every
            ``nn.Linear`` to be made sparse must have out_features divisible by G
            (``ValueError`` naming the first that does not). With ``"wide"`` this is what
            puts the wider layers on the tensor-core kernels.

    Returns:
        A :class:`SparseIFT` with the dense-shaped model and the names of the layers to
        sparsify (``sparse_layers``) and to keep dense (``dense_layers``).
    """
    if kind not in IFT_KINDS:
        raise ValueError(f"kind must be one of {IFT_KINDS}, got {kind!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    s = _check_sparsity(sparsity)
    if dense_modules is None:
        dense_modules = tuple(getattr(model, "default_dense_modules", ()))
    elif isinstance(dense_modules, str):
        dense_modules = (dense_modules,)
    dense_modules = tuple(dense_modules)

    if kind == "wide":
        old = {n: model.get_submodule(n) for n in compute_layers(model)}
        model = _widen(model, wide_factor(s))
    eligible = [n for n in compute_layers(model) if not _matches(n, dense_modules)]
    sparse = {}
    if kind in IFT_LAYERS:
        for name in eligible:
            new = IFT_LAYERS[kind](model.get_submodule(name), s)
            _replace(model, name, new)
            sparse.update({f"{name}.{part}": s for part in new.sparse_parts})
    elif kind == "wide":
        for name in eligible:
            sparse[name] = _wide_layer_sparsity(old.get(name), model.get_submodule(name), s)
    else:
        sparse = {name: s for name in eligible}
    dense = [n for n in compute_layers(model) if n not in sparse]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    for name in sparse:
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear) and m.out_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide out_features={m.out_features} of {name!r}")
    return SparseIFT(model, kind, s, sparse, dense, group_size)


def _wide_layer_sparsity(old, new, s):
    """Sparsity of a widened layer: s when both sides grew (k^2 (1 - s) ~ 1), 1 - 1/k
    when one side kept its size (the network's first or last layer)."""
    if old is None:
        return s
    attr_in, attr_out = ("in_features", "out_features") if isinstance(new, nn.Linear) else ("in_channels", "out_channels")
    r_in = getattr(new, attr_in) / getattr(old, attr_in)
    r_out = getattr(new, attr_out) / getattr(old, attr_out)
    if (r_in > 1) == (r_out > 1):
        return s
    return max(0.0, 1.0 - 1.0 / max(r_in, r_out))

"""``sparsify``: replace a model's eligible Linear / Conv2d layers by sparse ones in place."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.condensed_conv import CondensedConv2d
from ..nn.condensed_linear import CondensedLinear
from .distribution import layer_densities
from .masked import MaskedConv2d, MaskedLinear

METHODS = ("static", "set", "rigl", "srigl")
SPARSE_LAYERS = (CondensedLinear, MaskedLinear, MaskedConv2d)  # CondensedConv2d is a CondensedLinear


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")


def _matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _eligible(model, dense_modules, min_params):
    found = {}
    for name, m in model.named_modules():
        if not name or _matches(name, dense_modules) or isinstance(m, SPARSE_LAYERS):
            continue
        if type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
                                    and not isinstance(m.padding, str)):
            if m.weight.numel() >= min_params:
                found[name] = m
    return found


def _random_cols(out_features, in_features, k, device, generator):
    """(out, k) distinct columns per row, ascending, drawn uniformly (row chunks keep the
    random matrix small)."""
    chunk = max(1, (1 << 22) // max(in_features, 1))
    parts = []
    for r0 in range(0, out_features, chunk):
        r = min(chunk, out_features - r0)
        parts.append(torch.rand(r, in_features, generator=generator).topk(k, dim=1).indices)
    return torch.cat(parts).sort(dim=1).values.to(device)


@torch.no_grad()
def _condensed_from(module, budget, generator, group_size=1):
    out_features = module.weight.shape[0]
    dense = module.weight.detach().reshape(out_features, -1)
    in_features = dense.shape[1]
    budget = min(max(budget, out_features), out_features * in_features)
    k = budget // out_features
    kw = dict(bias=module.bias is not None, device=dense.device, dtype=dense.dtype, capacity=budget)
    if group_size > 1 and isinstance(module, nn.Linear):
        group_cols = _random_cols(out_features // group_size, in_features, k, dense.device, generator)
        layer = CondensedLinear(in_features, out_features, k, bias=kw["bias"], device=kw["device"], dtype=kw["dtype"],
                                group_size=group_size, nnz_budget=budget)
        layer.set_pattern(dense.gather(1, group_cols.repeat_interleave(group_size, 0)), group_cols, None)
        return _finish(layer, module)
    cols = _random_cols(out_features, in_features, k, dense.device, generator)
    values = dense.gather(1, cols)
    if isinstance(module, nn.Conv2d):
        layer = CondensedConv2d(module.in_channels, module.out_channels, module.kernel_size, k, stride=module.stride,
                                padding=module.padding, dilation=module.dilation, **kw)
    else:
        layer = CondensedLinear(in_features, out_features, k, **kw)
    layer.set_pattern(values, cols, None)
    return _finish(layer, module)


def _finish(layer, module):
    if module.bias is not None:
        layer.bias.copy_(module.bias)
    layer.train(module.training)
    return layer


@torch.no_grad()
def _masked_from(module, budget, generator):
    numel = module.weight.numel()
    budget = min(max(budget, 1), numel)
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:budget]] = True
    mask = flat.view(module.weight.shape).to(module.weight.device)
    return MaskedConv2d.from_conv(module, mask) if isinstance(module, nn.Conv2d) else MaskedLinear.from_linear(module, mask)


def sparsify(model: nn.Module, sparsity: float = 0.9, method: str = "srigl", distribution: str = "erk",
             dense_modules=(), min_params: int = 0, seed: int = 0, group_size: int = 1) -> nn.Module:
    """Replace the eligible ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` in place by
    sparse layers and return the model.

    * ``"srigl"``, ``"set"``, ``"static"``: :class:`~tritonsparse.nn.CondensedLinear` /
      :class:`~tritonsparse.nn.CondensedConv2d` (constant fan-in, condensed kernels).
      A layer with nonzero budget B = round(density·out·in) gets flat storage of B
      entries and fan-in K = B // out, on random columns; the values are the dense
      layer's initial weights at those positions (a masked dense init, as in RigL/SRigL).
    * ``"rigl"``: :class:`MaskedLinear` / :class:`MaskedConv2d` (unstructured masks of B
      random nonzeros over the dense weight; the baseline).

    Args:
        model: the network; modified in place.
        sparsity: global fraction of zeros over the sparsified layers, in [0, 1).
        method: ``"static" | "set" | "rigl" | "srigl"``.
        distribution: ``"erk"`` or ``"uniform"`` layer densities (see :func:`erk_densities`).
        dense_modules: module-name prefixes kept dense (e.g. ``("stem", "head")``); they
            are left out of the sparsity budget.
        min_params: layers with fewer weights stay dense.
        seed: seed of the random initial patterns.
        group_size: G > 1 gives ``nn.Linear`` layers group-shared patterns (G consecutive
            rows share one index row; tensor-core kernels; see :mod:`tritonsparse.dst.groups`).
            A layer whose out_features G does not divide raises ``ValueError``; convolutions
            keep G = 1. Not with ``method="rigl"``.

    Eligible: plain ``nn.Linear`` and ``nn.Conv2d`` with groups=1 and numeric zero padding.
    Build the optimizer after calling this.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_method(method)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if isinstance(dense_modules, str):
        dense_modules = (dense_modules,)
    if not isinstance(min_params, int) or min_params < 0:
        raise ValueError(f"min_params must be an int >= 0, got {min_params!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if group_size > 1 and method == "rigl":
        raise ValueError("group_size > 1 needs condensed layers: use method 'srigl', 'set' or 'static', not 'rigl'")
    layers = _eligible(model, tuple(dense_modules), min_params)
    if group_size > 1:
        bad = [n for n, m in layers.items() if isinstance(m, nn.Linear) and m.out_features % group_size]
        if bad:
            raise ValueError(f"group_size={group_size} does not divide out_features={layers[bad[0]].out_features} "
                             f"of {bad[0]!r} (keep it dense with dense_modules, or pick a G that divides it)")
    if not layers:
        raise ValueError("model has no eligible nn.Linear / nn.Conv2d layer to sparsify "
                         "(check dense_modules and min_params)")
    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    densities = layer_densities(shapes, 1.0 - float(sparsity), distribution)
    generator = torch.Generator().manual_seed(seed)
    for name, m in layers.items():
        budget = int(round(densities[name] * m.weight.numel()))
        new = _masked_from(m, budget, generator) if method == "rigl" else _condensed_from(m, budget, generator, group_size)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


def sparse_layers(model: nn.Module) -> dict:
    """{name: layer} of the sparse layers (condensed or masked) in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SPARSE_LAYERS)}


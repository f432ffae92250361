"""``export``: a trained sparse model -> a compact inference model.

What it does:

1. Every sparse layer becomes a compact inference layer: a condensed layer
   (``CondensedLinear`` / ``CondensedConv2d``) is rebuilt with storage of out x K
   (exactly its nonzeros once ablated rows are removed; training may have left spare
   capacity); a masked layer (RigL) whose mask has constant fan-in over its nonzero rows
   becomes a condensed layer too, any other masked layer a plain ``nn.Linear`` /
   ``nn.Conv2d`` with the mask multiplied in (unstructured sparsity has no condensed form).
2. Along a *chain* of layers ``L_1 -> act -> L_2 -> act -> ... -> L_n`` (the
   :class:`~tritonsparse.models.MLP`, any model with a ``chain()`` method listing
   ``(module name, activation or None)``, or an ``nn.Sequential`` of linear layers and
   element-wise activations), the ablated neurons of ``L_i`` (i < n) are physically
   removed: ``L_i`` gets fewer output features and ``L_{i+1}`` reads only the kept
   inputs (a condensed layer's indices are remapped, a dense layer's columns sliced).
   An ablated neuron still outputs ``act(bias)``, a constant, so its contribution is
   folded into ``L_{i+1}``'s bias: outputs are unchanged (up to float rounding).

Not supported for neuron removal: residual connections, normalisation layers between
sparse layers (ResNet, ViT, Sparse-IFT modules): those models get step 1 only, so
their ablated neurons stay in place (as rows of zeros that cost no FLOPs).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .dst.masked import MaskedConv2d, MaskedLinear
from .formats import CondensedWeight
from .nn import BlockedCondensedLinear, CondensedConv2d, CondensedLinear

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout,
                nn.ReLU6, nn.Softplus, nn.Mish, nn.Hardswish)


def _compact(layer):
    """The inference form of one layer (a new module), or ``layer`` if it is not sparse."""
    if isinstance(layer, CondensedLinear):
        cw = layer.condensed_weight()
        return _condensed_like(layer, cw.values.clone(), cw.indices.clone(), cw.active_rows.clone(),
                               None if layer.bias is None else layer.bias.detach().clone())
    if isinstance(layer, (MaskedLinear, MaskedConv2d)):
        weight = (layer.weight * layer.mask).detach()
        rows = layer.mask.reshape(layer.mask.shape[0], -1)
        counts = rows.sum(1)
        nonzero = counts[counts > 0]
        if nonzero.numel() and bool((nonzero == nonzero[0]).all()):
            if isinstance(layer, MaskedConv2d) and layer.groups == 1 and layer.padding_mode == "zeros" \
                    and not isinstance(layer.padding, str):
                return CondensedConv2d.from_conv(_plain_conv(layer, weight), mask=layer.mask)
            if isinstance(layer, MaskedLinear):
                return CondensedLinear.from_linear(_plain_linear(layer, weight), mask=layer.mask)
        return _plain_conv(layer, weight) if isinstance(layer, MaskedConv2d) else _plain_linear(layer, weight)
    return layer


def _filled(module, weight, bias):
    """``module`` with ``weight`` (and ``bias``, when it has one) copied in."""
    with torch.no_grad():
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.copy_(bias)
    return module


def _plain_linear(layer, weight):
    kw = dict(device=weight.device, dtype=weight.dtype)
    return _filled(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, **kw), weight, layer.bias)


def _plain_conv(layer, weight):
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                     padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                     bias=layer.bias is not None, padding_mode=layer.padding_mode,
                     device=weight.device, dtype=weight.dtype)
    return _filled(conv, weight, layer.bias)


def _condensed_like(layer, values, indices, active_rows, bias, out_features=None, in_features=None):
    """A new condensed layer of ``layer``'s kind holding exactly this pattern."""
    out_features = layer.out_features if out_features is None else out_features
    in_features = layer.in_features if in_features is None else in_features
    k = max(values.shape[1], 1)
    if values.shape[1] == 0:  # every row ablated: keep one zero weight so the layer is valid
        values = values.new_zeros(values.shape[0], 1)
        indices = indices.new_zeros(indices.shape[0], 1)
    kw = dict(bias=bias is not None, device=values.device, dtype=values.dtype, index_dtype=indices.dtype)
    if isinstance(layer, CondensedConv2d):
        new = CondensedConv2d(layer.in_channels, out_features, layer.kernel_size, k, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, **kw)
    else:
        new = CondensedLinear(in_features, out_features, k, **kw)
    new.set_pattern(values, indices, active_rows)
    if bias is not None:
        with torch.no_grad():
            new.bias.copy_(bias)
    return new.eval()


def _active_rows(layer) -> torch.Tensor:
    """Rows (output neurons) with at least one nonzero weight."""
    if isinstance(layer, CondensedLinear):
        return layer.active_rows.clone()
    return torch.nonzero(layer.weight.detach().reshape(layer.weight.shape[0], -1).ne(0).any(1)).flatten()


def _bias_or_zeros(layer):
    n = layer.out_features
    if layer.bias is not None:
        return layer.bias.detach()
    p = layer.values if isinstance(layer, CondensedLinear) else layer.weight
    return torch.zeros(n, device=p.device, dtype=p.dtype)


@torch.no_grad()
def _drop_outputs(layer, keep):
    """``layer`` with only the output rows ``keep`` (ascending, all active)."""
    bias = None if layer.bias is None else layer.bias.detach()[keep].clone()
    if isinstance(layer, CondensedLinear):
        pos = torch.searchsorted(layer.active_rows, keep)  # keep is a subset of the active rows
        cw = layer.condensed_weight()
        return _condensed_like(layer, cw.values[pos].clone(), cw.row_indices[pos].clone(), None, bias, out_features=keep.numel())
    w = layer.weight.detach()[keep]
    return _filled(nn.Linear(layer.in_features, keep.numel(), bias=bias is not None, device=w.device, dtype=w.dtype),
                   w, bias)


@torch.no_grad()
def _drop_inputs(layer, keep, constant):
    """``layer`` reading only the inputs ``keep``; the removed inputs hold the constant
    values ``constant`` (full input width), whose contribution moves into the bias."""
    removed = torch.ones(layer.in_features, dtype=torch.bool, device=constant.device)
    removed[keep] = False
    remap = torch.full((layer.in_features,), -1, dtype=torch.long, device=constant.device)
    remap[keep] = torch.arange(keep.numel(), device=constant.device)
    if not isinstance(layer, CondensedLinear):
        w = layer.weight.detach()
        bias = _bias_or_zeros(layer) + w[:, removed] @ constant[removed].to(w.dtype)
        return _filled(nn.Linear(keep.numel(), layer.out_features, device=w.device, dtype=w.dtype), w[:, keep], bias)
    cw = layer.condensed_weight()
    cols = cw.row_indices.long()  # per row (a group-shared layer exports as G = 1)
    gone = removed[cols]
    shift = (cw.values * constant.to(cw.values.dtype)[cols] * gone).sum(1)
    bias = _bias_or_zeros(layer).clone()
    bias[cw.active_rows] += shift
    # new fan-in: the most kept entries of a row; shorter rows are padded with zero weights
    kept_per_row = (~gone).sum(1)
    k = int(kept_per_row.max()) if kept_per_row.numel() else 0
    order = torch.sort(gone.to(torch.int8), dim=1, stable=True).indices[:, :k]  # kept entries first
    values = cw.values.gather(1, order) * (~gone).gather(1, order)
    new_cols = remap[cols.gather(1, order)].clamp_min(0)
    return _condensed_like(layer, values.clone(), new_cols.to(cw.indices.dtype), cw.active_rows.clone(), bias,
                           in_features=keep.numel())


def _chain(model):
    if hasattr(model, "chain") and callable(model.chain):
        return list(model.chain())
    if isinstance(model, nn.Sequential):
        chain = []
        for name, m in model.named_children():
            if isinstance(m, (nn.Linear, CondensedLinear)) and not isinstance(m, CondensedConv2d):
                chain.append([name, None])
            elif isinstance(m, _ELEMENTWISE) and chain:
                if chain[-1][1] is not None:
                    return []  # two activations in a row: not a plain chain
                chain[-1][1] = m
            elif isinstance(m, nn.Flatten) and not chain:
                continue
            else:
                return []
        return [tuple(c) for c in chain]
    return []


def _set(model, name, module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def export(model: nn.Module, remove_ablated: bool = True, cpu_blocked: bool = False) -> nn.Module:
    """An inference copy of a trained sparse ``model`` (``model`` itself is untouched).

    Args:
        model: a model trained with ``tritonsparse.dst`` (condensed or masked layers).
        remove_ablated: physically remove ablated neurons along linear chains (see the
            module docstring for the supported graph shapes).
        cpu_blocked: finally replace every condensed linear layer by a
            :class:`~tritonsparse.nn.BlockedCondensedLinear` (the weight as column-blocked
            CSR, for CPU inference at small batch on layers whose input does not fit a
            core's L1 cache; buffers only, no training).

    Returns:
        the exported model, in eval mode. Its outputs equal ``model``'s in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(cpu_blocked, bool):
        raise TypeError(f"cpu_blocked must be a bool, got {type(cpu_blocked).__name__}")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "capture_hook", None) is not None:
            m.capture_hook = None
    for name, m in list(model.named_modules()):
        if name and isinstance(m, (CondensedLinear, MaskedLinear, MaskedConv2d)):
            _set(model, name, _compact(m).eval())
    chain = _chain(model) if remove_ablated else []
    for (name, act), (next_name, _) in zip(chain[:-1], chain[1:]):
        layer, nxt = model.get_submodule(name), model.get_submodule(next_name)
        if not isinstance(layer, (nn.Linear, CondensedLinear)) or not isinstance(nxt, (nn.Linear, CondensedLinear)):
            continue
        keep = _active_rows(layer)
        if keep.numel() == layer.out_features or keep.numel() == 0:
            continue
        bias = _bias_or_zeros(layer)
        constant = act(bias) if act is not None else bias  # what the ablated neurons output
        _set(model, next_name, _drop_inputs(nxt, keep, constant).eval())
        _set(model, name, _drop_outputs(layer, keep).eval())
    if cpu_blocked:
        if isinstance(model, CondensedLinear):  # the model is the layer itself
            return BlockedCondensedLinear.from_condensed(model).eval()
        for name, m in list(model.named_modules()):
            if name and isinstance(m, CondensedLinear):
                _set(model, name, BlockedCondensedLinear.from_condensed(m).eval())
    return model

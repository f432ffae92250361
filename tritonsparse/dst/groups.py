"""Dynamic sparse training over group-shared patterns (``CondensedLinear(group_size=G)``).

A group of G consecutive rows shares one index row, so a mask update moves whole group
columns: a (group, column) position is kept, dropped or grown for all G rows at once.
The update is SRigL's / SET's (:func:`~tritonsparse.dst.updates.condensed_update`) run
on the *group layer*: one row per group, with

  * magnitude of a group column: the L2 norm of its G values (drop the smallest);
  * gradient score of a group column: the sum over the group's G rows of |dL/dW|,
    ``sum_r |(dYᵀ X)[gG + r, c]|``, ranked by :func:`tritonsparse.gradient_topk` with
    ``group_size=G``: its fused kernel sums a group's rows tile by tile inside the kernel
    (CUDA, and Triton's interpreter), or its chunked path a chunk of groups at a time;
    the whole (out, in) dense gradient is never formed;
  * ablation (SRigL's γ_sal rule) ablates **whole groups**: all G rows of a group stop
    computing together, since they share one index row. A row inside a live group is
    never ablated alone;
  * the budget: the layer's nonzero budget B (``layer.nnz_budget``) is kept, counted in
    weights: the group layer's budget is B / G group slots, and the new fan-in is
    K = (B / G) // active groups.

Grown weights start at zero; kept weights, and their optimizer state, move with their
(group, column) position.
"""
from __future__ import annotations

import torch

from ..topk import gradient_topk
from .updates import _check_finite, condensed_update, move_optimizer_state

_CHUNK_ELEMS = 1 << 22


def group_gradient_scores(x: torch.Tensor, grad_output: torch.Tensor, group_size: int, rows=None) -> torch.Tensor:
    """(n_groups, in) fp32 scores ``sum_r |(dYᵀ X)[gG + r, :]|`` for the groups ``rows``
    (all when None), a chunk of groups at a time."""
    g = int(group_size)
    n_groups = grad_output.shape[1] // g
    groups = torch.arange(n_groups, device=x.device) if rows is None else rows
    xf = x.float()
    step = max(1, _CHUNK_ELEMS // max(g * x.shape[1], 1))
    parts = []
    for s in range(0, groups.numel(), step):
        sel = groups[s:s + step]
        cols = (sel[:, None] * g + torch.arange(g, device=x.device)).reshape(-1)
        gy = grad_output.index_select(1, cols).float()
        parts.append((gy.t() @ xf).abs().view(sel.numel(), g, -1).sum(1))
    return torch.cat(parts) if parts else xf.new_zeros(0, x.shape[1])


def group_gradient_candidates(x: torch.Tensor, grad_output: torch.Tensor, group_size: int, tf32: bool = False):
    """``candidates(k, exclude, rows=None)`` over groups for :func:`condensed_update`: per
    group the ``k`` columns with the largest group-summed |dL/dW|, best first, ties to the
    smaller column; excluded columns (``exclude`` (n_groups, Kx), -1 ignored) are skipped;
    ``rows`` restricts the answer to those groups; a group with fewer allowed columns is
    padded with column -1 and score -inf. Ranked by :func:`tritonsparse.gradient_topk`
    (``group_size``; ``tf32`` passed on). Raises ``NonFiniteError`` on NaN/inf inputs."""
    _check_finite("the captured layer inputs / output gradients", x, grad_output)
    g = int(group_size)

    def candidates(k, exclude, rows=None):
        gy = grad_output
        if rows is not None:
            cols = (rows[:, None] * g + torch.arange(g, device=rows.device)).reshape(-1)
            gy = grad_output.index_select(1, cols.to(grad_output.device))
            if exclude is not None:
                exclude = exclude[rows]
        if gy.shape[1] == 0:
            empty = torch.empty(0, k, device=x.device)
            return empty, empty.long()
        extra = {"tf32": True} if tf32 else {}
        return gradient_topk(x, gy, k, exclude, group_size=g, **extra)

    return candidates


class _GroupLayer:
    """The group layer that :func:`condensed_update` sees: one row per group, group-column
    magnitudes as its values, and value *positions* as its flat storage so the update's
    choice of kept weights can be read back from what it passes to ``set_pattern``."""

    def __init__(self, layer):
        g = layer.group_size
        self.out_features, self.in_features = layer.out_features // g, layer.in_features
        self.capacity = layer.nnz_budget // g
        self.fan_in = layer.fan_in
        self.active_rows = layer.active_rows[::g] // g
        vals = layer.weight_values.detach().float()
        self.weight_values = vals.view(-1, g, layer.fan_in).norm(dim=1)  # (active groups, K)
        self.weight_indices = layer.weight_indices
        nnz = self.weight_values.numel()
        # position + 1 of every group slot (float64: exact); 0 marks a grown slot
        self.values = torch.arange(1, max(nnz, self.capacity) + 1, dtype=torch.float64, device=vals.device)
        self.result = None

    def set_pattern(self, values, indices, active_rows):
        self.result = (values.long() - 1, indices, active_rows)


@torch.no_grad()
def group_update(layer, optimizer, drop_frac: float, candidates, gamma_sal: float | None):
    """Prune and regrow a ``CondensedLinear(group_size=G)`` in place over group columns
    (see the module docstring); ``candidates`` scores groups (:func:`group_gradient_candidates`
    for SRigL, ``random_candidates(n_groups, ...)`` for SET). Returns the counts of
    :func:`condensed_update`, in weights and rows of the real layer."""
    g = layer.group_size
    view = _GroupLayer(layer)

    def group_candidates(k, exclude, rows=None):
        scores, cols = candidates(k, exclude, rows)
        want = view.out_features if rows is None else rows.numel()
        if cols.shape[0] != want:
            raise ValueError(f"group_update: candidates gave {cols.shape[0]} rows, expected one per group ({want}); "
                             "score groups (group_gradient_candidates), not rows")
        return scores, cols

    stats = condensed_update(view, None, drop_frac, group_candidates, gamma_sal)
    src_slot, cols, act_groups = view.result  # (new groups, K_new): old group slot or -1
    k_old, k_new = layer.fan_in, cols.shape[1]
    dev = layer.values.device
    r = torch.arange(g, device=dev)
    old_group, old_k = src_slot.clamp_min(0) // max(k_old, 1), src_slot.clamp_min(0) % max(k_old, 1)
    old_rows = old_group[:, None, :] * g + r[None, :, None]  # (new groups, G, K_new): row in old weight_values
    old_vals = layer.weight_values.detach()
    grown = (src_slot < 0)[:, None, :].expand_as(old_rows)
    new_vals = torch.where(grown, torch.zeros((), dtype=old_vals.dtype, device=dev),
                           old_vals[old_rows, old_k[:, None, :].expand_as(old_rows)]).reshape(-1, k_new)
    # the flat storage slot of each kept weight, old and new layouts
    old_stride, new_stride = layer._row_stride(k_old), layer._row_stride(k_new)
    old_flat = torch.where(grown, -1, old_rows * old_stride + old_k[:, None, :])
    new_rows = torch.arange(new_vals.shape[0], device=dev).view(-1, g, 1)
    new_flat = new_rows * new_stride + torch.arange(k_new, device=dev)
    src = torch.full((layer.capacity,), -1, dtype=torch.long, device=dev)
    src[new_flat.reshape(-1)] = old_flat.reshape(-1)
    active_rows = (act_groups[:, None] * g + r).reshape(-1)
    layer.set_pattern(new_vals, cols, active_rows)
    move_optimizer_state(optimizer, layer.values, src)
    return {**stats, "pruned": stats["pruned"] * g, "grown": stats["grown"] * g, "active": stats["active"] * g,
            "ablated": stats["ablated"] * g, "nnz": stats["nnz"] * g, "group_size": g}

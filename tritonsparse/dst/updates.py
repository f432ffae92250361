"""One mask update of one layer: SRigL / SET on condensed layers, RigL on masked ones.

Everything works on the condensed arrays, the (out, k) candidate lists from
:func:`tritonsparse.gradient_topk` and O(nnz) index sets: no dense weight or dense
weight gradient is formed for condensed layers. Sorts are stable, so equal magnitudes
or scores are ranked by position and an update is deterministic.
"""
from __future__ import annotations

import math

import torch

from ..topk import gradient_topk


def _top_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask of the ``n`` largest entries of ``scores`` (any shape), ties to the
    earlier flat position."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:n]] = True
    return mask.view(scores.shape)


def _row_rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row (0 = largest), ties to the smaller column."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return rank


def move_optimizer_state(optimizer, param: torch.Tensor, src: torch.Tensor | None, keep: torch.Tensor | None = None):
    """Carry per-element state along with a parameter whose entries moved.

    Every tensor in ``optimizer.state[param]`` shaped like ``param`` (momentum_buffer,
    exp_avg, exp_avg_sq, ...) is rewritten: with ``src`` (flat, numel of param), entry i
    takes old entry ``src[i]`` or zero where ``src[i] < 0``; with ``keep`` (bool, param's
    shape), entries outside ``keep`` become zero. The gradient, if any, is moved the same way.
    """
    tensors = []
    if optimizer is not None and param in optimizer.state:
        tensors = [v for v in optimizer.state[param].values() if torch.is_tensor(v) and v.shape == param.shape]
    if param.grad is not None:
        tensors.append(param.grad)
    with torch.no_grad():
        for t in tensors:
            if src is not None:
                flat = t.reshape(-1)
                ok = src >= 0
                new = torch.zeros_like(flat)
                new[ok] = flat[src[ok]]
                flat.copy_(new)
            if keep is not None:
                t.mul_(keep.to(t.dtype))


def _keys(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    return rows.long() * width + cols.long()


@torch.no_grad()
def condensed_update(layer, optimizer, drop_frac: float, candidates, gamma_sal: float | None):
    """Prune and regrow one :class:`~tritonsparse.nn.CondensedLinear` (or conv) in place.

    Args:
        layer: the condensed layer; its budget is its flat capacity B.
        optimizer: optimizer holding ``layer.values`` (its state moves with the weights).
        drop_frac: α_t; n_prune = floor(α_t · nnz).
        candidates: ``candidates(k, exclude)`` -> (scores, cols), each (out, k), per row
            best first (``gradient_topk`` for SRigL, random scores for SET).
        gamma_sal: ablation threshold γ_sal (a neuron with fewer than γ_sal·K salient
            weights is ablated), or None for no ablation (SET, or protected layers).

    Returns a dict of what happened (counts), for logging.
    """
    out_f, in_f, budget = layer.out_features, layer.in_features, layer.capacity
    k_old, act_old = layer.fan_in, layer.active_rows
    dev = layer.values.device
    vals = layer.weight_values.detach()
    cols_old = layer.weight_indices.long()
    n_a = act_old.numel()
    nnz = n_a * k_old
    n_prune = int(math.floor(drop_frac * nnz))
    n_keep = nnz - n_prune
    mag_keep = _top_mask(vals.abs(), n_keep)  # layer-wide magnitude salient / kept (n_a, K)

    k1 = min(in_f, 2 * k_old)
    cand_s, cand_c = candidates(k1, None)
    all_rows = torch.arange(out_f, device=dev)

    # -- ablation: per-neuron count of salient weights ---------------------------------
    if gamma_sal is not None:
        # layer-wide top n_prune by |grad| over all positions; a row never counts more
        # than K (its top-K candidates), so the per-row top-K lists are enough.
        top_k = cand_s[:, :k_old]
        g_sal = _top_mask(torch.where(cand_c[:, :k_old] >= 0, top_k, -1.0), n_prune)
        g_rows = all_rows[:, None].expand_as(g_sal)[g_sal]
        g_keys = _keys(g_rows, cand_c[:, :k_old][g_sal], in_f)
        m_rows = act_old[:, None].expand_as(mag_keep)[mag_keep]
        m_keys = _keys(m_rows, cols_old[mag_keep], in_f)
        both = g_rows[torch.isin(g_keys, m_keys)]
        count = (torch.bincount(m_rows, minlength=out_f) + torch.bincount(g_rows, minlength=out_f)
                 - torch.bincount(both, minlength=out_f))
        n_salient = int((count >= gamma_sal * k_old).sum())
        n_new = min(out_f, max(n_salient, -(-budget // in_f), 1))
        order = torch.sort(count, descending=True, stable=True).indices
        act_new = order[:n_new].sort().values
    else:
        act_new = act_old
    n_new = act_new.numel()
    k_new = min(in_f, budget // n_new)

    # -- prune: layer-wide magnitude, then each surviving row keeps its K_new largest --
    row_alive = torch.zeros(out_f, dtype=torch.bool, device=dev)
    row_alive[act_new] = True
    keep = mag_keep & row_alive[act_old][:, None]
    keep &= _row_rank(torch.where(keep, vals.abs(), -1.0)) < k_new

    full_keep = torch.zeros(out_f, k_old, dtype=torch.bool, device=dev)
    full_cols = torch.zeros(out_f, k_old, dtype=torch.long, device=dev)
    full_src = torch.full((out_f, k_old), -1, dtype=torch.long, device=dev)
    full_keep[act_old], full_cols[act_old] = keep, cols_old
    full_src[act_old] = torch.arange(nnz, device=dev).view(n_a, k_old)
    kept, kept_cols, kept_src = full_keep[act_new], full_cols[act_new], full_src[act_new]
    need = k_new - kept.sum(1)

    # -- regrow: each row refills to K_new from its best non-kept positions -----------
    if k1 < min(in_f, k_old + k_new):  # the first list may be too short: ask again, excluding the kept
        exclude = torch.full((out_f, k_old), -1, dtype=torch.long, device=dev)
        exclude[act_new] = torch.where(kept, kept_cols, -1)
        cand_s, cand_c = candidates(k_new, exclude)
    c = cand_c[act_new]
    valid = (c >= 0) & ~torch.isin(_keys(act_new[:, None].expand_as(c), c, in_f),
                                   _keys(act_new[:, None].expand_as(kept_cols)[kept], kept_cols[kept], in_f))
    grow = valid & ((torch.cumsum(valid, dim=1) - 1) < need[:, None])
    if not torch.equal(grow.sum(1), need):
        raise RuntimeError("regrowth found too few candidates (internal error)")

    sel = torch.cat([kept, grow], 1)
    order = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :k_new]
    new_cols = torch.cat([kept_cols, c.clamp_min(0)], 1).gather(1, order)
    new_src = torch.cat([kept_src, torch.full_like(c, -1)], 1).gather(1, order)
    by_col = new_cols.sort(dim=1).indices
    new_cols, new_src = new_cols.gather(1, by_col), new_src.gather(1, by_col)

    src = torch.full((budget,), -1, dtype=torch.long, device=dev)
    src[: new_src.numel()] = new_src.reshape(-1)
    old_values = layer.values.detach().clone()
    new_values = torch.where(new_src >= 0, old_values[new_src.clamp_min(0)], torch.zeros((), dtype=old_values.dtype, device=dev))
    layer.set_pattern(new_values, new_cols, act_new)
    move_optimizer_state(optimizer, layer.values, src)
    return {"pruned": n_prune, "grown": int(need.sum()), "active": n_new, "fan_in": k_new,
            "ablated": out_f - n_new, "nnz": n_new * k_new}


def gradient_candidates(x: torch.Tensor, grad_output: torch.Tensor):
    """``candidates(k, exclude)`` for :func:`condensed_update` from a captured layer
    input (B, in) and output gradient (B, out), via :func:`gradient_topk`."""

    def candidates(k, exclude):
        return gradient_topk(x, grad_output, k, exclude)

    return candidates


def random_candidates(out_features: int, in_features: int, device, generator: torch.Generator):
    """``candidates(k, exclude)`` with uniform random scores (SET), drawn on the CPU from
    ``generator`` in row chunks (excluded columns are filtered by the caller's check)."""

    def candidates(k, exclude):
        kk = min(in_features, k + (exclude.shape[1] if exclude is not None else 0))
        chunk = max(1, (1 << 22) // max(in_features, 1))
        scores, cols = [], []
        for r0 in range(0, out_features, chunk):
            r = min(chunk, out_features - r0)
            s, c = torch.rand(r, in_features, generator=generator).topk(kk, dim=1)
            scores.append(s)
            cols.append(c)
        return torch.cat(scores).to(device), torch.cat(cols).to(device)

    return candidates


@torch.no_grad()
def masked_update(layer, optimizer, drop_frac: float, grad: torch.Tensor | None, generator: torch.Generator | None = None):
    """RigL (``grad`` given) or random-regrowth (``grad`` None) update of a masked layer:
    drop the n_prune = floor(α_t·nnz) smallest active magnitudes layer-wide, regrow as
    many positions not active after the drop with the largest |grad| (or at random);
    grown weights and their optimizer state start at zero."""
    w, mask = layer.weight, layer.mask
    nnz = int(mask.sum())
    n_prune = int(math.floor(drop_frac * nnz))
    if n_prune == 0:
        return {"pruned": 0, "grown": 0, "nnz": nnz}
    score = torch.where(mask, w.detach().abs(), -1.0)
    kept = _top_mask(score, nnz - n_prune)
    if grad is None:
        g = torch.rand(w.shape, generator=generator).to(w.device)
    else:
        g = grad.abs().to(torch.float32)
    grow = _top_mask(torch.where(kept, -1.0, g), n_prune)
    new_mask = kept | grow
    w.mul_(kept.to(w.dtype))  # grown and dropped weights are zero
    move_optimizer_state(optimizer, w, None, keep=kept)
    mask.copy_(new_mask)
    return {"pruned": n_prune, "grown": n_prune, "nnz": int(new_mask.sum())}

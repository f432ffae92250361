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


class NonFiniteError(ValueError):
    """The gradients or weights of a layer hold NaN or inf at an update step: the update
    is refused before anything changes (:class:`~tritonsparse.dst.DynamicSparsity`
    catches it, keeps the pattern and counts the skip)."""


def _check_finite(what: str, *tensors):
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{what} hold NaN or inf")


def _keys(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    return rows.long() * width + cols.long()


def salient_gradient_positions(candidates, out_features: int, in_features: int, n: int, first=None) -> torch.Tensor:
    """Flat keys ``row * in_features + col`` of the exact layer-wide top ``n`` of
    ``|dL/dW|`` over all ``out_features x in_features`` positions, without the dense
    gradient; ties are broken by flat (row-major) position.

    ``candidates(k, exclude, rows)`` gives each row's top-k (best first, equal scores by
    ascending column, as :func:`~tritonsparse.gradient_topk`), for the given ``rows``
    only. Let τ be the n-th largest score among the candidates held so far. A row whose
    last candidate scores below τ holds every one of its positions at or above τ, so
    once that is true of every row τ is the exact layer-wide n-th largest score and the
    top ``n`` are all among the candidates. Rows for which it is not true (a row holding
    more than its share of the layer-wide top, or ties at τ) get lists twice as long,
    until it is. Scores are ``|.|`` (>= 0): when τ = 0, a row whose list ends at 0 is
    all zeros past it, and those zeros are ties counted without listing them.

    ``first`` = ``(scores, cols)`` of an earlier ``candidates(m, None, None)`` call to
    start from. Returns an int64 tensor of ``n`` keys, ascending.
    """
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    if first is None:
        first = candidates(min(in_features, 2), None, None)
    s, c = first
    s, c = s.clone(), c.clone()
    dev = s.device
    m = torch.full((out_features,), s.shape[1], dtype=torch.long, device=dev)  # listed columns per row
    rows_all = torch.arange(out_features, device=dev)
    while True:
        valid = c >= 0
        flat = s[valid]
        last = s[rows_all, (m - 1).clamp_min(0)]
        open_ = m < in_features
        if flat.numel() >= n:
            tau = flat.topk(n).values[-1]
            need = open_ & ((last > tau) | ((last == tau) & (tau > 0)))
        else:  # fewer candidates than n: every open row must list more
            tau, need = None, open_
            if not bool(need.any()):
                raise ValueError(f"n={n} is more than the layer's {flat.numel()} positions")
        if not bool(need.any()):
            break
        rows = need.nonzero().flatten()
        k = min(in_features, 2 * int(m[rows].max()))
        s2, c2 = candidates(k, None, rows)
        if k > s.shape[1]:
            pad = k - s.shape[1]
            s = torch.cat([s, torch.full((out_features, pad), float("-inf"), device=dev)], 1)
            c = torch.cat([c, torch.full((out_features, pad), -1, dtype=c.dtype, device=dev)], 1)
        s[rows], c[rows] = float("-inf"), -1
        s[rows, :k], c[rows, :k] = s2.to(s.dtype), c2.to(c.dtype)
        m[rows] = k

    valid = c >= 0
    gt = valid & (s > tau)
    eq = valid & (s == tau)
    quota = n - int(gt.sum())
    implicit = (m < in_features) & bool(tau == 0)  # unlisted zeros: ties at τ = 0
    ties = eq.sum(1) + torch.where(implicit, in_features - m, torch.zeros_like(m))
    take = (quota - (torch.cumsum(ties, 0) - ties)).clamp(min=0)
    take = torch.minimum(take, ties)  # ties taken by each row, in row order
    dense_rows = (take > 0) & implicit
    # explicit ties, ascending column within a row (the candidates' order for equal scores)
    pick = gt | (eq & (torch.cumsum(eq, 1) <= take[:, None]) & ~dense_rows[:, None])
    keys = [_keys(rows_all[:, None].expand_as(c)[pick], c[pick], in_features)]
    if bool(dense_rows.any()):  # rows whose ties include unlisted zeros: their tie columns, densely
        r = dense_rows.nonzero().flatten()
        zero = torch.ones(r.numel(), in_features + 1, dtype=torch.bool, device=dev)
        pos = valid[r] & (s[r] > 0)
        zero.scatter_(1, torch.where(pos, c[r], in_features).long(), False)
        zero = zero[:, :in_features]
        chosen = zero & (torch.cumsum(zero, 1) <= take[r][:, None])
        keys.append(_keys(r[:, None].expand_as(chosen)[chosen], torch.arange(in_features, device=dev).expand_as(chosen)[chosen], in_features))
    out = torch.cat(keys).sort().values
    if out.numel() != n:
        raise RuntimeError(f"salient set has {out.numel()} positions, expected {n} (internal error)")
    return out


def _ablation(count: torch.Tensor, threshold: int, min_neurons: int):
    """Surviving rows (ascending) given per-row salient counts: rows with fewer than
    ``threshold`` salient weights are ablated, but the threshold is first lowered to the
    count of the (min_neurons + 1)-th best row, so that row and every row tied with it
    survive (with a count of 0 nothing is ablated). Returns (rows, threshold used).

    The reference indexes the (min_neurons + 1)-th row without a bound check; a layer
    whose budget could hold every row dense (min_neurons >= rows) ablates nothing here."""
    ranked = count.sort(descending=True).values
    floor_count = int(ranked[min(min_neurons, count.numel() - 1)])
    threshold = min(threshold, floor_count)
    return (count >= threshold).nonzero().flatten(), threshold


@torch.no_grad()
def condensed_update(layer, optimizer, drop_frac: float, candidates, gamma_sal: float | None):
    """Prune and regrow one :class:`~tritonsparse.nn.CondensedLinear` (or conv) in place,
    with the rules of the SRigL authors' ``RigLConstFanScheduler`` (calgaryml/condensed-sparsity,
    ``use_sparse_const_fan_in_for_ablation=True``, the configuration of the paper).

    With nnz active weights, B the layer's budget (its flat capacity) and K0 = B // out
    the fan-in it started with:

    1. n_prune = floor(α_t · nnz), n_keep = nnz - n_prune.
    2. Ablation (``gamma_sal`` given). A weight position is salient if it is among the
       layer-wide top n_keep active magnitudes or among the layer-wide top n_prune
       |dL/dW| over *all* out x in positions (active ones included; found exactly,
       without the dense gradient, by :func:`salient_gradient_positions`). A neuron
       with fewer than ``max(1, int(γ_sal · K0))`` salient positions is ablated; K0 is
       fixed, so ablation does not raise its own threshold. To keep at least
       B // in + 1 neurons, the threshold is first lowered to the salient count of the
       (B // in + 1)-th best neuron: every neuron tied with it survives, and if that
       count is 0 nothing is ablated. An ablated neuron with salient gradients can
       come back. New fan-in K = B // surviving neurons (<= in by construction).
    3. Kept set: the top n_keep active magnitudes among the surviving neurons (taken
       again after ablation, so weights of a surviving neuron that would have been
       dropped can stay), then each neuron keeps at most K of them, its largest.
    4. Regrowth: each surviving neuron refills to exactly K from its largest |dL/dW|
       (from ``candidates``) among positions it did not keep (a just-dropped position
       can come back).

    Where the package deliberately differs from that code (its behaviour is wrong there):
    a neuron with more than K kept weights keeps its largest (the reference sorts a
    boolean row and keeps its lowest columns); a position dropped and regrown in the
    same update starts again at zero value and zero optimizer state (the reference
    keeps its old value and momentum); every per-element optimizer state (Adam's
    ``exp_avg``/``exp_avg_sq`` included) moves with its weight (the reference leaves
    them stale); active weights are told apart from inactive ones by the pattern, not
    by a nonzero value (the reference counts a zero-valued active weight as inactive
    and an inactive zero as keepable). Equal scores are ranked by position (stable).

    Args:
        layer: the condensed layer; its budget is its flat capacity B.
        optimizer: optimizer holding ``layer.values`` (its state moves with the weights).
        drop_frac: α_t.
        candidates: ``candidates(k, exclude, rows=None)`` -> (scores, cols), each
            (rows, k), per row best first (:func:`gradient_candidates` for SRigL,
            :func:`random_candidates` for SET).
        gamma_sal: ablation threshold γ_sal in (0, 1], or None for no ablation (SET,
            protected layers).

    Returns a dict of counts, for logging. Raises :class:`NonFiniteError` (nothing
    changed) if the weights or the candidate scores hold NaN or inf.
    """
    out_f, in_f, budget = layer.out_features, layer.in_features, layer.capacity
    k_old, act_old = layer.fan_in, layer.active_rows
    dev = layer.values.device
    vals = layer.weight_values.detach()
    _check_finite("the weights", vals)
    cols_old = layer.weight_indices.long()
    n_a = act_old.numel()
    nnz = n_a * k_old
    n_prune = int(math.floor(drop_frac * nnz))
    n_keep = nnz - n_prune

    m0 = min(in_f, 2 * k_old)
    cand_s, cand_c = candidates(m0, None)
    if bool(torch.isnan(cand_s).any()) or bool((cand_s == float("inf")).any()):
        raise NonFiniteError("the gradient scores hold NaN or inf")
    threshold = None

    # -- ablation (D1-D4 of issue 9) ---------------------------------------------------
    if gamma_sal is not None:
        mag_keep = _top_mask(vals.abs(), n_keep)  # layer-wide magnitude salient set
        g_keys = salient_gradient_positions(candidates, out_f, in_f, n_prune, first=(cand_s, cand_c)).to(dev)
        m_rows = act_old[:, None].expand_as(mag_keep)[mag_keep]
        m_keys = _keys(m_rows, cols_old[mag_keep], in_f)
        g_rows = g_keys // in_f
        both = m_rows[torch.isin(m_keys, g_keys)]
        count = (torch.bincount(m_rows, minlength=out_f) + torch.bincount(g_rows, minlength=out_f)
                 - torch.bincount(both, minlength=out_f))
        k0 = budget // out_f
        act_new, threshold = _ablation(count, max(1, int(gamma_sal * k0)), budget // in_f)
    else:
        act_new = act_old
    n_new = act_new.numel()
    k_new = min(in_f, budget // n_new)

    # -- kept set: top n_keep magnitudes among the surviving rows, then K_new per row (D5)
    row_alive = torch.zeros(out_f, dtype=torch.bool, device=dev)
    row_alive[act_new] = True
    alive_old = row_alive[act_old]
    keep = _top_mask(torch.where(alive_old[:, None], vals.abs(), -1.0), min(n_keep, int(alive_old.sum()) * k_old))
    keep &= _row_rank(torch.where(keep, vals.abs(), -1.0)) < k_new

    full_keep = torch.zeros(out_f, k_old, dtype=torch.bool, device=dev)
    full_cols = torch.zeros(out_f, k_old, dtype=torch.long, device=dev)
    full_src = torch.full((out_f, k_old), -1, dtype=torch.long, device=dev)
    full_keep[act_old], full_cols[act_old] = keep, cols_old
    full_src[act_old] = torch.arange(nnz, device=dev).view(n_a, k_old)
    kept, kept_cols, kept_src = full_keep[act_new], full_cols[act_new], full_src[act_new]
    need = k_new - kept.sum(1)

    # -- regrow: each row refills to K_new from its best non-kept positions -----------
    if m0 < k_new:  # a row's first K_new candidates always hold enough non-kept ones
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
            "ablated": out_f - n_new, "nnz": n_new * k_new, "threshold": threshold}


def gradient_candidates(x: torch.Tensor, grad_output: torch.Tensor, tf32: bool = False):
    """``candidates(k, exclude, rows=None)`` for :func:`condensed_update` from a captured
    layer input (B, in) and output gradient (B, out), via :func:`gradient_topk`; ``rows``
    restricts the answer to those output rows. Ranking is exact fp32 by default
    (``tf32=True`` lets the GPU kernel rank in TF32, ~1e-3 relative error). Raises
    :class:`NonFiniteError` if ``x`` or ``grad_output`` hold NaN or inf."""
    _check_finite("the captured layer inputs / output gradients", x, grad_output)
    extra = {"tf32": True} if tf32 else {}

    def candidates(k, exclude, rows=None):
        g = grad_output if rows is None else grad_output[:, rows]
        ex = exclude if (rows is None or exclude is None) else exclude[rows]
        return gradient_topk(x, g, k, ex, **extra)

    return candidates


def random_candidates(out_features: int, in_features: int, device, generator: torch.Generator):
    """``candidates(k, exclude, rows=None)`` with uniform random scores (SET), drawn on
    the CPU from ``generator`` in row chunks (excluded columns are filtered by the
    caller's check; ``rows`` is not supported: SET has no gradient salient set)."""

    def candidates(k, exclude, rows=None):
        if rows is not None:
            raise ValueError("random candidates cover all rows (rows must be None)")
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
    grown weights and their optimizer state start at zero. Raises :class:`NonFiniteError`
    (nothing changed) if the weights or ``grad`` hold NaN or inf."""
    w, mask = layer.weight, layer.mask
    _check_finite("the weights", w.detach())
    _check_finite("the dense gradients", grad)
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

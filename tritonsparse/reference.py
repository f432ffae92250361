"""Plain-PyTorch versions of every op: the references the kernels are tested against.

These are written for clarity, not speed (they build the dense weight). The fast CPU
path lives in :mod:`tritonsparse.cpu`.
"""
from __future__ import annotations

import torch


def condensed_to_dense(values: torch.Tensor, indices: torch.Tensor, in_features: int) -> torch.Tensor:
    """Dense (n, in_features) weight of a condensed one; repeated indices in a row add up."""
    dense = torch.zeros(values.shape[0], in_features, dtype=values.dtype, device=values.device)
    return dense.scatter_add_(1, indices.long(), values)


def condensed_matmul_reference(x, values, indices, bias=None):
    """y[..., j] = sum_k values[j, k] * x[..., indices[j, k]] + bias[j], via the dense weight."""
    weight = condensed_to_dense(values, indices, x.shape[-1])
    return torch.nn.functional.linear(x, weight, bias)


def condensed_grad_reference(x, values, indices, grad_out):
    """(dX, dValues) of ``condensed_matmul`` by the dense formulas:
    dX = dY @ W and dValues[j, k] = (dYᵀ X)[j, indices[j, k]]."""
    weight = condensed_to_dense(values, indices, x.shape[-1])
    rows = x.shape[:-1].numel()  # not reshape(-1, ...): a last dimension of 0 is allowed
    x2 = x.reshape(rows, x.shape[-1])
    g2 = grad_out.reshape(rows, grad_out.shape[-1])
    grad_x = (g2 @ weight).reshape(x.shape)
    grad_values = (g2.t() @ x2).gather(1, indices.long())
    return grad_x, grad_values


def gradient_topk_reference(x, grad_output, k, exclude=None):
    """Per output row, the ``k`` columns with the largest ``|(grad_outputᵀ x)[row, d]|``
    (skipping the columns listed in ``exclude`` (out, Kx), negative entries ignored),
    via the dense (out, in) product in fp32. Ties go to the smaller column. Returns
    ``(scores fp32, indices int64)``, each (out, k), best first; a row with fewer than
    ``k`` allowed columns is padded with index -1 and score -inf. A NaN score is never
    selected (treated like an excluded column), as in the Triton kernel."""
    scores = (grad_output.float().t() @ x.float()).abs()
    scores.masked_fill_(scores.isnan(), -float("inf"))
    out_features, in_features = scores.shape
    if exclude is not None and exclude.numel():
        ex = exclude.long()
        rows = torch.arange(out_features, device=scores.device)[:, None].expand_as(ex)
        keep = ex >= 0
        scores[rows[keep], ex[keep]] = -float("inf")
    # stable sort on the negated scores: equal scores keep ascending column order
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    top = scores.gather(1, order)
    order = torch.where(top == -float("inf"), torch.full_like(order, -1), order)
    return top, order

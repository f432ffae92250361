"""Layer-wise densities for a global sparsity target: uniform and ERK."""
from __future__ import annotations

import math


def _check_density(density):
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")


def _check_shapes(shapes):
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError("shapes must be a non-empty dict {layer_name: weight shape}")
    for name, s in shapes.items():
        if len(s) < 2 or any(int(d) < 1 for d in s):
            raise ValueError(f"shapes[{name!r}] must be a weight shape (out, in, ...) of positive sizes, got {tuple(s)}")


def uniform_densities(shapes: dict, density: float) -> dict:
    """Every layer gets ``density``."""
    _check_shapes(shapes)
    _check_density(density)
    return {name: float(density) for name in shapes}


def erk_densities(shapes: dict, density: float, power_scale: float = 1.0) -> dict:
    """Erdős–Rényi-Kernel densities (Evci et al., RigL) for a global ``density``.

    Layer l gets density ε·((Σ dims)/(Π dims))^power_scale, e.g. ε·(out+in)/(out·in)
    for a linear layer and ε·(out+in+kh+kw)/(out·in·kh·kw) for a conv. Layers that
    would exceed density 1 are made dense and ε is solved again for the rest, so that
    ``Σ density_l · numel_l == density · Σ numel_l`` exactly (up to float rounding).

    Args:
        shapes: {layer_name: weight shape}, e.g. (out, in) or (out, in, kh, kw).
        density: the global fraction of nonzeros, in (0, 1].
        power_scale: exponent on the ERK ratio (1: ERK, 0: uniform).

    Returns:
        {layer_name: density in (0, 1]}.
    """
    _check_shapes(shapes)
    _check_density(density)
    numel = {n: math.prod(int(d) for d in s) for n, s in shapes.items()}
    raw = {n: (sum(int(d) for d in s) / numel[n]) ** power_scale for n, s in shapes.items()}
    dense: set = set()
    while True:
        rhs = sum(numel[n] * density for n in shapes) - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        if divisor <= 0:  # everything dense
            return {n: 1.0 for n in shapes}
        eps = rhs / divisor
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def layer_densities(shapes: dict, density: float, distribution: str = "erk") -> dict:
    """``"uniform"`` or ``"erk"`` densities (see :func:`uniform_densities`, :func:`erk_densities`)."""
    if distribution == "uniform":
        return uniform_densities(shapes, density)
    if distribution == "erk":
        return erk_densities(shapes, density)
    raise ValueError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")

"""Shared test helpers: random constant fan-in problems and per-dtype tolerances."""
import math

import torch

from tritonsparse.reference import condensed_grad_reference, condensed_matmul_reference


def random_indices(n, k, in_features, dtype=torch.int32, generator=None):
    """(n, k) distinct column indices per row, unsorted."""
    rows = [torch.randperm(in_features, generator=generator)[:k] for _ in range(n)]
    return torch.stack(rows).to(dtype) if rows else torch.zeros(0, k, dtype=dtype)


def tolerances(dtype, reduction):
    """(rtol, atol) for a sum of ``reduction`` products of unit-scale numbers in ``dtype``
    (fp32 accumulation), compared with an fp64 reference."""
    eps = {torch.float32: 1.2e-7, torch.float16: 9.8e-4, torch.bfloat16: 7.8e-3}[dtype]
    scale = math.sqrt(max(reduction, 1))
    return 4 * eps, 8 * eps * scale


def assert_close(actual, expected, dtype, reduction, name):
    rtol, atol = tolerances(dtype, reduction)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def reference_outputs(x, values, indices, bias, grad_out):
    """fp64 forward and gradients computed from the same (rounded) inputs."""
    xd, vd = x.detach().double(), values.detach().double()
    bd = bias.detach().double() if bias is not None else None
    y = condensed_matmul_reference(xd, vd, indices, bd)
    gx, gv = condensed_grad_reference(xd, vd, indices, grad_out.double())
    gb = grad_out.double().reshape(-1, grad_out.shape[-1]).sum(0)
    return y, gx, gv, gb


def load_script(path):
    """Import a benchmark script (not a package module) by file path."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

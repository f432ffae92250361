"""Mask-update invariants of SRigL / SET / RigL in seeded randomized loops (torch backend)."""
import math

import pytest
import torch
from torch import nn

from tritonsparse.dst import (DynamicSparsity, UpdateSchedule, condensed_update, drop_fraction, erk_densities,
                              masked_update, sparsify, uniform_densities)
from tritonsparse.dst.updates import gradient_candidates, random_candidates
from tritonsparse.nn import CondensedConv2d, CondensedLinear


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _pattern(layer):
    """{(row, col): (value, momentum)} of the layer's nonzeros."""
    mom = layer._opt.state[layer.values].get("momentum_buffer") if hasattr(layer, "_opt") else None
    out = {}
    vals, idx = layer.weight_values.detach(), layer.weight_indices.long()
    flat_mom = mom[: vals.numel()].view_as(vals) if mom is not None else torch.zeros_like(vals)
    for i, r in enumerate(layer.active_rows.tolist()):
        for j in range(layer.fan_in):
            out[(r, int(idx[i, j]))] = (float(vals[i, j]), float(flat_mom[i, j]))
    return out


def check_condensed(layer, budget):
    k, n = layer.fan_in, layer.n_active
    idx = layer.weight_indices.long()
    assert 1 <= k <= layer.in_features
    assert n * k <= budget, "nonzeros over budget"
    assert int(layer.active_mask.sum()) == n
    if n:
        srt = idx.sort(dim=1).values
        assert (srt[:, 1:] != srt[:, :-1]).all(), "duplicate index in a row"
        assert idx.min() >= 0 and idx.max() < layer.in_features
    # storage past n*K is empty, ablated rows have no weight
    assert (layer.values.detach()[n * k:] == 0).all()
    dense = layer.to_dense_weight()
    assert (dense[~layer.active_mask] == 0).all()


def _step_momentum(layer, opt):
    layer.values.grad = torch.randn_like(layer.values)
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("method", ["srigl", "set"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_condensed_updates_keep_invariants(method, seed):
    """Hundreds of updates on small layers with random weights and gradients."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out_f, in_f = [(13, 29), (7, 5), (24, 40)][seed]
    k0 = max(1, in_f // 4)
    layer = CondensedLinear(in_f, out_f, k0, capacity=out_f * k0 + seed)
    budget = layer.capacity
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer._opt = opt
    values_obj = layer.values
    ablated_any = False
    for it in range(120):
        _step_momentum(layer, opt)
        before = _pattern(layer)
        alpha = float(torch.rand((), generator=g)) * 0.5
        if method == "srigl":
            b = int(torch.randint(1, 9, (), generator=g))
            x = torch.randn(b, in_f, generator=g)
            gy = torch.randn(b, out_f, generator=g) * (torch.rand(out_f, generator=g) < 0.6)  # some dead rows
            info = condensed_update(layer, opt, alpha, gradient_candidates(x, gy), gamma_sal=0.3)
        else:
            info = condensed_update(layer, opt, alpha, random_candidates(out_f, in_f, "cpu", g), gamma_sal=None)
        assert layer.values is values_obj  # the optimizer's parameter never changes
        check_condensed(layer, budget)
        after = _pattern(layer)
        assert info["nnz"] == layer.n_active * layer.fan_in
        assert layer.fan_in == min(in_f, budget // layer.n_active)
        assert layer.n_active >= math.ceil(budget / in_f)
        ablated_any |= layer.n_active < out_f
        # kept weights keep value and state; grown ones (a just-dropped position may
        # be regrown) start at zero value and state
        n_same = 0
        for pos, (v, m) in after.items():
            if pos in before and (v, m) == before[pos]:
                n_same += 1
            else:
                assert v == 0.0 and m == 0.0
        assert n_same == info["nnz"] - info["grown"]
        if method == "set":
            assert layer.n_active == out_f
    if method == "srigl" and seed != 1:
        assert ablated_any  # the dead rows get ablated


def test_srigl_prune_counts_and_regrow_by_gradient():
    """One update with known weights and gradient: the smallest magnitudes go, the
    largest |grad| positions come in, fan-in stays."""
    layer = CondensedLinear(8, 2, 4, bias=False)
    vals = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    cols = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    layer.set_pattern(vals, cols)
    x = torch.zeros(1, 8)
    x[0, 7], x[0, 6] = 3.0, 2.0
    gy = torch.ones(1, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    info = condensed_update(layer, opt, 0.25, gradient_candidates(x, gy), gamma_sal=None)
    assert info["pruned"] == 2
    # weights 1 and 2 (row 0) are the smallest: row 0 regrows columns 7 and 6
    assert layer.weight_indices.tolist() == [[2, 3, 6, 7], [0, 1, 2, 3]]
    assert layer.weight_values.tolist() == [[3.0, 4.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]]


def test_srigl_ablates_and_revives():
    """A neuron with no salient weight is ablated, the budget is shared by the others
    (larger fan-in); a neuron whose gradient becomes large comes back."""
    layer = CondensedLinear(16, 4, 2, bias=False)
    layer.set_pattern(torch.tensor([[5.0, 5.0], [4.0, 4.0], [3.0, 3.0], [1e-3, 1e-3]]),
                      torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.ones(1, 16)
    gy = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    condensed_update(layer, opt, 0.3, gradient_candidates(x, gy), gamma_sal=0.3)
    assert layer.active_rows.tolist() == [0, 1, 2] and layer.fan_in == 2  # floor(8 / 3)
    gy = torch.tensor([[0.0, 0.0, 0.0, 100.0]])
    condensed_update(layer, opt, 0.3, gradient_candidates(x, gy), gamma_sal=0.3)
    assert 3 in layer.active_rows.tolist()
    check_condensed(layer, 8)


def test_ablation_never_needs_more_than_in_features():
    layer = CondensedLinear(4, 6, 3, bias=False)  # budget 18 needs >= 5 rows of 4
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.ones(2, 4)
    gy = torch.zeros(2, 6)
    gy[:, 0] = 1.0
    condensed_update(layer, opt, 0.5, gradient_candidates(x, gy), gamma_sal=0.99)
    assert layer.n_active == 5 and layer.fan_in == 3
    check_condensed(layer, 18)


def test_rigl_masked_update_invariants():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 16))
    sparsify(m, 0.8, method="rigl", distribution="uniform")
    layer = m[0]
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    nnz0 = layer.nnz
    for it in range(100):
        loss = m(torch.randn(4, 20)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        w_before, mask_before = layer.weight.detach().clone(), layer.mask.clone()
        state = {k: v.clone() for k, v in opt.state[layer.weight].items() if v.shape == layer.weight.shape}
        info = masked_update(layer, opt, 0.3, torch.randn(16, 20))
        assert layer.nnz == nnz0
        # kept: unchanged; the rest of the mask (grown, possibly just dropped) is zero
        kept = layer.mask & mask_before & (layer.weight == w_before) & (w_before != 0)
        assert int(kept.sum()) == nnz0 - info["grown"]
        assert (layer.weight[~kept] == 0).all()
        for k, v in opt.state[layer.weight].items():
            if v.shape == layer.weight.shape:
                assert (v[~kept] == 0).all() and torch.equal(v[kept], state[k][kept])


def test_schedule_values():
    s = UpdateSchedule(total_steps=1000, delta_t=100, t_end=0.75, alpha=0.3)
    assert [t for t in range(1, 1001) if s.is_update(t)] == [100, 200, 300, 400, 500, 600, 700]
    assert s.drop_fraction(0) == pytest.approx(0.3)
    assert s.drop_fraction(375) == pytest.approx(0.15)
    assert s.drop_fraction(750) == 0.0
    assert drop_fraction(100, 0.3, 750) == pytest.approx(0.15 * (1 + math.cos(math.pi * 100 / 750)))
    with pytest.raises(ValueError, match="delta_t"):
        UpdateSchedule(10, delta_t=0)


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.9])
def test_erk_densities_sum_to_target(density):
    shapes = {"conv1": (64, 3, 7, 7), "conv2": (128, 64, 3, 3), "fc1": (512, 2048), "fc2": (10, 512), "tiny": (4, 4)}
    d = erk_densities(shapes, density)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(d[n] * numel[n] for n in shapes) == pytest.approx(density * sum(numel.values()), rel=1e-9)
    assert all(0 < v <= 1 for v in d.values())
    if density <= 0.1:
        assert d["tiny"] == 1.0  # would exceed 1: made dense, the rest rescaled
    assert d["fc1"] < d["fc2"]  # ERK gives small layers more density
    assert uniform_densities(shapes, density) == {n: density for n in shapes}


def test_sparsify_builds_the_contract_layers():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("conv", nn.Conv2d(8, 16, 3, stride=2, padding=1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(16 * 4 * 4, 32))
    model.add_module("head", nn.Linear(32, 10))
    x = torch.randn(2, 3, 8, 8)
    sparsify(model, sparsity=0.9, method="srigl", dense_modules=("stem", "head"))
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert isinstance(model.conv, CondensedConv2d) and type(model.fc) is CondensedLinear
    assert model(x).shape == (2, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = DynamicSparsity(model, opt, method="srigl", total_steps=10).layer_stats()
    assert set(stats) == {"conv", "fc"}
    total = sum(s["nnz"] for s in stats.values())
    assert total <= round(0.1 * (16 * 8 * 9 + 256 * 32)) + 2
    for s in stats.values():
        assert set(s) == {"density", "active_neurons", "out_features", "fan_in", "nnz"}


@pytest.mark.parametrize("bad,match", [
    (dict(sparsity=1.0), "sparsity"), (dict(method="dense"), "method"), (dict(distribution="x"), "distribution"),
    (dict(dense_modules=("",), min_params=10**9), "no eligible"),
])
def test_sparsify_validation(bad, match):
    args = dict(sparsity=0.5, method="srigl")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sparsify(nn.Sequential(nn.Linear(4, 4)), **args)


def test_dynamic_sparsity_validation():
    model = sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5, method="srigl")
    with pytest.raises(ValueError, match="does not hold"):
        DynamicSparsity(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)
    with pytest.raises(ValueError, match="needs masked"):
        DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), method="rigl", total_steps=10)
    with pytest.raises(ValueError, match="no sparse layer"):
        DynamicSparsity(nn.Linear(2, 2), None, total_steps=10)


def test_capture_only_on_update_steps_and_static_counts():
    model = sparsify(nn.Sequential(nn.Linear(6, 5)), 0.5, method="srigl")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dst = DynamicSparsity(model, opt, method="srigl", total_steps=40, delta_t=4)
    armed = []
    for _ in range(12):
        armed.append(model[0].capture_hook is not None)
        model(torch.randn(3, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
        dst.step()
    assert armed == [False, False, False, True] * 3
    static = sparsify(nn.Sequential(nn.Linear(6, 5)), 0.5, method="static")
    sd = DynamicSparsity(static, None, method="static", total_steps=40, delta_t=1)
    before = static[0].weight_indices.clone()
    for _ in range(5):
        sd.step()
    assert sd.step_count == 5 and torch.equal(static[0].weight_indices, before) and static[0].capture_hook is None

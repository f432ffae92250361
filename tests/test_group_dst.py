"""DST over group-shared patterns: sparsify(group_size=G), SRigL / SET / static updates over
group columns (dst/groups.py): the group structure, the nonzero budget, kept weights and
their optimizer state, whole-group ablation, and the group gradient scores."""
import pytest
import torch
from torch import nn

from tritonsparse.dst import DynamicSparsity, sparsify
from tritonsparse.dst.groups import group_gradient_candidates, group_gradient_scores
from tritonsparse.nn import CondensedLinear


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def test_group_gradient_scores_match_dense():
    x, gy = torch.randn(9, 14), torch.randn(9, 12)
    dense = (gy.t() @ x).abs().view(3, 4, 14).sum(1)
    torch.testing.assert_close(group_gradient_scores(x, gy, 4), dense)
    s, c = group_gradient_candidates(x, gy, 4)(5, torch.tensor([[int(dense[0].argmax()), -1]] + [[-1, -1]] * 2))
    assert c.shape == (3, 5) and int(dense[0].argmax()) not in c[0].tolist()
    torch.testing.assert_close(s[1], dense[1].sort(descending=True).values[:5])


def _model():
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("method", ["srigl", "set", "static"])
def test_dst_over_groups_keeps_structure_and_budget(method):
    torch.manual_seed(0)
    model = sparsify(_model(), sparsity=0.8, method=method, group_size=4, distribution="uniform")
    layers = [m for m in model.modules() if isinstance(m, CondensedLinear)]
    assert layers and all(m.group_size == 4 for m in layers)
    budgets = [m.nnz_budget for m in layers]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dst = DynamicSparsity(model, opt, method=method, total_steps=40, delta_t=5, gamma_sal=0.3,
                          no_ablation=("4",))
    x, y = torch.randn(64, 24), torch.randint(0, 4, (64,))
    for step in range(40):
        before = {id(m): (m.to_dense_weight().clone(), opt.state[m.values]["exp_avg"].clone()
                          if m.values in opt.state else None) for m in layers}
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        after_step = {id(m): m.to_dense_weight().clone() for m in layers}
        dst.step()
        for m, budget in zip(layers, budgets):
            g = m.group_size
            assert m.n_active % g == 0 and m.weight_indices.shape == (m.n_active // g, m.fan_in)
            assert m.n_active * m.fan_in <= budget
            assert m.weight_indices.long().sort(1).values.diff(1).gt(0).all()  # distinct columns per group
            dense = m.to_dense_weight()
            nz = dense != 0
            active = torch.zeros(m.out_features, dtype=torch.bool)
            active[m.active_rows] = True
            assert not nz[~active].any()  # ablated rows compute nothing
            assert (active.view(-1, g).all(1) | ~active.view(-1, g).any(1)).all()  # whole groups ablate
            if dst.last_update.get(next(n for n, l in dst.layers.items() if l is m)):
                kept = (after_step[id(m)] != 0) & nz
                torch.testing.assert_close(dense[kept], after_step[id(m)][kept])  # kept weights keep their values
        if method == "static":
            assert not dst.last_update
    if method == "srigl":
        assert any(u for u in dst.last_update.values()) or dst.step_count == 40


def test_group_update_moves_optimizer_state():
    torch.manual_seed(1)
    model = sparsify(nn.Sequential(nn.Linear(16, 8)), sparsity=0.5, method="srigl", group_size=4)
    layer = model[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparsity(model, opt, method="srigl", total_steps=10, delta_t=2, gamma_sal=0.0)
    x = torch.randn(32, 16)
    for _ in range(2):
        model(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        if dst.step_count == 1:
            mom = layer._rows_view(opt.state[layer.values]["momentum_buffer"], 8)
            old = {(r, c): (float(layer.weight_values[r, k]), float(mom[r, k]))
                   for r in range(8) for k, c in enumerate(layer.weight_indices[r // 4].tolist())}
        dst.step()
    assert dst.last_update["0"]["pruned"] > 0
    mom = layer._rows_view(opt.state[layer.values]["momentum_buffer"], 8)
    kept = 0
    for r in range(8):
        for k, c in enumerate(layer.weight_indices[r // 4].tolist()):
            v, m = old.get((r, c), (0.0, 0.0))
            now = float(layer.weight_values[r, k])
            if now == 0.0:  # grown (perhaps where a weight was just dropped): zero value and state
                assert float(mom[r, k]) == 0.0
            else:  # kept: its value and its momentum moved with it
                kept += 1
                assert now == pytest.approx(v) and float(mom[r, k]) == pytest.approx(m)
    assert kept >= 8 * layer.fan_in // 2


def test_sparsify_group_size_errors():
    with pytest.raises(ValueError, match="does not divide out_features=10"):
        sparsify(nn.Sequential(nn.Linear(8, 10)), group_size=4)
    with pytest.raises(ValueError, match="not 'rigl'"):
        sparsify(nn.Sequential(nn.Linear(8, 8)), method="rigl", group_size=4)
    with pytest.raises(ValueError, match="group_size must be"):
        sparsify(nn.Sequential(nn.Linear(8, 8)), group_size=0)


def test_trainer_group_size_and_sparse_wide(tmp_path):
    """--group-size reaches sparsify through sparse_ift (Sparse Wide included); the run keeps
    whole groups and the nonzero budget."""
    from tritonsparse.ift import sparse_ift
    from tritonsparse.train import TrainConfig, train
    from tritonsparse.train.cli import main

    cfg = dict(model="mlp", dataset="synthetic", hidden=(32, 32), epochs=1, max_steps=4, batch_size=32, delta_t=2,
               sparsity=0.75, device="cpu", plots=False, progress=False, method="srigl", gamma_sal=0.9)
    for kind in ("none", "wide"):
        res = train(TrainConfig(**cfg, ift=kind, group_size=8, out=str(tmp_path / kind)))
        layers = res.final["layers"]
        assert layers and all(s["active_neurons"] % 8 == 0 for s in layers.values())
    ift = sparse_ift(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), "none", 0.5, dense_modules=("2",),
                     group_size=4)
    assert ift.group_size == 4
    with pytest.raises(ValueError, match="does not divide out_features=4"):
        sparse_ift(nn.Sequential(nn.Linear(8, 4)), "none", 0.5, dense_modules=(), group_size=8)
    assert main(["--group-size", "4", "--method", "rigl", "--out", str(tmp_path / "x")]) == 2  # one-line error


def test_export_of_a_group_layer_with_ablated_groups():
    """export() removes ablated groups and their inputs downstream; the exported model is
    per-row (G = 1) and computes the same function."""
    from tritonsparse import export
    from tritonsparse.models.mlp import MLP

    torch.manual_seed(0)
    model = sparsify(MLP(64, 10, hidden=(64, 64, 64)), 0.8, "srigl", dense_modules=("stem", "head"), group_size=16)
    layer = model.hidden[0]
    keep = torch.arange(16, 64)  # ablate the first group
    vals = layer.weight_values.detach()[16:].clone()
    layer.set_pattern(vals, layer.weight_indices[1:].clone(), keep)
    x = torch.randn(5, 1, 8, 8)
    small = export(model.eval())
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)

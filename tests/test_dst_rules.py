"""SRigL's update rules (issue 9), each pinned by a constructed case whose outcome is
derived by hand in the comments, plus the exact layer-wide salient gradient set against
a dense reference, and updates skipped on NaN/inf gradients (issue 11, item 2).

A gradient matrix G (out, in) is fed as the captured pair x = I (in, in), grad_output =
Gᵀ, so ``grad_outputᵀ x = G`` exactly."""
import pytest
import torch

from tritonsparse.dst import NonFiniteError, condensed_update, salient_gradient_positions
from tritonsparse.dst.updates import gradient_candidates
from tritonsparse.nn import CondensedLinear


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _layer(rows, cols, capacity, in_f, out_f, active=None):
    vals = torch.tensor(rows, dtype=torch.float32)
    layer = CondensedLinear(in_f, out_f, capacity // out_f, bias=False, capacity=capacity)
    layer.set_pattern(vals, torch.tensor(cols), None if active is None else torch.tensor(active))
    return layer


def _grad(out_f, in_f, entries):
    g = torch.zeros(out_f, in_f)
    for (r, c), v in entries.items():
        g[r, c] = v
    return g


def _update(layer, g, alpha, gamma=0.3, opt=None):
    opt = opt or torch.optim.SGD(layer.parameters(), lr=0.1)
    cands = gradient_candidates(torch.eye(layer.in_features), g.t().contiguous())
    return condensed_update(layer, opt, alpha, cands, gamma)


def _rows(layer):
    """{row: [(col, value), ...]} of the layer's pattern."""
    vals, idx = layer.weight_values.detach(), layer.weight_indices.long()
    return {int(r): list(zip(idx[i].tolist(), vals[i].tolist())) for i, r in enumerate(layer.active_rows)}


# -- the rules ------------------------------------------------------------------------------
def test_unsalient_neuron_ablated_and_fan_in_rises():
    # out 4, in 16, K0 3, B 12. nnz 12, alpha .25: n_prune 3, n_keep 9 -> magnitude set
    # = rows 0-2 (3 each). Gradient top 3: (1,10) (1,11) (2,12). Counts 3, 5, 4, 0; the
    # threshold max(1, int(.3*3)) = 1 ablates row 3; K = 12 // 3 = 4. Rows refill by
    # |grad|: row 0 has none, so its smallest free column (3); rows 1, 2 take 10, 12.
    layer = _layer([[5.0] * 3, [4.0] * 3, [3.0] * 3, [0.1] * 3], [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]],
                   12, 16, 4)
    info = _update(layer, _grad(4, 16, {(1, 10): 9.0, (1, 11): 8.0, (2, 12): 7.0}), 0.25)
    assert layer.active_rows.tolist() == [0, 1, 2] and layer.fan_in == 4 and info["threshold"] == 1
    assert _rows(layer) == {0: [(0, 5.0), (1, 5.0), (2, 5.0), (3, 0.0)],
                            1: [(3, 4.0), (4, 4.0), (5, 4.0), (10, 0.0)],
                            2: [(6, 3.0), (7, 3.0), (8, 3.0), (12, 0.0)]}


@pytest.mark.parametrize("alpha,survives", [(0.25, True), (0.3, False)], ids=["2-salient-survives", "1-salient-ablated"])
def test_threshold_is_int_of_gamma_k(alpha, survives):
    # K0 7 (B 21, out 3, in 20), gamma .3: threshold max(1, int(2.1)) = 2 (a float
    # comparison would need 3). alpha .25: n_prune 5, n_keep 16 = rows 0, 1 and row 2's
    # two 3.0s -> row 2 has 2 salient weights and survives. alpha .3: n_prune 6, n_keep 15
    # -> row 2 has one (its single 3.0) and is ablated, K = 21 // 2 = 10. The gradient
    # top sits on row 0's inactive columns. min survivors: 21 // 20 + 1 = 2 rows, whose
    # count (7 or more) is above the threshold.
    row2 = [3.0, 3.0, 0.01, 0.02, 0.03, 0.04, 0.05] if survives else [3.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    layer = _layer([[5.0] * 7, [4.0] * 7, row2], [list(range(7))] * 3, 21, 20, 3)
    info = _update(layer, _grad(3, 20, {(0, 7 + i): 9.0 - i for i in range(6)}), alpha)
    assert info["threshold"] == 2
    assert layer.active_rows.tolist() == ([0, 1, 2] if survives else [0, 1])
    assert layer.fan_in == (7 if survives else 10)


def test_threshold_uses_the_initial_fan_in():
    # B 8, out 4 -> K0 2; the layer was already ablated to rows 0, 1 with K 4. gamma .5:
    # threshold max(1, int(.5*2)) = 1 (the current K would give 2). alpha .375: n_prune 3,
    # n_keep 5 = row 0's four 5.0s and row 1's 4.0; the gradient top 3 is on row 0. Row 1
    # has exactly 1 salient weight: it survives; rows 2, 3 (0) stay ablated.
    layer = _layer([[5.0] * 4, [4.0, 0.01, 0.02, 0.03]], [[0, 1, 2, 3], [0, 1, 2, 3]], 8, 16, 4, active=[0, 1])
    info = _update(layer, _grad(4, 16, {(0, 8): 9.0, (0, 9): 8.0, (0, 10): 7.0}), 0.375, gamma=0.5)
    assert info["threshold"] == 1
    assert layer.active_rows.tolist() == [0, 1] and layer.fan_in == 4


def test_row_hoarding_the_gradient_top():
    # B 8, K0 2, alpha .5: n_prune 4, n_keep 4 = rows 0, 1. Row 0 holds the four largest
    # |grad| (9) of the layer; rows 2, 3 have |grad| 1. Layer-wide, the gradient set is
    # row 0's four, so rows 2, 3 have no salient weight and are ablated (a per-row top-K
    # would have counted one of theirs). K = 8 // 2 = 4: row 0 keeps 5, 5 and grows
    # columns 10, 11; row 1 keeps 4, 4 and, with no gradient, grows its free columns 0, 1.
    g = _grad(4, 16, {**{(0, c): 9.0 for c in (10, 11, 12, 13)}, (2, 14): 1.0, (3, 15): 1.0})
    layer = _layer([[5.0, 5.0], [4.0, 4.0], [3.0, 3.0], [0.01, 0.01]], [[0, 1], [2, 3], [4, 5], [6, 7]], 8, 16, 4)
    _update(layer, g, 0.5)
    assert _rows(layer) == {0: [(0, 5.0), (1, 5.0), (10, 0.0), (11, 0.0)],
                            1: [(0, 0.0), (1, 0.0), (2, 4.0), (3, 4.0)]}


def test_minimum_survivors_tie_rule():
    # out 6, in 4, B 12: at least 12 // 4 + 1 = 4 neurons. gamma 1: threshold 2.
    # alpha .5: n_prune 6, n_keep 6 = 9, 9 and the four 5.0s. Gradient top 6: (0,2) and
    # five positions already in the magnitude set. Counts 3, 1, 1, 1, 1, 0: the 4th best
    # count is 1 < 2, so the threshold drops to 1 and every neuron tied at 1 survives:
    # rows 0-4 (5 rows, one more than the minimum), K = 12 // 5 = 2.
    vals = [[9.0, 9.0], [5.0, 0.1], [5.0, 0.2], [5.0, 0.3], [5.0, 0.4], [0.5, 0.6]]
    cols = [[0, 1]] * 6
    g = _grad(6, 4, {(0, 2): 9.0, (0, 0): 8.0, (0, 1): 8.0, (1, 0): 7.0, (2, 0): 7.0, (3, 0): 7.0})
    layer = _layer(vals, cols, 12, 4, 6)
    info = _update(layer, g, 0.5, gamma=1.0)
    assert info["threshold"] == 1 and layer.active_rows.tolist() == [0, 1, 2, 3, 4] and layer.fan_in == 2


def test_minimum_survivors_count_zero_ablates_nothing():
    # As above with counts 2, 2, 2, 0, 0, 0: the 4th best count is 0, so nothing is
    # ablated (a "keep at least ceil(B / in) = 3 by index" rule would ablate rows 3-5).
    vals = [[9.0, 9.0], [8.0, 8.0], [7.0, 7.0], [0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    g = _grad(6, 4, {(r, c): 5.0 for r in range(3) for c in (0, 1)})
    layer = _layer(vals, [[0, 1]] * 6, 12, 4, 6)
    info = _update(layer, g, 0.5, gamma=1.0)
    assert info["threshold"] == 0 and layer.n_active == 6 and layer.fan_in == 2


def _d5_layer():
    # out 4, in 16, B 12, gamma 1: threshold 3. alpha .5: n_prune 6, n_keep 6 = 9, 9, 9,
    # 8.5, 8, 8 (rows 0, 3, 1). Gradient top 6: (1,8) 9, (2,8..10) 8, (0,8..9) 7. Counts
    # 5, 3, 3, 1: row 3 is ablated, K = 4. Kept, taken again over rows 0-2: 9, 9, 9, 8, 8
    # and row 2's 7 (not in the first top 6). Regrowth: row 0 takes 8; row 1 takes 8 and,
    # with no gradient left, its smallest free column 2 (its dropped 1.0, back at 0);
    # row 2 takes 8, 9, 10.
    vals = [[9.0, 9.0, 9.0], [8.0, 8.0, 1.0], [7.0, 2.0, 3.0], [8.5, 0.1, 0.2]]
    g = _grad(4, 16, {(1, 8): 9.0, (2, 8): 8.0, (2, 9): 8.0, (2, 10): 8.0, (0, 8): 7.0, (0, 9): 7.0})
    return _layer(vals, [[0, 1, 2]] * 4, 12, 16, 4), g


D5_EXPECTED = {0: [(0, 9.0), (1, 9.0), (2, 9.0), (8, 0.0)], 1: [(0, 8.0), (1, 8.0), (2, 0.0), (8, 0.0)],
               2: [(0, 7.0), (8, 0.0), (9, 0.0), (10, 0.0)]}


def test_kept_set_taken_again_after_ablation():
    layer, g = _d5_layer()
    _update(layer, g, 0.5, gamma=1.0)
    assert _rows(layer) == D5_EXPECTED


def test_adam_state_moves_with_the_weights():
    # Adam moments set to 10x / 100x each weight: after the update they must still be
    # 10x / 100x the (moved) weights, zero for grown ones.
    layer, g = _d5_layer()
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    v = layer.values.detach()
    opt.state[layer.values] = {"step": torch.tensor(3.0), "exp_avg": v * 10, "exp_avg_sq": v * 100}
    _update(layer, g, 0.5, gamma=1.0, opt=opt)
    assert _rows(layer) == D5_EXPECTED
    st = opt.state[layer.values]
    assert torch.equal(st["exp_avg"], layer.values.detach() * 10)
    assert torch.equal(st["exp_avg_sq"], layer.values.detach() * 100)


def test_row_over_new_fan_in_keeps_its_largest():
    # B 8 (K0 2); rows 0, 1 active with K 4. Rows 2, 3 hold the gradient top 2, so they
    # come back: 4 rows, K = 2. alpha .25: n_keep 6 = 8, 7, 6, 5, 4, 3: row 0 keeps 2 of
    # its [1, 4, 2, 3] -> its largest 4 (col 1) and 3 (col 3), not its lowest columns.
    layer = _layer([[1.0, 4.0, 2.0, 3.0], [5.0, 6.0, 7.0, 8.0]], [[0, 1, 2, 3], [4, 5, 6, 7]], 8, 16, 4,
                   active=[0, 1])
    _update(layer, _grad(4, 16, {(2, 10): 9.0, (3, 11): 9.0}), 0.25)
    assert _rows(layer) == {0: [(1, 4.0), (3, 3.0)], 1: [(6, 7.0), (7, 8.0)],
                            2: [(0, 0.0), (10, 0.0)], 3: [(0, 0.0), (11, 0.0)]}


# -- the exact salient set -------------------------------------------------------------------
def _dense_salient(g, n):
    """Top n of |g| over all positions, ties to the earlier flat position."""
    order = torch.sort(g.abs().reshape(-1), descending=True, stable=True).indices[:n]
    return order.sort().values


def _cases():
    gen = torch.Generator().manual_seed(0)
    hoard = torch.randint(-3, 4, (9, 40), generator=gen).float()
    hoard[4] = torch.arange(40).float() + 10  # row 4 holds the whole layer-wide top
    ties = torch.randint(0, 2, (7, 23), generator=gen).float()  # mostly ties
    zero_rows = torch.randint(-5, 6, (8, 30), generator=gen).float()
    zero_rows[[0, 3, 7]] = 0.0
    sparse = torch.zeros(6, 50)  # fewer nonzeros than n: the top runs into the zeros
    sparse[2, 7], sparse[5, 1] = 3.0, 2.0
    return {"hoarding-row": (hoard, 35), "ties": (ties, 30), "zero-rows": (zero_rows, 50),
            "into-zeros": (sparse, 60), "all-zero": (torch.zeros(5, 12), 13), "constant": (torch.ones(4, 9), 10),
            "random": (torch.randint(-50, 50, (11, 37), generator=gen).float(), 40)}


@pytest.mark.parametrize("case", list(_cases()))
def test_salient_set_matches_dense(case):
    g, n = _cases()[case]
    out_f, in_f = g.shape
    cands = gradient_candidates(torch.eye(in_f), g.t().contiguous())
    calls = []

    def counted(k, exclude, rows=None):
        calls.append((k, None if rows is None else rows.numel()))
        return cands(k, exclude, rows)

    keys = salient_gradient_positions(counted, out_f, in_f, n, first=cands(2, None))
    assert torch.equal(keys, _dense_salient(g, n))
    if case == "hoarding-row":
        assert calls[-1] == (in_f, 1)  # in the end only the hoarding row is listed in full


def test_salient_set_on_the_triton_kernel(monkeypatch):
    """Same, with the candidates from the Triton kernel (interpreter on CPU)."""
    from tritonsparse._triton import interpreting
    if not interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    g, n = _cases()["hoarding-row"]
    cands = gradient_candidates(torch.eye(g.shape[1]), g.t().contiguous())
    keys = salient_gradient_positions(cands, g.shape[0], g.shape[1], n)
    assert torch.equal(keys, _dense_salient(g, n))


def test_default_ranking_is_exact_fp32(monkeypatch):
    """DST asks gradient_topk for its default (exact fp32); tf32=True passes it on."""
    import tritonsparse.dst.updates as upd
    seen = []
    monkeypatch.setattr(upd, "gradient_topk", lambda *a, **kw: seen.append(kw) or (torch.zeros(1, 1), torch.zeros(1, 1)))
    upd.gradient_candidates(torch.ones(2, 3), torch.ones(2, 1))(1, None)
    upd.gradient_candidates(torch.ones(2, 3), torch.ones(2, 1), tf32=True)(1, None)
    assert seen == [{}, {"tf32": True}]


# -- non-finite gradients --------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_gradient_refused_before_any_change(bad):
    layer, g = _d5_layer()
    before = (layer.values.detach().clone(), layer.indices.clone(), layer.active_mask.clone())
    x = torch.eye(16)
    x[3, 5] = bad
    with pytest.raises(NonFiniteError):
        condensed_update(layer, None, 0.5, gradient_candidates(x, g.t().contiguous()), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, (layer.values, layer.indices, layer.active_mask)))

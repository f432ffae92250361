"""topk_select: the one-kernel per-row selection after gradient_topk_chunked's GEMM,
in Triton's interpreter, against a plain-PyTorch statement of the rules."""
import pytest
import torch

from tritonsparse.kernels import topk_select as sel
from tritonsparse.kernels.gradient_topk import _select_torch, gradient_topk_chunked
from tritonsparse.reference import gradient_topk_reference

NEG_INF = float("-inf")


def _rules(g, k, exclude=None):
    """The selection rules on a block G: |G|, NaN and excluded never selected, ties by
    ascending column, short rows padded -1 / -inf (a stable sort of the whole row)."""
    s = g.abs()
    s[s.isnan()] = NEG_INF
    if exclude is not None:
        ex = exclude.long()
        rows = torch.arange(g.shape[0])[:, None].expand_as(ex)
        keep = ex >= 0
        s[rows[keep], ex[keep]] = NEG_INF
    order = torch.sort(-s, dim=1, stable=True).indices[:, :k]
    top = s.gather(1, order)
    return top, torch.where(top == NEG_INF, -1, order)


def _exclude(rows, n, kx, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ex = torch.stack([torch.randperm(n, generator=gen)[:kx] for _ in range(rows)]).to(torch.int32)
    ex[::2, 0] = -1  # padding entries are ignored
    return ex


def _check(g, k, ex=None):
    got = sel.topk_select(g.clone(), k, ex)
    ref = _rules(g, k, ex)
    assert got[1].dtype == torch.int64 and got[0].dtype == torch.float32
    assert torch.equal(got[1], ref[1]), (got[1], ref[1])
    assert torch.equal(got[0], ref[0])
    return got


CASES = [  # rows, in, k, Kx
    pytest.param(3, 37, 5, 0, id="in37-k5"),
    pytest.param(4, 45, 9, 7, id="in45-k9-ex7"),
    pytest.param(2, 19, 19, 0, id="k-equals-in"),
    pytest.param(3, 23, 20, 6, id="fewer-selectable-than-k"),
    pytest.param(3, 300, 77, 31, id="in300-k77-ex31"),
]


@pytest.mark.parametrize("rows,n,k,kx", CASES)
def test_random_scores_match_the_rules(rows, n, k, kx):
    g = torch.randn(rows, n, generator=torch.Generator().manual_seed(n))
    _check(g, k, _exclude(rows, n, kx) if kx else None)


@pytest.mark.parametrize("rows,n,k,kx", CASES)
def test_small_integer_ties_nan_inf(rows, n, k, kx):
    """Small integers tie everywhere (both signs: |G| ties +x with -x); NaN, +inf and -inf
    entries sit among them."""
    g = torch.randint(-3, 4, (rows, n), generator=torch.Generator().manual_seed(k)).float()
    g[0, 1] = float("nan")
    g[-1, 2] = float("inf")
    g[0, n - 1] = float("-inf")  # |-inf| = +inf: a score like any other
    got = _check(g, k, _exclude(rows, n, kx) if kx else None)
    assert not got[0].isnan().any()
    assert 1 not in got[1][0].tolist()


def test_all_equal_row_takes_the_lowest_columns():
    """Every score equal and more of them than the sort width: the bisection ends on the
    exact k-th key and the ties are cut by column."""
    g = torch.full((2, 300), 0.5)
    scores, cols = _check(g, 100)
    assert cols[0].tolist() == list(range(100)) and (scores == 0.5).all()
    assert sel.sort_width(100) < 300  # the exact (tie) path, not the early stop


def test_nan_and_excluded_rows_pad():
    g = torch.randn(3, 40)
    g[0] = float("nan")  # nothing selectable
    g[1, 10:] = float("nan")  # 10 selectable columns, 3 of them excluded
    ex = torch.tensor([[-1, -1, -1], [0, 4, 9], [39, -1, 39]], dtype=torch.int64)
    scores, cols = _check(g, 12, ex)
    assert (cols[0] == -1).all() and (scores[0] == NEG_INF).all()
    assert (cols[1, 7:] == -1).all() and sorted(cols[1, :7].tolist()) == [1, 2, 3, 5, 6, 7, 8]
    assert 39 not in cols[2].tolist()


def test_int16_exclusions_and_out_slices():
    """int16 exclusion lists; outputs written into slices of larger tensors."""
    g = torch.randn(5, 60)
    ex = _exclude(5, 60, 8).to(torch.int16)
    scores, cols = torch.zeros(8, 11), torch.zeros(8, 11, dtype=torch.int64)
    sel.topk_select(g[1:4].clone(), 11, ex[1:4], out=(scores[2:5], cols[2:5]))
    ref = _rules(g[1:4], 11, ex[1:4])
    assert torch.equal(cols[2:5], ref[1]) and torch.equal(scores[2:5], ref[0])
    assert (cols[:2] == 0).all() and (cols[5:] == 0).all()


def test_excluded_columns_are_written_as_nan_in_g():
    """The documented side effect: the chunk G holds NaN at the excluded columns after."""
    g = torch.randn(2, 30)
    ex = torch.tensor([[3, -1], [7, 8]])
    sel.topk_select(g, 4, ex)
    assert g[0, 3].isnan() and g[1, 7].isnan() and g[1, 8].isnan() and g.isnan().sum() == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_chunked_path_uses_the_kernel_for_every_input_dtype(monkeypatch, dtype):
    """gradient_topk_chunked (several chunks) selects with the kernel and equals the dense
    reference for fp32, bf16 and fp16 inputs (small integers: products are exact)."""
    import tritonsparse.kernels.gradient_topk as mod

    calls = []
    real = sel.topk_select
    monkeypatch.setattr(sel, "topk_select", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    monkeypatch.setattr(mod, "_CHUNK_BYTES", 16 * 70 * 4)  # 4 rows per chunk
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (6, 70), generator=gen).to(dtype)
    go = torch.randint(-3, 4, (6, 9), generator=gen).to(dtype)
    ex = _exclude(9, 70, 5)
    got = gradient_topk_chunked(x, go, 33, ex)
    ref = gradient_topk_reference(x, go, 33, ex)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
    assert [tuple(s) for s in calls] == [(4, 70), (4, 70), (1, 70)]


def test_torch_selection_agrees_with_the_kernel():
    """The PyTorch fallback (plain CPU, shapes the kernel does not serve) gives the same."""
    g = torch.randint(-2, 3, (4, 50), generator=torch.Generator().manual_seed(2)).float()
    g[1, 3] = float("nan")
    ex = _exclude(4, 50, 6)
    a = sel.topk_select(g.clone(), 30, ex)
    b = _select_torch(g.clone(), 30, ex)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_served_shapes_and_widths():
    assert sel.serves(3072, 614) and sel.sort_width(614) == 1024 and sel.sort_width(154) == 256
    assert sel.serves(4096, 1639) and not sel.serves(4096, 1640)  # sort width 2048, then 4096
    assert not sel.serves(4097, 10) and not sel.serves(10, 11)
    assert sel.num_warps(1024, 256) == 1 and sel.num_warps(4096, 1024) == 4 and sel.num_warps(4096, 2048) == 16
    widths = {(sp[2]["BLOCK_D"], sp[2]["KP"]) for sp in sel.AOT_SPECS}
    for n in (16, 100, 768, 3072, 4096):  # every width the launcher picks has an AOT build
        for k in {1, n // 5, n // 2, min(n, 1638)}:
            if sel.serves(n, k):
                assert (sel.block_d(n), sel.sort_width(k)) in widths


@pytest.mark.parametrize("bad,match", [
    (dict(g=torch.randn(3, 10, dtype=torch.float64)), "g must be"),
    (dict(g=torch.randn(10, 3).t()), "unit column stride"),
    (dict(k=11), "not served"),
    (dict(exclude=torch.zeros(2, 3, dtype=torch.int32)), "exclude must be"),
    (dict(out=(torch.empty(3, 4), torch.empty(3, 4, dtype=torch.int32))), "out indices"),
])
def test_bad_input(bad, match):
    args = dict(g=torch.randn(3, 10), k=4, exclude=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sel.topk_select(args["g"], args["k"], args["exclude"], out=args.get("out"))


def test_bisection_passes_replay_the_kernel_loop():
    """The pass counts the SASS report multiplies the hot loop by: none when at most KP
    columns are selectable or all scores tie (the bracket is one key wide), 23 to split
    two values a binade apart (the exact k-th key), ~4 on Gaussian rows; ``model_trips``
    takes their mean over a launch's rows."""
    assert sel.bisection_passes(torch.randn(3, 100), 60).tolist() == [0, 0, 0]  # 100 <= KP 128
    assert sel.bisection_passes(torch.full((2, 300), 0.5), 100).tolist() == [0, 0]
    two = torch.cat([torch.full((1, 200), 1.0), torch.full((1, 100), 2.0)], 1)
    assert sel.bisection_passes(two, 150).tolist() == [23]
    gauss = sel.bisection_passes(torch.randn(64, 768, generator=torch.Generator().manual_seed(0)), 154)
    assert 3 <= float(gauss.float().mean()) <= 6
    ex = torch.arange(0, 300, 2).repeat(2, 1)  # 150 excluded: 150 selectable > KP 128 still
    assert (sel.bisection_passes(torch.randn(2, 300), 100, ex) > 0).all()
    assert (sel.bisection_passes(torch.randn(2, 300), 100, torch.arange(0, 200).repeat(2, 1)) == 0).all()
    g = torch.cat([two[:, :300], torch.randn(3, 300)])
    want = -(-int(sel.bisection_passes(g, 150).sum()) // 4)
    assert sel.model_trips({"g_ptr": g, "k": 150, "HAS_EXCLUDE": False}) == want
    assert sel.model_trips({"g_ptr": None, "k": 1}) is None


def test_two_values_force_the_exact_tie_cut():
    """300 scores, 100 of them 2.0 and 200 of them 1.0 (interleaved), k = 150: more than
    KP = 256 survive any threshold below 2.0, so the bisection runs to the exact k-th key
    and keeps the lowest 50 columns holding 1.0."""
    g = torch.ones(2, 300)
    g[:, ::3] = 2.0
    g[1] = -g[1]
    scores, cols = _check(g, 150)
    ones = [c for c in range(300) if c % 3][:50]
    assert cols[0].tolist() == list(range(0, 300, 3)) + ones


@pytest.mark.gpu
@pytest.mark.parametrize("rows,n,k,kx", [(3072, 768, 154, 77), (768, 3072, 614, 307), (64, 4096, 1639, 0)],
                         ids=["vit-fc1", "vit-fc2", "widest"])
def test_cuda_matches_the_rules(rows, n, k, kx):
    """On a GPU, at the ViT-B SRigL widths and the widest served one (warp counts 1, 4,
    16), with ties (small integers), NaN and exclusions."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randint(-40, 41, (rows, n), generator=gen).float()
    g[::7, 5] = float("nan")
    ex = _exclude(rows, n, kx) if kx else None
    got = sel.topk_select(g.cuda(), k, ex.cuda() if ex is not None else None)
    ref = _rules(g, k, ex)
    assert torch.equal(got[1].cpu(), ref[1]) and torch.equal(got[0].cpu(), ref[0])

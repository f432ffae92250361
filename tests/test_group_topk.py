"""gradient_topk(group_size=G): per group of G output rows, the top-k columns of
sum_r |(grad_outputᵀ x)[gG + r, :]|, from the fused kernel (Triton's interpreter), from the
chunked torch path, and through DST over groups, against an fp64 reference."""
import pytest
import torch

import tritonsparse.kernels.gradient_topk as kern
import tritonsparse.topk as topk_mod
from tritonsparse import gradient_topk


def _reference(x, g, k, exclude, G):
    """fp64: sum over each group's rows of |gᵀx|, NaN and excluded never selected, ties by
    ascending column, short groups padded with -1 / -inf."""
    s = (g.double().t() @ x.double()).abs().view(g.shape[1] // G, G, x.shape[1]).sum(1)
    s.masked_fill_(s.isnan(), -float("inf"))
    if exclude is not None:
        for r in range(s.shape[0]):
            for c in exclude[r].tolist():
                if c >= 0:
                    s[r, c] = -float("inf")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    top = s.gather(1, order)
    return top.float(), torch.where(top == -float("inf"), -1, order)


def _int_data(b, out_f, in_f, dtype=torch.float32):
    # small integers: products and sums are exact in fp32, so ties are real ties
    return (torch.randint(-3, 4, (b, in_f)).to(dtype), torch.randint(-3, 4, (b, out_f)).to(dtype))


def _exclude(n_groups, in_f, kx, dtype=torch.int32):
    ex = torch.stack([torch.randperm(in_f)[:kx] for _ in range(n_groups)]).to(dtype)
    ex[::2, 0] = -1  # padding entries are ignored
    return ex


@pytest.fixture
def kernel_calls(monkeypatch):
    """Run the Triton backend (the interpreter) and record the fused kernel's group sizes."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    seen = []
    real = kern.gradient_topk

    def spy(*args, **kw):
        seen.append(args[6] if len(args) > 6 else kw.get("group_size", 1))
        return real(*args, **kw)

    monkeypatch.setattr(kern, "gradient_topk", spy)
    return seen


CASES = [  # (batch, out, in, G, k, kx)
    pytest.param(5, 14, 37, 1, 3, 4, id="G1-in37"),
    pytest.param(17, 18, 45, 2, 4, 3, id="G2-b17-in45"),
    pytest.param(3, 32, 20, 16, 5, 2, id="G16-in20"),
    pytest.param(9, 24, 33, 24, 6, 5, id="Gn-out24"),
    pytest.param(4, 9, 19, 3, 19, 6, id="G3-k-equals-in-padded"),
]


@pytest.mark.parametrize("b,out_f,in_f,G,k,kx", CASES)
def test_fused_kernel_matches_fp64_reference(kernel_calls, b, out_f, in_f, G, k, kx):
    x, g = _int_data(b, out_f, in_f)
    ex = _exclude(out_f // G, in_f, kx)
    scores, cols = gradient_topk(x, g, k, ex, group_size=G)
    ref_s, ref_c = _reference(x, g, k, ex, G)
    assert kernel_calls == [G]  # the fused kernel ranked it, with the group sum inside
    assert scores.shape == cols.shape == (out_f // G, k) and cols.dtype == torch.int64
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


@pytest.mark.parametrize("b,out_f,in_f,G,k,kx", CASES)
def test_chunked_path_matches_fp64_reference(monkeypatch, b, out_f, in_f, G, k, kx):
    """The torch path (CPU, and the fallback), forced to several chunks of groups."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    monkeypatch.setattr(topk_mod, "_CHUNK_BYTES", 1)  # one group per chunk
    x, g = _int_data(b, out_f, in_f)
    ex = _exclude(out_f // G, in_f, kx, torch.int64)
    scores, cols = gradient_topk(x, g, k, ex, group_size=G)
    ref_s, ref_c = _reference(x, g, k, ex, G)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


@pytest.mark.parametrize("b,out_f,in_f,G,k,kx", CASES)
def test_chunked_path_with_the_selection_kernel(monkeypatch, b, out_f, in_f, G, k, kx):
    """The chunked fallback on the Triton backend (here the interpreter) selects with the
    per-row path's Triton selection kernel: the same columns and scores as the reference."""
    from tritonsparse.kernels import topk_select as sel

    calls = []
    real = sel.topk_select
    monkeypatch.setattr(sel, "topk_select", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(topk_mod, "_CHUNK_BYTES", 1)  # one group per chunk
    x, g = _int_data(b, out_f, in_f)
    ex = _exclude(out_f // G, in_f, kx, torch.int64)
    scores, cols = topk_mod.grouped_chunked(x, g, k, ex, G)
    ref_s, ref_c = _reference(x, g, k, ex, G)
    assert len(calls) == out_f // G  # one launch per chunk of one group
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)

def test_random_data_scores_within_tolerance(kernel_calls):
    """Non-integer data: fp32 scores within an atol scaled with batch and G of fp64."""
    x, g = torch.randn(33, 50), torch.randn(33, 12)
    ex = _exclude(3, 50, 7)
    scores, cols = gradient_topk(x, g, 9, ex, group_size=4)
    ref_s, _ = _reference(x, g, 9, ex, 4)
    torch.testing.assert_close(scores, ref_s, rtol=1e-5, atol=1e-5 * 33 * 4)
    full = (g.double().t() @ x.double()).abs().view(3, 4, 50).sum(1)
    torch.testing.assert_close(full.gather(1, cols).float(), scores, rtol=1e-5, atol=1e-5 * 33 * 4)
    assert kernel_calls == [4]


def test_nan_never_selected_and_ties_by_column(kernel_calls):
    """A NaN column scores NaN in every group and is never chosen; a group whose rows see a
    NaN output gradient has no selectable column (all -1 / -inf); equal sums rank by
    ascending column."""
    x = torch.ones(4, 21)
    x[1, 5] = float("nan")
    g = torch.ones(4, 12)
    g[2, 7] = float("nan")  # row 7: group 1 of G=4
    ex = torch.tensor([[3, -1], [-1, -1], [0, 20]], dtype=torch.int32)
    scores, cols = gradient_topk(x, g, 6, ex, group_size=4)
    assert kernel_calls == [4]
    assert cols[0].tolist() == [0, 1, 2, 4, 6, 7] and cols[2].tolist() == [1, 2, 3, 4, 6, 7]
    assert (scores[[0, 2]] == 16.0).all()  # 4 rows x |sum over a batch of 4 ones|
    assert (cols[1] == -1).all() and torch.isneginf(scores[1]).all()


def test_bf16_through_the_widening(kernel_calls):
    """bf16 inputs (widened to fp32 before the interpreter's tl.dot, which multiplies bf16
    operands as raw bits) rank like the fp64 reference of the bf16 values."""
    x, g = _int_data(7, 12, 26, torch.bfloat16)
    ex = _exclude(6, 26, 3)
    scores, cols = gradient_topk(x, g, 5, ex, group_size=2)
    ref_s, ref_c = _reference(x, g, 5, ex, 2)
    assert kernel_calls == [2]
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


@pytest.mark.parametrize("dtype,kernel", [(torch.float32, True), (torch.float16, False)], ids=["fp32", "fp16"])
def test_without_exclusions_and_unbuilt_dtypes(kernel_calls, dtype, kernel):
    """No exclusion list (DST's first call) runs the kernel; the grouped kernel is built for
    fp32 and bf16 only, so fp16 gives the same answer through the chunked path."""
    x, g = _int_data(6, 8, 23, dtype)
    scores, cols = gradient_topk(x, g, 4, None, group_size=4)
    ref_s, ref_c = _reference(x, g, 4, None, 4)
    assert kernel_calls == ([4] if kernel else [])
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


def test_cuda_rule_needs_enough_groups():
    """On CUDA the grouped kernel follows the plain kernel's rule, and needs a program per SM."""
    k, kx = 8, 24
    for out_f, in_f in ((14336, 4096), (3072, 768)):
        plain = kern.uses_fused_kernel(k, kx, out_f, in_f, cuda=True)
        assert kern.uses_fused_kernel(k, kx, out_f, in_f, cuda=True, group_size=4) == plain  # 3584 / 768 groups
        assert not kern.uses_fused_kernel(k, kx, out_f, in_f, cuda=True, group_size=64)  # <= 224 groups
    assert kern.uses_fused_kernel(k, kx, 24, 33, cuda=False, group_size=24)  # the interpreter
    assert not kern.uses_fused_kernel(100, 40, 24, 33, cuda=False, group_size=2)  # KP 256


@pytest.mark.parametrize("kp", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_served_grouped_launch_has_an_aot_built_config(kp, dtype):
    """What the grouped kernel serves, the prune finds a grouped config for, and the AOT
    check builds that config (tests/test_compile_aot.py compiles every AOT_SPECS entry)."""
    assert kern.grouped_kernel_serves(kp, dtype, "ieee")
    assert not kern.grouped_kernel_serves(kp, torch.float32, "tf32")
    assert not kern.grouped_kernel_serves(kp, torch.float16, "ieee")
    named = {"b_bucket": 256, "out_features": 48, "x_ptr": torch.empty(0, dtype=dtype)}
    chosen = kern._prune(kern._configs(), named, KP=kp, PRECISION="ieee", GROUPED=True)
    assert chosen and all(c.grouped and kp in c.kps for c in chosen)
    dt = "fp32" if dtype == torch.float32 else "bf16"
    for has_ex in (False, True):
        specs = [sp for sp in kern.AOT_SPECS if sp[2] == {"KP": kp, "HAS_EXCLUDE": has_ex, "PRECISION": "ieee",
                                                          "GROUPED": True} and sp[1]["x_ptr"] == f"*{dt}"]
        assert len(specs) == 1
        built = {(c.kwargs["BLOCK_D"], c.num_warps) for c in specs[0][0].configs}
        assert {(c.kwargs["BLOCK_D"], c.num_warps) for c in chosen} <= built


@pytest.mark.parametrize("bad,err,match", [
    (dict(group_size=0), ValueError, "group_size"),
    (dict(group_size=5), ValueError, "group_size"),
    (dict(group_size=2.0), TypeError, "group_size"),
    (dict(group_size=True), TypeError, "group_size"),
    (dict(group_size=2, exclude=torch.zeros(12, 2, dtype=torch.int32)), ValueError, "exclude"),
], ids=["zero", "not-a-divisor", "float", "bool", "exclude-per-row"])
def test_bad_group_size(bad, err, match):
    x, g = torch.randn(3, 10), torch.randn(3, 12)
    with pytest.raises(err, match=match):
        gradient_topk(x, g, 2, **bad)


def test_dst_over_groups_ranks_with_the_kernel(monkeypatch):
    """An SRigL update over groups with ablation under the interpreter ranks with the fused
    grouped kernel in all three of its calls (all groups; the salient set's subset of
    groups; the regrowth with exclusions after the fan-in grows) and makes the same
    pattern as the torch backend."""
    from tritonsparse.dst.groups import group_gradient_candidates, group_update
    from tritonsparse.nn import CondensedLinear

    x, gy = torch.randn(12, 30), torch.randn(12, 16)
    gy[:, 4:] *= 1e-3  # only group 0 is salient: three groups are ablated, K grows 4 -> 16
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)
        seen = []
        real = kern.gradient_topk
        monkeypatch.setattr(kern, "gradient_topk",
                            lambda *a, **kw: seen.append((a[6], a[1].shape[1], a[3] is not None)) or real(*a, **kw))
        torch.manual_seed(1)
        layer = CondensedLinear(30, 16, fan_in=4, group_size=4)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        stats = group_update(layer, opt, 0.5, group_gradient_candidates(x, gy, 4), 1.0)
        monkeypatch.setattr(kern, "gradient_topk", real)
        results[backend] = (layer.weight_indices.clone(), layer.to_dense_weight().clone(), stats, seen)
    (ti, tw, ts, t_seen), (ki, kw_, ks, k_seen) = results["torch"], results["triton"]
    assert t_seen == [] and k_seen == [(4, 16, False), (4, 4, False), (4, 16, True)]
    assert ks["ablated"] == 12 and ks["fan_in"] == 16 and ts == ks
    assert torch.equal(ti, ki) and torch.equal(tw, kw_)

"""gradient_topk: the fused kernel (interpreter / CUDA) against the dense reference."""
import pytest
import torch

from tritonsparse import gradient_topk
from tritonsparse.reference import gradient_topk_reference

HAS_GPU = torch.cuda.is_available()


def _int_data(b, out_f, in_f, dtype=torch.float32, device="cpu"):
    # small integers: every product and sum is exact, so ties are real ties
    x = torch.randint(-3, 4, (b, in_f)).to(dtype).to(device)
    g = torch.randint(-3, 4, (b, out_f)).to(dtype).to(device)
    return x, g


def _exclude(out_f, in_f, kx, pad=True):
    ex = torch.stack([torch.randperm(in_f)[:kx] for _ in range(out_f)]).to(torch.int32)
    if pad:
        ex[::3, 0] = -1  # padding entries are ignored
    return ex


CASES = [  # (batch, out, in, k, kx)
    pytest.param(5, 7, 37, 3, 0, id="b5-out7-in37-k3"),
    pytest.param(17, 19, 45, 4, 3, id="b17-out19-in45-k4-ex3"),
    pytest.param(3, 17, 20, 20, 0, id="k-equals-in"),
]


@pytest.mark.parametrize("b,out_f,in_f,k,kx", CASES)
def test_kernel_matches_reference_interpreter(monkeypatch, b, out_f, in_f, k, kx):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    x, g = _int_data(b, out_f, in_f)
    ex = _exclude(out_f, in_f, kx) if kx else None
    scores, cols = gradient_topk(x, g, k, ex)
    ref_s, ref_c = gradient_topk_reference(x, g, k, ex)
    assert cols.dtype == torch.int64 and scores.dtype == torch.float32
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


def test_kernel_ties_and_padding_interpreter(monkeypatch):
    """All-equal scores rank by ascending column; with k + excluded > in the tail is
    padded with -1 / -inf, like the reference."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    x = torch.ones(4, 18, dtype=torch.bfloat16)
    g = torch.ones(4, 5, dtype=torch.bfloat16)
    ex = _exclude(5, 18, 6, pad=False)
    scores, cols = gradient_topk(x, g, 14, ex)
    ref_s, ref_c = gradient_topk_reference(x, g, 14, ex)
    assert torch.equal(cols, ref_c)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert (cols[:, 12:] == -1).all() and torch.isinf(scores[:, 12:]).all()
    for r in range(5):
        allowed = sorted(set(range(18)) - set(ex[r].tolist()))
        assert cols[r, :12].tolist() == allowed


def test_reference_semantics():
    x, g = torch.randn(9, 30, dtype=torch.float64).float(), torch.randn(9, 6).float()
    dense = (g.t() @ x).abs()
    s, c = gradient_topk_reference(x, g, 5)
    torch.testing.assert_close(s, dense.topk(5, dim=1).values)
    torch.testing.assert_close(dense.gather(1, c), s)


def test_cpu_default_backend_is_reference(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, g = _int_data(6, 8, 25)
    ex = _exclude(8, 25, 4)
    for a, b in zip(gradient_topk(x, g, 6, ex.long()), gradient_topk_reference(x, g, 6, ex)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad,match", [
    (dict(k=0), "k must be in"),
    (dict(k=41), "k must be in"),
    (dict(k=2.0), "k must be an int"),
    (dict(g=torch.randn(3, 5)), "grad_output has batch"),
    (dict(g=torch.randn(4, 5, dtype=torch.float64)), "grad_output has dtype"),
    (dict(exclude=torch.zeros(4, 2, dtype=torch.int32)), "exclude has 4 rows"),
    (dict(exclude=torch.full((5, 2), 40, dtype=torch.int32)), "exclude holds 40"),
    (dict(exclude=torch.zeros(5, 2)), "exclude has dtype"),
    (dict(x=torch.randn(4, 40, 1)), "x must be 2-D"),
])
def test_validation(bad, match):
    args = dict(x=torch.randn(4, 40), g=torch.randn(4, 5), k=3, exclude=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        gradient_topk(args["x"], args["g"], args["k"], args["exclude"])


def test_aot_specs_cover_fp32_and_bf16():
    from tritonsparse.kernels import gradient_topk as mod

    dtypes = {sig["x_ptr"] for _, sig, _ in mod.AOT_SPECS}
    assert dtypes == {"*fp32", "*bf16"}
    for autotuner, sig, constexprs in mod.AOT_SPECS:
        assert hasattr(autotuner, "fn") and constexprs["KP"] >= 16
        for cfg in autotuner.configs:  # every config fits the register budget at this KP
            assert mod._fits(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_D"], constexprs["KP"], cfg.num_warps)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,out_f,in_f,k,kx", [(64, 300, 777, 16, 0), (257, 129, 1000, 40, 33), (1000, 64, 4096, 100, 0)])
def test_kernel_cuda(dtype, b, out_f, in_f, k, kx):
    x, g = _int_data(b, out_f, in_f, dtype, "cuda")
    ex = _exclude(out_f, in_f, kx).cuda() if kx else None
    scores, cols = gradient_topk(x, g, k, ex, precision="ieee")
    ref_s, ref_c = gradient_topk_reference(x, g, k, ex)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)
    # random data with tensor cores: scores within tolerance, chosen columns as good
    xr, gr = torch.randn(b, in_f, device="cuda", dtype=dtype), torch.randn(b, out_f, device="cuda", dtype=dtype)
    s, c = gradient_topk(xr, gr, k, ex)
    rs, _ = gradient_topk_reference(xr, gr, k, ex)
    dense = (gr.float().t() @ xr.float()).abs()
    tol = 2e-2 * dense.max().item()
    torch.testing.assert_close(s, rs, rtol=0, atol=tol)
    assert (dense.gather(1, c) >= rs[:, -1:] - tol).all()

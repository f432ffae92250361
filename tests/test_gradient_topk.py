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
    (dict(tf32="yes"), "tf32 must be a bool"),
])
def test_validation(bad, match):
    args = dict(x=torch.randn(4, 40), g=torch.randn(4, 5), k=3, exclude=None, tf32=False)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        gradient_topk(args["x"], args["g"], args["k"], args["exclude"], tf32=args["tf32"])


def test_aot_specs_cover_fp32_and_bf16():
    from tritonsparse.kernels import gradient_topk as mod

    dtypes = {sig["x_ptr"] for _, sig, _ in mod.AOT_SPECS}
    assert dtypes == {"*fp32", "*bf16"}
    built = set()
    for autotuner, sig, constexprs in mod.AOT_SPECS:
        assert hasattr(autotuner, "fn") and constexprs["KP"] >= 16
        for cfg in autotuner.configs:  # each config is built at every KP the prune keeps it for
            exact = sig["x_ptr"] == "*fp32" and constexprs["PRECISION"] == "ieee"
            assert mod._serves(cfg, constexprs["KP"], exact, constexprs["GROUPED"])
            built.add((tuple(cfg.kwargs.items()), cfg.num_warps, cfg.num_stages, cfg.kps, cfg.grouped))
    assert len(built) == len(mod._configs()) - 1  # every GPU config is built


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,out_f,in_f,k,kx", [(64, 300, 777, 16, 0), (257, 129, 1000, 40, 33), (1000, 64, 4096, 100, 0),
                                               (70, 33, 3000, 300, 500)])  # the last one: chunked path
def test_kernel_cuda(dtype, b, out_f, in_f, k, kx):
    x, g = _int_data(b, out_f, in_f, dtype, "cuda")
    ex = _exclude(out_f, in_f, kx).cuda() if kx else None
    scores, cols = gradient_topk(x, g, k, ex)  # exact fp32 by default
    ref_s, ref_c = gradient_topk_reference(x, g, k, ex)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)
    # random data with tensor cores: scores within tolerance, chosen columns as good
    xr, gr = torch.randn(b, in_f, device="cuda", dtype=dtype), torch.randn(b, out_f, device="cuda", dtype=dtype)
    s, c = gradient_topk(xr, gr, k, ex, tf32=True)
    rs, _ = gradient_topk_reference(xr, gr, k, ex)
    dense = (gr.float().t() @ xr.float()).abs()
    tol = 2e-2 * dense.max().item()
    torch.testing.assert_close(s, rs, rtol=0, atol=tol)
    assert (dense.gather(1, c) >= rs[:, -1:] - tol).all()


# -- NaN rule, the chunked path for long lists, and the kernel's limits -------------------
def _nan_data():
    x, g = _int_data(6, 9, 40)
    x[2, 5] = float("nan")  # column 5 is NaN in every row whose g[2] != 0
    g[:, 7] = float("nan")  # row 7 is NaN everywhere
    return x, g


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_scores_are_never_selected(monkeypatch, backend):
    """A NaN score is never chosen, on either backend: a fully NaN row gives -1 / -inf."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)
    x, g = _nan_data()
    scores, cols = gradient_topk(x, g, 6)
    assert not scores.isnan().any()
    nan_rows = (g[2] != 0).nonzero().flatten().tolist()
    for r in range(9):
        if r == 7:
            assert (cols[r] == -1).all() and torch.isinf(scores[r]).all()
        elif r in nan_rows:
            assert 5 not in cols[r].tolist()


def test_nan_rule_same_on_every_path(monkeypatch):
    """Reference, fused kernel (interpreter) and chunked path agree bit for bit with NaNs
    present, exclusions included."""
    from tritonsparse.kernels.gradient_topk import gradient_topk_chunked

    x, g = _nan_data()
    ex = _exclude(9, 40, 3)
    ref = gradient_topk_reference(x, g, 8, ex)
    chunked = gradient_topk_chunked(x, g, 8, ex)
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    fused = gradient_topk(x, g, 8, ex)
    for s, c in (chunked, fused):
        assert torch.equal(c, ref[1])
        torch.testing.assert_close(s, ref[0], rtol=0, atol=0)


@pytest.mark.parametrize("k,kx", [(130, 0), (90, 60), (300, 200)], ids=["k130", "k90-ex60", "k300-ex200"])
def test_long_lists_take_the_chunked_path(monkeypatch, k, kx):
    """k + Kx past 128 runs row chunks of the product + topk on the kernel's keys (no
    kernel build at KP > 128); the result equals the reference, ties included."""
    import tritonsparse.kernels.gradient_topk as mod

    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    monkeypatch.setattr(mod, "_CHUNK_BYTES", 12 * 600 * 7)  # 5 rows per chunk: several chunks
    x, g = _int_data(5, 23, 600)
    ex = _exclude(23, 600, kx) if kx else None
    assert not mod.uses_fused_kernel(k, kx) and mod.uses_fused_kernel(100, 28)
    assert mod.chunk_rows(23, 600) == 12 * 7 // 16
    scores, cols = gradient_topk(x, g, k, ex)
    ref_s, ref_c = gradient_topk_reference(x, g, k, ex)
    assert torch.equal(cols, ref_c)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)


def test_kernel_prune_never_falls_back_past_the_cap():
    """No config is kept past KP = 128 (the old fallback built a 255-register, 5.4 KB-stack
    kernel there), and at every KP up to the cap the prune keeps a config built for it."""
    from tritonsparse.kernels import gradient_topk as mod

    configs = mod._configs()  # the full list (the interpreter's autotuner keeps one)
    for kp in (16, 32, 64, 128):
        for b, out in ((16, 16), (256, 768), (4096, 100000)):
            for dtype, prec in ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, "ieee")):
                args = {"b_bucket": b, "out_features": out, "x_ptr": torch.empty(1, dtype=dtype)}
                kept = mod._prune(configs, args, KP=kp, PRECISION=prec)
                exact = dtype == torch.float32 and prec == "ieee"
                # each precision keeps the tile built spill-free for it (exact fp32 has its own)
                assert kept and all(mod._serves(c, kp, exact) for c in kept)
    with pytest.raises(ValueError, match="KP=256"):
        mod._prune(configs, {"b_bucket": 256, "out_features": 768, "x_ptr": torch.empty(1)}, KP=256, PRECISION="ieee")
    assert max(sp[2]["KP"] for sp in mod.AOT_SPECS) == mod.MAX_KERNEL_KP == 128
    assert {sp[2]["PRECISION"] for sp in mod.AOT_SPECS} == {"ieee", "tf32"}


def test_default_is_exact_fp32(monkeypatch):
    """Without tf32 the launcher asks the kernel for exact ("ieee") products."""
    import tritonsparse.kernels.gradient_topk as mod

    seen = []
    real = mod.gradient_topk

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(mod, "gradient_topk", spy)
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    x, g = _int_data(4, 5, 30)
    gradient_topk(x, g, 3)
    gradient_topk(x, g, 3, tf32=True)  # TF32 exists only on CUDA: the interpreter stays exact
    assert seen == ["ieee", "ieee"]


def test_launcher_enters_the_tensors_device(monkeypatch):
    import contextlib

    import tritonsparse.kernels.gradient_topk as mod

    seen = []
    monkeypatch.setattr(mod, "launch_device", lambda t: seen.append(t) or contextlib.nullcontext())
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    x, g = _int_data(4, 5, 30)
    gradient_topk(x, g, 3)
    assert len(seen) == 1 and seen[0] is x


def test_chunked_cost_model_matches_the_documented_figures():
    """The README and the module docstring quote these modeled numbers (ViT-B 3072 x 768,
    batch 256, k = 614): keep them in step with the model."""
    from tritonsparse.kernels.gradient_topk import chunked_cost_model

    exact, fast = chunked_cost_model(256, 3072, 768), chunked_cost_model(256, 3072, 768, tf32=True)
    assert [round(exact[k]) for k in ("gemm_us", "select_us", "chunked_us", "dense_topk_us")] == [26, 29, 55, 49]
    assert [round(fast[k]) for k in ("gemm_us", "chunked_us", "dense_topk_us")] == [5, 34, 28]
    assert round(chunked_cost_model(256, 768, 3072, k=154)["select_us"]) == 21
    # a shape the kernel does not serve keeps the PyTorch selection's model
    assert round(chunked_cost_model(256, 8192, 768)["select_us"]) == round(8192 * 768 * 58 / 5.5e6 + 22)


def test_chunked_cost_model_agrees_with_the_sass_report():
    """The analytic selection model and the SASS report's modeled kernel time (the CSV
    under benchmarks/results) stay within 15% on the two issue-8 top-k problems."""
    import csv
    import pathlib

    from tritonsparse.kernels.gradient_topk import chunked_cost_model

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "results" / "kernel_report_h100_sm90.csv"
    rows = [r for r in csv.DictReader(path.open()) if r["role"] == "topk" and r["chosen"] == "1"]
    assert len(rows) == 2
    for r in rows:
        assert r["kernel"] == "_topk_select_kernel" and r["stack"] == "0" and r["local"] == "0"
        model = chunked_cost_model(int(r["batch"]), int(r["in"]), int(r["out"]), k=int(r["K"]))["select_us"]
        assert abs(model / float(r["modeled_us"]) - 1) < 0.15, (r["problem"], model, r["modeled_us"])


def test_cuda_dispatch_is_chosen_by_size():
    """On CUDA a product that fits in one chunk takes the chunked path (modeled faster);
    a larger one takes the fused kernel when its buffer allows; the interpreter always
    runs the kernel when it can (so the kernel stays tested)."""
    from tritonsparse.kernels.gradient_topk import uses_fused_kernel

    assert not uses_fused_kernel(23, 77, 3072, 768, cuda=True)  # ViT-B fc1: 9.4 MB of G
    assert uses_fused_kernel(23, 77, 100_000, 4096, cuda=True)  # 1.6 GB of G
    assert not uses_fused_kernel(100, 100, 100_000, 4096, cuda=True)  # buffer 256: chunked
    assert uses_fused_kernel(23, 77, 3072, 768, cuda=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_kernel_cuda(dtype):
    """The fused kernel itself on CUDA (the dispatcher sends products this small to the
    chunked path), exact products, ties and exclusions."""
    from tritonsparse.kernels import gradient_topk as mod

    x, g = _int_data(257, 129, 1000, dtype, "cuda")
    ex = _exclude(129, 1000, 33).cuda()
    scores = torch.empty(129, 40, dtype=torch.float32, device="cuda")
    cols = torch.empty(129, 40, dtype=torch.int64, device="cuda")
    mod.gradient_topk(x, g, 40, ex, scores, cols)
    ref_s, ref_c = gradient_topk_reference(x, g, 40, ex)
    torch.testing.assert_close(scores, ref_s, rtol=0, atol=0)
    assert torch.equal(cols, ref_c)


def test_chunked_path_ties_and_padding():
    """All-equal scores and rows with fewer than k allowed columns: the chunked path pads
    with -1 / -inf and orders ties by column, like the reference and the kernel."""
    from tritonsparse.kernels.gradient_topk import gradient_topk_chunked

    x, g = torch.ones(4, 18), torch.ones(4, 5)
    ex = _exclude(5, 18, 6, pad=False)
    got, ref = gradient_topk_chunked(x, g, 14, ex), gradient_topk_reference(x, g, 14, ex)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
    assert (got[1][:, 12:] == -1).all()

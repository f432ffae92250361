"""csr_matmul and the CSR row-gather kernel against a dense fp64 reference.

Patterns with rows of very unequal length: random, empty rows, one dense row among
empty ones, no nonzero at all, and a few very long rows (split into segments when the
split threshold is lowered). Both backends: the Triton kernel (interpreter on CPU) and
the torch path.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tritonsparse
from tritonsparse.csr import csr_matmul
from tritonsparse.kernels import csr_gather as cg

TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2)}


def _pattern(name, out_f, in_f):
    w = torch.randn(out_f, in_f, dtype=torch.float64)
    if name == "random":
        mask = torch.rand(out_f, in_f) < 0.3
    elif name == "empty_rows":
        mask = torch.rand(out_f, in_f) < 0.4
        mask[::3] = False
    elif name == "one_dense_row":
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
        mask[out_f // 2] = True
    elif name == "all_empty":
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
    elif name == "long_rows":  # mostly 0-2 nonzeros a row, two rows almost dense
        mask = torch.rand(out_f, in_f) < 1.5 / in_f
        mask[1] = torch.rand(in_f) < 0.95
        mask[out_f - 2] = torch.rand(in_f) < 0.6
    else:
        raise ValueError(name)
    return w * mask


@pytest.fixture
def split_small(monkeypatch):
    """Split rows as soon as they pass 4x the mean (segments of >= 4 nonzeros), so tiny
    test patterns exercise the segment pass."""
    monkeypatch.setattr(cg, "SPLIT_FACTOR", 4)
    monkeypatch.setattr(cg, "MIN_SEGMENT", 4)


def _backend(monkeypatch, name):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", name)


CASES = [
    # (pattern, out_features, in_features, x leading shape)
    ("random", 37, 53, (3,)),
    ("empty_rows", 19, 30, (1,)),
    ("one_dense_row", 21, 45, (2, 3)),
    ("all_empty", 9, 17, (5,)),
    ("long_rows", 37, 211, (6,)),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pattern,out_f,in_f,lead", CASES, ids=[c[0] for c in CASES])
def test_forward_and_grads(monkeypatch, split_small, backend, dtype, pattern, out_f, in_f, lead):
    _backend(monkeypatch, backend)
    w64 = _pattern(pattern, out_f, in_f)
    x = torch.randn(*lead, in_f, dtype=dtype, requires_grad=True)
    bias = torch.randn(out_f, dtype=dtype, requires_grad=True)
    weight = w64.to(dtype).to_sparse_csr().requires_grad_()
    y = csr_matmul(x, weight, bias)
    assert y.shape == (*lead, out_f) and y.dtype == dtype

    wd = w64.to(dtype).double()
    ref = torch.nn.functional.linear(x.detach().double(), wd, bias.detach().double())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=atol * max(1, in_f ** 0.5))

    g = torch.randn_like(y)
    y.backward(g)
    g2 = g.double().reshape(-1, out_f)
    x2 = x.detach().double().reshape(-1, in_f)
    torch.testing.assert_close(x.grad.double(), (g.double() @ wd), rtol=rtol, atol=atol * max(1, out_f ** 0.5))
    torch.testing.assert_close(bias.grad.double(), g2.sum(0), rtol=rtol, atol=atol * 4)
    assert weight.grad.layout == torch.sparse_csr
    dw_ref = (g2.t() @ x2) * (w64 != 0)
    torch.testing.assert_close(weight.grad.to_dense().double(), dw_ref, rtol=rtol, atol=atol * 4)


def test_long_rows_are_split(split_small):
    crow = _pattern("long_rows", 37, 211).to_sparse_csr().crow_indices().int()
    plan = cg.make_plan(crow)
    assert plan.long_rows.tolist() == [1, 35] and plan.n_segments > 1


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=40),
       split=st.sampled_from([2, 4, 8]), min_seg=st.sampled_from([1, 4, 16]))
def test_plan_covers_every_nonzero_once(lengths, split, min_seg):
    crow = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(torch.tensor(lengths), 0)
    plan = cg.make_plan(crow, split_factor=split, min_segment=min_seg)
    rows = torch.cat([plan.order.long(), plan.long_rows])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    plain = torch.tensor(lengths)[plan.order.long()]
    assert (plain.diff() <= 0).all()  # longest first
    n_long = plan.long_rows.numel()
    if n_long:
        covered = (plan.seg_end - plan.seg_start).view(plan.n_segments, n_long).sum(0)
        assert covered.tolist() == [lengths[r] for r in plan.long_rows.tolist()]
        assert int((plan.seg_end - plan.seg_start).max()) <= plan.seg_len


@pytest.mark.parametrize("use_plan", [False, True], ids=["order", "plan"])
def test_gather_writes_every_output(split_small, use_plan):
    """Outputs start as NaN: a row the kernel forgets stays NaN."""
    w = _pattern("long_rows", 37, 211).float().to_sparse_csr()
    crow, col = w.crow_indices().int(), w.col_indices().int()
    x = torch.randn(3, 211)
    out = torch.full((3, 37), float("nan"))
    order = torch.argsort(crow.diff(), descending=True).int()
    plan = cg.make_plan(crow) if use_plan else None
    cg.csr_gather(x.t().contiguous(), crow, col, w.values(), out, row_order=None if use_plan else order, plan=plan)
    torch.testing.assert_close(out, x @ w.to_dense().t(), rtol=1e-5, atol=1e-4)


def test_exported():
    assert tritonsparse.csr_matmul is csr_matmul


def test_structure_cached_per_weight(monkeypatch):
    from tritonsparse import csr

    w = _pattern("random", 13, 20).float().to_sparse_csr()
    first = csr._transposed(w)
    assert csr._transposed(w) is first
    assert csr._transposed(w.clone()) is not first


# -- bad input ------------------------------------------------------------------------------
def _w(out_f=6, in_f=8, dtype=torch.float32):
    return _pattern("random", out_f, in_f).to(dtype).to_sparse_csr()


@pytest.mark.parametrize("make,exc,word", [
    (lambda: (torch.randn(2, 8), torch.randn(6, 8), None), TypeError, "weight"),
    (lambda: (torch.randn(2, 8), _w().to_sparse_coo(), None), TypeError, "weight"),
    (lambda: (torch.randn(2, 7), _w(), None), ValueError, "in_features"),
    (lambda: (torch.randn(2, 8), _w(), torch.randn(5)), ValueError, "bias"),
    (lambda: (torch.randn(2, 8, dtype=torch.bfloat16), _w(), None), TypeError, "weight"),
    (lambda: (torch.randn(2, 8), _w(), torch.randn(6, dtype=torch.float64)), TypeError, "bias"),
    (lambda: (torch.randint(0, 3, (2, 8)), _w(), None), TypeError, "x"),
    (lambda: (torch.randn(2, 8, device="meta"), _w(), None), ValueError, "weight"),
], ids=["dense_weight", "coo_weight", "shape", "bias_shape", "dtype", "bias_dtype", "int_x", "devices"])
def test_bad_input(make, exc, word):
    x, w, b = make()
    with pytest.raises(exc, match=word):
        csr_matmul(x, w, b)


# -- GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 16, 256])
def test_gpu_matches_dense(dtype, batch):
    out_f, in_f = 768, 3072
    w = torch.randn(out_f, in_f, device="cuda") * (torch.rand(out_f, in_f, device="cuda") < 0.1)
    w[7] = torch.randn(in_f, device="cuda")  # one dense row: split into segments
    weight = w.to(dtype).to_sparse_csr().requires_grad_()
    x = torch.randn(batch, in_f, device="cuda", dtype=dtype, requires_grad=True)
    bias = torch.randn(out_f, device="cuda", dtype=dtype)
    y = csr_matmul(x, weight, bias)
    ref = torch.nn.functional.linear(x.detach().float(), w.to(dtype).float(), bias.float())
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol * 10)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad.float(), g.float() @ w.to(dtype).float(), rtol=tol, atol=tol * 10)

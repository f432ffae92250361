"""``batch_major_out``: a layer writes yT, and the next condensed layer (after elementwise
ops, which keep the layout) gathers from it in place; the gradients flow back in the same
layout. Same values and gradients as the row-major chain, on the interpreter and the torch
path; no transpose in the steady state on the CUDA path (the launches captured as a GPU
would run them)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import tritonsparse
from tritonsparse import _triton
from tritonsparse.nn import CondensedLinear

DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.float32, torch.bfloat16)]


def _use_backend(monkeypatch, backend):
    if backend == "triton" and not _triton.interpreting():
        pytest.skip("kernels on CPU need TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)


def _pair(batch_major_out, dtype):
    torch.manual_seed(0)
    a = CondensedLinear(24, 40, 7, batch_major_out=batch_major_out).to(dtype)
    b = CondensedLinear(40, 12, 9).to(dtype)
    return a, b


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("batch", [5, 32, 20], ids=["B5", "B32", "B20-padded"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_matches_row_major(monkeypatch, backend, batch, dtype):
    """fc1(batch_major_out) -> GELU -> fc2 gives the row-major chain's output and gradients
    (x, both layers' values and biases). B=20 exercises the zero-padded batch (storage of
    32 columns): y is then a column slice of it, still batch-major (stride(0) == 1)."""
    _use_backend(monkeypatch, backend)
    a, b = _pair(True, dtype)
    a_ref, b_ref = _pair(False, dtype)
    x = torch.randn(batch, 24, dtype=dtype)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    h = a(xs[0])
    assert h.shape == (batch, 40) and h.stride(0) == 1
    assert h.t().is_contiguous() or backend == "triton" and batch == 20
    y, y_ref = b(F.gelu(h)), b_ref(F.gelu(a_ref(xs[1])))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y, y_ref, **tol)
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    for got, want in ((xs[0].grad, xs[1].grad), (a.values.grad, a_ref.values.grad), (b.values.grad, b_ref.values.grad),
                      (a.bias.grad, a_ref.bias.grad), (b.bias.grad, b_ref.bias.grad)):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_batch_major_x_and_its_gradient_layout(monkeypatch, backend):
    """An x given batch-major (a view of xT) gives the row-major x's values, and dX comes
    back batch-major on the kernel path (the layout x came in, for the layer before)."""
    _use_backend(monkeypatch, backend)
    torch.manual_seed(1)
    idx = torch.stack([torch.randperm(30)[:6] for _ in range(10)]).int()
    values = torch.randn(10, 6)
    xt = torch.randn(30, 16)
    x_bm = xt.t().requires_grad_()  # (16, 30) view of (30, 16) storage
    x_rm = xt.t().contiguous().requires_grad_()
    y_bm = tritonsparse.condensed_matmul(x_bm, values, idx, batch_major_out=True)
    y_rm = tritonsparse.condensed_matmul(x_rm, values, idx)
    assert y_bm.t().is_contiguous()
    torch.testing.assert_close(y_bm, y_rm)
    g = torch.randn(16, 10)
    (gx_bm,) = torch.autograd.grad(y_bm, x_bm, g.t().contiguous().t())  # dY batch-major too
    (gx_rm,) = torch.autograd.grad(y_rm, x_rm, g)
    torch.testing.assert_close(gx_bm, gx_rm)
    if backend == "triton":
        assert gx_bm.t().is_contiguous()


def test_batch_major_out_must_be_a_bool():
    idx = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="batch_major_out"):
        tritonsparse.condensed_matmul(torch.randn(3, 5), torch.randn(4, 2), idx, batch_major_out=1)
    with pytest.raises(TypeError, match="batch_major_out"):
        CondensedLinear(8, 4, 2, batch_major_out="yes")


def test_ablated_rows_come_back_row_major(monkeypatch):
    """While rows are ablated the layer re-scatters y to all rows: row-major, same values."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    a, _ = _pair(True, torch.float32)
    a_ref, _ = _pair(False, torch.float32)
    keep = torch.tensor([r for r in range(40) if r not in (3, 17)])
    for m in (a, a_ref):
        m.set_pattern(m.weight_values[keep].detach(), m.weight_indices[keep], keep)
    assert a.n_active == 38
    x = torch.randn(6, 24)
    y = a(x)
    assert y.is_contiguous()
    torch.testing.assert_close(y, a_ref(x))


_HOST_OPS_SCRIPT = r"""
import json
from tritonsparse.sass.problems import Problem, capture
out = {}
for bm in (False, True):
    for role in ("fwd", "bwd"):
        for shape in ((96, 64, 10), (64, 96, 7)):
            launches, ops = capture(Problem(role, *shape, 32, "fp32", "int32", batch_major=bm))
            out[f"{role} {shape[0]} {bm}"] = {"ops": [o.name for o in ops], "launches": [l.name for l in launches]}
print(json.dumps(out))
"""


def test_chain_needs_no_transpose_on_the_kernel_path():
    """As a GPU runs it (launches captured, CUDA's once-per-version index check): a row-major
    layer copies x (forward) and dY (backward) batch-major; in a batch-major chain the
    forward is the kernel alone and the backward its three kernels alone."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _HOST_OPS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for in_f in (96, 64):
        assert got[f"fwd {in_f} False"] == {"ops": ["clone"], "launches": ["_condensed_fwd_kernel"]}
        assert got[f"fwd {in_f} True"] == {"ops": [], "launches": ["_condensed_fwd_kernel"]}
        launches = got[f"bwd {in_f} False"]["launches"]
        assert launches[:2] == ["_csr_gather_kernel", "_condensed_dw_kernel"]  # + the partial sums' reduce at scale
        assert got[f"bwd {in_f} False"]["ops"] == ["clone"]
        assert got[f"bwd {in_f} True"] == {"ops": [], "launches": launches}


def test_compiled_graph_keeps_the_layout(monkeypatch):
    """Under ``torch.compile`` (the registered op) ``batch_major_out`` still gives a
    batch-major y with the eager values and gradients."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    torch.manual_seed(2)
    values = torch.randn(10, 6, requires_grad=True)
    idx = torch.stack([torch.randperm(30)[:6] for _ in range(10)]).int()
    fn = torch.compile(lambda x: tritonsparse.condensed_matmul(x, values, idx, batch_major_out=True),
                       backend="aot_eager", fullgraph=True)
    x = torch.randn(16, 30, requires_grad=True)
    y = fn(x)
    assert y.t().is_contiguous()
    torch.testing.assert_close(y, tritonsparse.condensed_matmul(x, values, idx))
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (gx_ref,) = torch.autograd.grad(tritonsparse.condensed_matmul(x, values, idx).square().sum(), x)
    torch.testing.assert_close(gx, gx_ref)

"""The per-row training step's backward with fewer launches (issue 8): the dValues
partial sums reduced by a Triton kernel in slice order and written in the values' dtype
(instead of a PyTorch ``sum`` and a cast), and dX reading the values in their condensed
order through the CSC permutation (instead of an ``index_select`` per call).
Interpreter on CPU; shapes are small and odd."""
import pytest
import torch

from tritonsparse import _triton

interpreter_only = pytest.mark.skipif(not (_triton.HAS_TRITON and _triton.interpreting()),
                                      reason="Triton on CPU tensors needs TRITON_INTERPRET=1")


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("splits,n,K", [(3, 7, 5), (1, 2, 3), (5, 37, 41)], ids=["3x7x5", "1x2x3", "5x37x41"])
def test_reduce_partials_sums_slices_in_order(dtype, layout, splits, n, K):
    from tritonsparse.kernels.condensed_dw import reduce_partials

    part = torch.randn(splits, n, K)
    if layout == "contiguous":
        out = torch.full((n, K), float("nan"), dtype=dtype)
    else:  # a column-major (n, K) view: the kernel stores at out's strides
        out = torch.full((K, n), float("nan"), dtype=dtype).t()
    reduce_partials(part, out)
    want = part[0].clone()
    for s in range(1, splits):  # slice order, in fp32: what the kernel promises
        want += part[s]
    if dtype == torch.float32:
        assert torch.equal(out, want)
    else:  # one rounding to the narrow type (the interpreter's bf16 cast may truncate: 1 ulp)
        ulp = torch.finfo(dtype).eps
        torch.testing.assert_close(out.float(), want, rtol=ulp, atol=ulp * 1e-3)


def test_reduce_partials_rejects_bad_input():
    from tritonsparse.kernels.condensed_dw import reduce_partials

    with pytest.raises(ValueError, match="part"):
        reduce_partials(torch.randn(2, 3, 4, dtype=torch.float64), torch.empty(3, 4))
    with pytest.raises(ValueError, match="part"):
        reduce_partials(torch.randn(2, 4, 3).transpose(1, 2), torch.empty(3, 4))
    with pytest.raises(ValueError, match="out"):
        reduce_partials(torch.randn(2, 3, 4), torch.empty(4, 3))


@interpreter_only
def test_split_dw_launches_the_reduce_kernel_not_torch_ops(monkeypatch):
    """With more than one batch slice, the launcher runs the dValues kernel and the reduce
    kernel, and no PyTorch ``sum``."""
    import tritonsparse.kernels.condensed_dw as mod
    from helpers import random_indices

    calls = []
    real = mod.reduce_partials
    monkeypatch.setattr(mod, "reduce_partials", lambda part, out: calls.append(part.shape) or real(part, out))
    monkeypatch.setattr(torch.Tensor, "sum", lambda *a, **k: pytest.fail("torch sum in the dValues launcher"))
    x, g = torch.randn(70, 13), torch.randn(70, 6)
    out = torch.full((6, 4), float("nan"), dtype=torch.bfloat16)
    mod.condensed_dw(x.t().contiguous().bfloat16(), g.t().contiguous().bfloat16(), random_indices(6, 4, 13), out,
                     splits=3)
    assert calls == [(3, 6, 4)] and not out.isnan().any()


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch,in_f,n,K", [(1, 13, 7, 5), (5, 29, 19, 6), (37, 33, 11, 9)],
                         ids=["b1", "b5-odd", "b37-wide"])
def test_dx_through_the_permutation_equals_the_permuted_copy(dtype, batch, in_f, n, K):
    """csr_gather reading values[perm[p]] gives exactly what it gives on the copy
    values.flatten()[perm] (same values, same order of accumulation)."""
    from helpers import random_indices

    from tritonsparse._structure import transpose_structure
    from tritonsparse.kernels.csr_gather import csr_gather

    indices = random_indices(n, K, in_f, torch.int32)
    values = torch.randn(n, K).to(dtype)
    gT = torch.randn(n, batch).to(dtype)
    crow, rows, perm = transpose_structure(indices, in_f)
    via_perm = torch.full((batch, in_f), float("nan"), dtype=dtype)
    copied = torch.full((batch, in_f), float("nan"), dtype=dtype)
    csr_gather(gT, crow, rows, values.reshape(-1), via_perm, val_perm=perm.to(torch.int32))
    csr_gather(gT, crow, rows, values.reshape(-1)[perm], copied)
    assert torch.equal(via_perm, copied)
    ref = (gT.double().t() @ torch.zeros(n, in_f, dtype=torch.float64).scatter_add_(
        1, indices.long(), values.double()))
    torch.testing.assert_close(via_perm.double(), ref, rtol=0.05 if dtype != torch.float32 else 1e-5, atol=0.05)


def test_csr_gather_rejects_a_bad_permutation():
    from tritonsparse.kernels.csr_gather import csr_gather

    crow, col = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32)
    val, out = torch.randn(2), torch.empty(3, 2)
    with pytest.raises(ValueError, match="val_perm"):
        csr_gather(torch.randn(2, 3), crow, col, val, out, val_perm=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="val_perm"):
        csr_gather(torch.randn(2, 3), crow, col, val, out, val_perm=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="val_perm"):
        csr_gather(torch.randn(2, 3), crow, col, torch.randn(2, 2)[:, 0], out, val_perm=torch.tensor([0, 1]))


@interpreter_only
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous-values", "strided-values"])
def test_backward_dx_without_index_select(monkeypatch, contiguous):
    """The Triton backward computes dX with no index_select of the values when they are
    contiguous (a strided values tensor still takes the permuted copy) and matches the
    reference for both."""
    from helpers import random_indices

    import tritonsparse
    from tritonsparse.reference import condensed_grad_reference

    selects = []
    real = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a: selects.append(1) or real(self, *a))
    n, K, in_f, batch = 9, 5, 23, 6
    indices = random_indices(n, K, in_f, torch.int32)
    values = torch.randn(n, K) if contiguous else torch.randn(K, n).t()  # (n, K) either way
    values.requires_grad_(True)
    x = torch.randn(batch, in_f, requires_grad=True)
    g = torch.randn(batch, n)
    gx, gv = torch.autograd.grad(tritonsparse.condensed_matmul(x, values, indices), (x, values), g)
    assert (len(selects) == 0) == contiguous
    rx, rv = condensed_grad_reference(x.detach().double(), values.detach().double(), indices, g.double())
    torch.testing.assert_close(gx.double(), rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gv.double(), rv, rtol=1e-5, atol=1e-5)

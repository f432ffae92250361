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

"""Issue 11 regressions of the public ops beyond the bad-input table (tests/test_bad_input.py):
ownership of the derived pattern structures (item 5), inference mode (item 7) and empty
shapes that must launch no kernel and register no autotune entry (item 8)."""
import pytest
import torch

import tritonsparse
from tritonsparse import CondensedWeight, condensed_matmul, csr_matmul
from tritonsparse import _structure
from tritonsparse.nn import CondensedConv2d, CondensedLinear

from helpers import random_indices


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", request.param)
    return request.param


def _count_transposes(monkeypatch):
    calls = []
    real = _structure.transpose_structure

    def counting(indices, in_features):
        calls.append(in_features)
        return real(indices, in_features)

    monkeypatch.setattr(_structure, "transpose_structure", counting)
    return calls


# -- item 5: derived structures belong to the pattern's owner ---------------------------------
def test_layer_builds_its_transposed_structure_once_per_pattern(backend, monkeypatch):
    calls = _count_transposes(monkeypatch)
    layer = CondensedLinear(12, 5, fan_in=3)
    x = torch.randn(2, 12, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    assert len(calls) == 1  # kept across steps
    layer.set_pattern(torch.randn(5, 3), random_indices(5, 3, 12))
    layer(x).sum().backward()
    assert len(calls) == 2  # set_pattern starts a new Pattern
    layer.load_state_dict(CondensedLinear(12, 5, fan_in=3).state_dict())
    x.grad = None
    layer(x).sum().backward()
    assert len(calls) == 3  # and so does load_state_dict
    torch.testing.assert_close(x.grad, torch.ones(2, 5) @ layer.to_dense_weight(), rtol=1e-5, atol=1e-5)


def test_functional_op_rebuilds_the_transpose_after_a_data_write(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    calls = _count_transposes(monkeypatch)
    indices = random_indices(5, 3, 12)
    values = torch.randn(5, 3)
    x = torch.randn(2, 12, requires_grad=True)
    condensed_matmul(x, values, indices).sum().backward()
    condensed_matmul(x, values, indices).sum().backward()
    assert len(calls) == 1
    indices.data.copy_(random_indices(5, 3, 12))  # no version bump
    x.grad = None
    condensed_matmul(x, values, indices).sum().backward()
    assert len(calls) == 2
    dense = torch.zeros(5, 12).scatter_add_(1, indices.long(), values)
    torch.testing.assert_close(x.grad, torch.ones(2, 5) @ dense, rtol=1e-5, atol=1e-5)


def test_range_check_runs_inside_the_registered_op(monkeypatch):
    """The torch.library op (what compiled graphs call) checks the range itself."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    indices = torch.full((2, 1), 7, dtype=torch.int32)
    with pytest.raises(ValueError, match="indices holds 7"):
        torch.ops.tritonsparse.condensed_matmul(torch.randn(3, 5), torch.randn(2, 1), indices, None)


def test_csr_column_write_after_a_backward_is_seen(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    dense = torch.randn(4, 9) * (torch.rand(4, 9) < 0.5)
    dense[:, 0] = 1.0
    w = dense.to_sparse_csr()
    x = torch.randn(3, 9, requires_grad=True)
    csr_matmul(x, w).sum().backward()  # builds the transposed structure
    w.col_indices()[0] = 1 if int(w.col_indices()[0]) != 1 else 2  # in range, behind the stamp
    x.grad = None
    csr_matmul(x, w).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 4) @ w.to_dense(), rtol=1e-5, atol=1e-5)
    w.col_indices()[1] = 10**8
    with pytest.raises(ValueError, match="col_indices"):
        csr_matmul(x, w)


# -- item 7: inference mode ---------------------------------------------------------------------
def test_inference_mode_constructors_and_forwards(backend):
    with torch.inference_mode():
        w = CondensedWeight.from_dense(torch.eye(6)[:, torch.randperm(6)])
        x = torch.randn(3, 6)
        torch.testing.assert_close(w.matmul(x), x @ w.to_dense().t())
        layer = CondensedLinear.from_condensed(w, bias=torch.randn(6))
        torch.testing.assert_close(layer(x), x @ w.to_dense().t() + layer.bias)
        conv = CondensedConv2d(2, 3, 3, fan_in=5)
        y = conv(torch.randn(1, 2, 6, 6))
        assert y.shape == (1, 3, 4, 4)
    # the same layer keeps working outside inference mode (its pattern is re-derived)
    layer2 = CondensedLinear(6, 4, fan_in=2)
    with torch.inference_mode():
        layer2(torch.randn(2, 6))
    layer2(torch.randn(2, 6, requires_grad=True)).sum().backward()


# -- item 8: empty shapes launch nothing --------------------------------------------------------
def _forbid_launches(monkeypatch):
    """Launchers and the autotuned kernels themselves raise: an empty product must neither
    launch nor autotune (a batch of 0 used to register an entry under the batch-1 key)."""
    from tritonsparse.kernels import condensed_conv, condensed_dw, condensed_fwd, csr_gather

    def boom(*args, **kwargs):
        raise AssertionError("a kernel was launched for an empty product")

    for mod, name in [(condensed_fwd, "condensed_fwd"), (condensed_dw, "condensed_dw"), (csr_gather, "csr_gather"),
                      (condensed_conv, "condensed_conv_fwd"), (condensed_conv, "condensed_conv_dw")]:
        monkeypatch.setattr(mod, name, boom)
    for kernel in [condensed_fwd._condensed_fwd_kernel, condensed_dw._condensed_dw_kernel, csr_gather._csr_gather_kernel,
                   condensed_conv._condensed_conv_fwd_kernel, condensed_conv._condensed_conv_dw_kernel]:
        monkeypatch.setattr(kernel, "run", boom)


@pytest.mark.parametrize("batch, n, k, in_f", [(0, 4, 2, 9), (3, 0, 2, 9), (3, 4, 0, 9), (3, 4, 0, 0), (0, 0, 0, 0)],
                         ids=["batch0", "n0", "k0", "in0", "all0"])
def test_empty_products_launch_no_kernel(monkeypatch, batch, n, k, in_f):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    _forbid_launches(monkeypatch)
    x = torch.randn(batch, in_f, requires_grad=True)
    values = torch.randn(n, k, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    y = condensed_matmul(x, values, random_indices(n, k, max(in_f, 1)), bias)
    torch.testing.assert_close(y, bias.detach().expand(batch, n))
    y.sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()
    assert values.grad.shape == values.shape and not values.grad.any()
    torch.testing.assert_close(bias.grad, torch.full((n,), float(batch)))
    w = torch.zeros(max(n, 1), in_f).to_sparse_csr()
    assert csr_matmul(torch.randn(batch, in_f), w).shape == (batch, max(n, 1))


def test_conv_batch_0_launches_no_kernel(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    _forbid_launches(monkeypatch)
    conv = CondensedConv2d(2, 3, 3, fan_in=4)
    x = torch.randn(0, 2, 5, 5, requires_grad=True)
    y = conv(x)
    y.sum().backward()
    assert y.shape == (0, 3, 3, 3) and x.grad.shape == x.shape


def test_kernel_sees_a_contiguous_bias(monkeypatch):
    """Item 1 at the boundary: the Triton forwards are handed a contiguous bias."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    from tritonsparse.kernels import condensed_fwd

    seen = []
    real = condensed_fwd.condensed_fwd

    def spy(xT, values, indices, bias, out):
        seen.append(bias.is_contiguous())
        return real(xT, values, indices, bias, out)

    monkeypatch.setattr(condensed_fwd, "condensed_fwd", spy)
    x, values, indices = torch.randn(3, 8), torch.randn(4, 2), random_indices(4, 2, 8)
    bias = torch.randn(8)[::2]
    y = condensed_matmul(x, values, indices, bias)
    assert seen == [True]
    torch.testing.assert_close(y, tritonsparse.reference.condensed_matmul_reference(x, values, indices, bias))


@pytest.mark.gpu
def test_cuda_range_check_once_per_version():
    """On CUDA the check syncs, so it runs once per version of the indices tensor."""
    pattern = _structure.Pattern(16)
    indices = random_indices(4, 3, 16).cuda()
    pattern.check_range(indices)
    stamp = pattern._checked
    pattern.check_range(indices)
    assert pattern._checked == stamp
    indices[0, 0] = 16  # bumps the version
    with pytest.raises(ValueError, match="indices holds 16"):
        pattern.check_range(indices)
    layer = CondensedLinear(16, 4, fan_in=3, device="cuda")
    assert layer._pattern._checked is not None  # set_pattern's check counts: no second sync
    layer.indices.data[0] = 99  # behind the version counter: left to the kernels' mask
    layer.indices[1] = 99  # bumps it: checked again
    with pytest.raises(ValueError, match="indices holds 99"):
        layer(torch.randn(2, 16, device="cuda"))

"""dValues kernel (tritonsparse/kernels/condensed_dw.py): the batch split into slices with
fp32 partial sums, indices out of range, and the launch grid; interpreter on CPU."""
import pytest
import torch

from tritonsparse import _triton
from tritonsparse.reference import condensed_grad_reference

from helpers import assert_close, random_indices

interpreter_only = pytest.mark.skipif(not (_triton.HAS_TRITON and _triton.interpreting()),
                                      reason="Triton on CPU tensors needs TRITON_INTERPRET=1")


def _run(batch, in_f, n, k, dtype=torch.float32, splits=None, index_dtype=torch.int32):
    from tritonsparse.kernels.condensed_dw import condensed_dw

    x = torch.randn(batch, in_f).to(dtype)
    g = torch.randn(batch, n).to(dtype)
    indices = random_indices(n, k, in_f, index_dtype)
    out = torch.full((n, k), float("nan"), dtype=dtype)
    condensed_dw(x.t().contiguous(), g.t().contiguous(), indices, out, splits=splits)
    _, ref = condensed_grad_reference(x.double(), torch.zeros(n, k, dtype=torch.float64), indices, g.double())
    return out, ref, indices, x, g


@interpreter_only
@pytest.mark.parametrize("batch,in_f,n,k,splits", [
    pytest.param(1, 13, 5, 3, None, id="b1"),
    pytest.param(7, 29, 19, 6, None, id="b7-odd"),
    pytest.param(70, 40, 9, 5, None, id="b70-auto-split"),
    pytest.param(70, 40, 9, 5, 1, id="b70-one-slice"),
    pytest.param(100, 33, 5, 17, 3, id="b100-3-slices"),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dw_matches_reference(batch, in_f, n, k, splits, dtype):
    out, ref, *_ = _run(batch, in_f, n, k, dtype, splits, torch.int16 if dtype == torch.bfloat16 else torch.int32)
    assert not out.isnan().any()
    assert_close(out, ref, dtype, batch, "dvalues")


@interpreter_only
def test_split_equals_unsplit():
    """Slices summed after the kernel give the single-slice result (fp32 rounding aside)."""
    from tritonsparse.kernels.condensed_dw import condensed_dw

    x, g = torch.randn(96, 21), torch.randn(96, 6)
    indices = random_indices(6, 4, 21)
    one, three = torch.empty(6, 4), torch.empty(6, 4)
    condensed_dw(x.t().contiguous(), g.t().contiguous(), indices, one, splits=1)
    condensed_dw(x.t().contiguous(), g.t().contiguous(), indices, three, splits=3)
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)


@interpreter_only
def test_out_of_range_indices_are_never_read():
    """A slot whose index is outside [0, in_features) gets 0 and the other slots stay right;
    an inf in x's column 0 (what a clamped slot reads) does not leak into them."""
    from tritonsparse.kernels.condensed_dw import condensed_dw

    x, g = torch.randn(9, 12), torch.randn(9, 4)
    x[:, 0] = float("inf")
    indices = torch.tensor([[1, 2, 5], [3, 12, 4], [6, -1, 7], [8, 9, 1 << 20]], dtype=torch.int32)
    out = torch.full((4, 3), float("nan"))
    condensed_dw(x.t().contiguous(), g.t().contiguous(), indices, out)
    bad = (indices < 0) | (indices >= 12)
    assert (out[bad] == 0).all()
    ref = torch.einsum("bj,bjk->jk", g.double(), x.double()[:, indices.clamp(0, 11).long()])
    torch.testing.assert_close(out[~bad].double(), ref[~bad], rtol=1e-5, atol=1e-5)


@interpreter_only
def test_empty_batch_writes_zeros():
    from tritonsparse.kernels.condensed_dw import condensed_dw

    out = torch.full((3, 2), float("nan"))
    condensed_dw(torch.empty(5, 0), torch.empty(3, 0), random_indices(3, 2, 5), out)
    assert (out == 0).all()


def test_dw_split_slices_fit_l1_and_fill_the_gpu():
    from tritonsparse.kernels.condensed_dw import _L1_SLICE_BYTES, _MIN_SLICE, dw_split

    assert dw_split(768, 307, 16, 3072, 2) == (1, 16)  # small batch: one slice
    for n, k, batch, in_f, es in [(768, 307, 256, 3072, 4), (3072, 77, 256, 768, 4), (64, 8, 4096, 128, 2),
                                  (4, 4, 1000, 50000, 4)]:
        splits, per = dw_split(n, k, batch, in_f, es)
        assert per % 32 == 0 and per >= _MIN_SLICE
        assert splits == -(-batch // per) and (splits - 1) * per < batch  # no empty slice
        assert per == _MIN_SLICE or in_f * per * es <= 2 * _L1_SLICE_BYTES or splits * 16 * 16 >= 1024
    # few tiles: more slices so the GPU has enough programs
    assert dw_split(16, 16, 4096, 64, 4)[0] >= 64


def test_grid_puts_tiles_on_axis_0():
    """The tiles (which can pass 65,535) go on axis 0, the slices on axis 1."""
    from tritonsparse.kernels.condensed_dw import dw_grid

    gx, gy = dw_grid(3_000_000, 40, 8, {"BLOCK_N": 16, "BLOCK_K": 16})
    assert gx == 187_500 * 3 and gy == 8


def test_autotune_keys_are_bucketed():
    from tritonsparse.kernels.condensed_dw import _condensed_dw_kernel

    assert set(_condensed_dw_kernel.keys) == {"n_bucket", "k_bucket", "b_bucket"}

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


def test_dw_split_regimes():
    from tritonsparse.kernels.condensed_dw import _L1_BYTES, _MAX_SPLITS, dw_split

    assert dw_split(768, 307, 16, 3072, 2) == (1, 16, 0)  # small batch: one slice, a program per tile
    for n, k, batch, in_f, es in [(3072, 77, 256, 768, 4), (3072, 77, 4096, 768, 4), (64, 8, 256, 128, 4),
                                  (768, 307, 256, 3072, 4), (768, 307, 4096, 3072, 4), (5, 3, 1000, 50000, 2)]:
        splits, per, programs = dw_split(n, k, batch, in_f, es)
        assert splits == -(-batch // per) <= _MAX_SPLITS and (splits - 1) * per < batch  # no empty slice
        if 2 * in_f * 32 * es <= _L1_BYTES:  # slice-affine: two slices fit in L1, ~2 programs per SM
            assert programs > 0 and (2 * in_f * per * es <= _L1_BYTES or splits == _MAX_SPLITS)
            assert 2 * 132 <= splits * programs < 2 * 132 + splits
        else:  # a program per tile, slices of >= 32 columns
            assert programs == 0 and per % 32 == 0
    assert dw_split(3072, 77, 256, 768, 4) == (8, 32, 33)  # ViT-B fc1, fp32
    assert dw_split(768, 307, 256, 3072, 4) == (8, 32, 0)  # ViT-B fc2, fp32


@interpreter_only
def test_slice_affine_programs_walk_many_tiles(monkeypatch):
    """Few programs per slice, each looping over many tiles, give the same result."""
    import tritonsparse.kernels.condensed_dw as mod

    monkeypatch.setattr(mod, "dw_split", lambda n, k, b, i, e: (5, 8, 2))  # 5 slices of 8, 2 programs each
    out, ref, *_ = _run(37, 23, 21, 19)  # tiles of 16 x 16: 2 x 2 = 4 per slice, 2 per program
    assert not out.isnan().any()
    assert_close(out, ref, torch.float32, 37, "dvalues")


def test_grid_puts_tiles_on_axis_0():
    """The tiles (which can pass 65,535) go on axis 0, the slices on axis 1."""
    from tritonsparse.kernels.condensed_dw import dw_grid

    meta = {"BLOCK_N": 16, "BLOCK_K": 16}
    assert dw_grid(3_000_000, 40, 8, 0, meta) == (187_500 * 3, 8)
    assert dw_grid(3_000_000, 40, 8, 33, meta) == (33, 8)
    assert dw_grid(20, 10, 8, 33, meta) == (2, 8)  # never more programs than tiles


def test_autotune_keys_are_bucketed():
    from tritonsparse.kernels.condensed_dw import _condensed_dw_kernel

    assert set(_condensed_dw_kernel.keys) == {"n_bucket", "k_bucket", "b_bucket"}


@interpreter_only
def test_launcher_enters_the_tensors_device(monkeypatch):
    """The launch runs under the inputs' device context (torch.cuda.device(x.device) on
    CUDA; a no-op on CPU)."""
    import contextlib

    import tritonsparse.kernels.condensed_dw as mod

    seen = []
    monkeypatch.setattr(mod, "launch_device", lambda t: seen.append(t) or contextlib.nullcontext())
    xT, gT = torch.randn(11, 5), torch.randn(3, 5)
    mod.condensed_dw(xT, gT, random_indices(3, 2, 11), torch.empty(3, 2))
    assert len(seen) == 1 and seen[0] is xT

"""Implicit-im2col condensed convolution: the forward and dValues kernels and the
autograd Function against F.conv2d with the dense weight (fp64 reference), in Triton's
interpreter (CPU) and on CUDA (``gpu`` marker); CondensedConv2d's implicit path against
its unfold fallback, capture hook included."""
import pytest
import torch
import torch.nn.functional as F

from tritonsparse import _triton
from tritonsparse.conv_ops import condensed_conv2d, output_size
from tritonsparse.nn import CondensedConv2d

from helpers import assert_close, random_indices

interpreter_only = pytest.mark.skipif(not (_triton.HAS_TRITON and _triton.interpreting()),
                                      reason="Triton on CPU tensors needs TRITON_INTERPRET=1")

# (kernel_size, stride, padding, dilation) on a batch 2, C_in 3, 5 x 7 input
GEOMETRIES = {
    "k3_s1_p1": ((3, 3), (1, 1), (1, 1), (1, 1)),
    "k3_s2_p0": ((3, 3), (2, 2), (0, 0), (1, 1)),
    "k3_s1_p1_d2": ((3, 3), (1, 1), (1, 1), (2, 2)),
    "k3_s2_p1_d2": ((3, 3), (2, 2), (1, 1), (2, 2)),
    "k1_s1_p0": ((1, 1), (1, 1), (0, 0), (1, 1)),
    "k1_s2_p1": ((1, 1), (2, 2), (1, 1), (1, 1)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _problem(geometry, dtype, device="cpu", batch=2, c_in=3, hw=(5, 7), n=5, k=None, index_dtype=torch.int32):
    kernel_size = geometry[0]
    taps = c_in * kernel_size[0] * kernel_size[1]
    k = min(k or 7, taps)
    x = torch.randn(batch, c_in, *hw, device=device).to(dtype)
    values = torch.randn(n, k, device=device).to(dtype)
    indices = random_indices(n, k, taps, index_dtype).to(device)
    bias = torch.randn(n, device=device).to(dtype)
    return x, values, indices, bias


def _dense(values, indices, c_in, kernel_size):
    n = values.shape[0]
    w = torch.zeros(n, c_in * kernel_size[0] * kernel_size[1], dtype=torch.float64, device=values.device)
    return w.scatter_add(1, indices.long(), values.double()).view(n, c_in, *kernel_size)


def _reference(x, values, indices, bias, geometry, grad_y=None):
    """fp64 F.conv2d output and, with grad_y, the gradients of x, the condensed values and bias."""
    kernel_size, stride, padding, dilation = geometry
    xd = x.detach().double().requires_grad_()
    wd = _dense(values.detach(), indices, x.shape[1], kernel_size).requires_grad_()
    bd = bias.detach().double().requires_grad_() if bias is not None else None
    y = F.conv2d(xd, wd, bd, stride, padding, dilation)
    if grad_y is None:
        return y.detach()
    y.backward(grad_y.double())
    gv = wd.grad.view(wd.shape[0], -1).gather(1, indices.long())
    return y.detach(), xd.grad, gv, (bd.grad if bd is not None else None)


def _nan(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _check_kernels(geometry, dtype, device, **kw):
    from tritonsparse.kernels.condensed_conv import condensed_conv_dw, condensed_conv_fwd

    x, values, indices, bias = _problem(geometry, dtype, device, **kw)
    out_hw = output_size(x.shape[2:], *geometry)
    y = _nan((x.shape[0], values.shape[0], *out_hw), dtype, device)
    condensed_conv_fwd(x, values, indices, bias, y, *geometry)
    grad_y = torch.randn(y.shape, device=device).to(dtype)
    y_ref, _, gv_ref, _ = _reference(x, values, indices, bias, geometry, grad_y)
    assert_close(y, y_ref, dtype, values.shape[1], "y")
    gv = _nan(values.shape, dtype, device)
    condensed_conv_dw(x, grad_y, indices, gv, *geometry)
    assert_close(gv, gv_ref, dtype, grad_y[:, 0].numel(), "dvalues")


def _check_autograd(geometry, dtype, device, **kw):
    x, values, indices, bias = _problem(geometry, dtype, device, **kw)
    x.requires_grad_(), values.requires_grad_(), bias.requires_grad_()
    y = condensed_conv2d(x, values, indices, bias, *geometry)
    grad_y = torch.randn(y.shape, device=device).to(dtype)
    y.backward(grad_y)
    y_ref, gx_ref, gv_ref, gb_ref = _reference(x, values, indices, bias, geometry, grad_y)
    assert y.dtype == dtype and y.is_contiguous()
    pixels = grad_y[:, 0].numel()
    assert_close(y, y_ref, dtype, values.shape[1], "y")
    assert_close(x.grad, gx_ref, dtype, values.shape[0], "dx")
    assert_close(values.grad, gv_ref, dtype, pixels, "dvalues")
    assert_close(bias.grad, gb_ref, dtype, pixels, "dbias")


# -- interpreter ------------------------------------------------------------------------
@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_kernels_match_conv2d(geometry, dtype):
    _check_kernels(geometry, dtype, "cpu")


@interpreter_only
@pytest.mark.parametrize("geometry", [GEOMETRIES["k3_s1_p1"], GEOMETRIES["k3_s2_p1_d2"]], ids=["k3_s1_p1", "k3_s2_p1_d2"])
def test_autograd_matches_conv2d(geometry, monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    _check_autograd(geometry, torch.float32, "cpu")


@interpreter_only
def test_autograd_bf16_int16_indices(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    _check_autograd(GEOMETRIES["k3_s2_p0"], torch.bfloat16, "cpu", index_dtype=torch.int16)


@interpreter_only
def test_dvalues_split_over_pixels():
    """dValues split into pixel ranges summed on the host equals the unsplit sum."""
    from tritonsparse.kernels.condensed_conv import condensed_conv_dw

    geometry = GEOMETRIES["k3_s1_p1"]
    x, values, indices, _ = _problem(geometry, torch.float32, c_in=1, hw=(13, 11), n=3, k=4)  # 286 pixels
    grad_y = torch.randn(2, 3, 13, 11)
    _, _, gv_ref, _ = _reference(x, values, indices, None, geometry, grad_y)
    for splits in (1, 3):
        gv = _nan(values.shape, torch.float32, "cpu")
        condensed_conv_dw(x, grad_y, indices, gv, *geometry, splits=splits)
        assert_close(gv, gv_ref, torch.float32, 286, f"dvalues splits={splits}")


@interpreter_only
def test_channels_last_input_and_repeated_taps(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    geometry = GEOMETRIES["k3_s1_p1"]
    x, values, _, bias = _problem(geometry, torch.float32)
    x = x.to(memory_format=torch.channels_last)
    indices = torch.randint(0, 27, values.shape, dtype=torch.int32)  # repeats add up
    y = condensed_conv2d(x, values, indices, bias, *geometry)
    assert_close(y, _reference(x, values, indices, bias, geometry), torch.float32, values.shape[1], "y")


def _layer_pair(active_all):
    torch.manual_seed(1)
    layer = CondensedConv2d(3, 6, 3, fan_in=5, stride=2, padding=1, dilation=1)
    if not active_all:
        cw = layer.condensed_weight()
        keep = torch.tensor([0, 2, 3, 5])
        layer.set_pattern(cw.values[keep], cw.indices[keep], keep)
    twin = CondensedConv2d(3, 6, 3, fan_in=5, stride=2, padding=1)
    twin.load_state_dict(layer.state_dict())
    return layer, twin


@interpreter_only
@pytest.mark.parametrize("active_all", [True, False], ids=["all_active", "ablated_rows"])
def test_layer_implicit_matches_unfold_fallback(active_all, monkeypatch):
    """The layer on the Triton backend (implicit) against itself on the torch backend
    (unfold): output, gradients, and what the DST capture hook records."""
    layer, twin = _layer_pair(active_all)
    x = torch.randn(2, 3, 5, 7)
    results = []
    for backend, m in (("triton", layer), ("torch", twin)):
        monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)
        seen = []
        m.capture_hook = lambda a, b, seen=seen: (seen.append(a.detach()), b.register_hook(lambda g: seen.append(g)))
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).view(y.shape).sin())
        results.append((y.detach(), xi.grad, m.values.grad, m.bias.grad, seen))
    (y1, gx1, gv1, gb1, cap1), (y2, gx2, gv2, gb2, cap2) = results
    for name, a, b in (("y", y1, y2), ("dx", gx1, gx2), ("dvalues", gv1, gv2), ("dbias", gb1, gb2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert len(cap1) == len(cap2) == 2 and cap1[0].shape == (2 * 3 * 4, 27) and cap1[1].shape == (2 * 3 * 4, 6)
    torch.testing.assert_close(cap1[0], cap2[0])
    torch.testing.assert_close(cap1[1], cap2[1])
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    layer.capture_hook = None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y1)


def test_bad_input_names_argument():
    layer = CondensedConv2d(3, 4, 3, fan_in=2)
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        condensed_conv2d(torch.randn(1, 3, 5, 5, dtype=torch.float64), layer.weight_values, layer.weight_indices, None,
                         (3, 3))


# -- GPU --------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_gpu_kernels_match_conv2d(geometry, dtype):
    _check_kernels(geometry, dtype, "cuda")
    _check_kernels(geometry, dtype, "cuda", batch=4, c_in=16, hw=(17, 19), n=24, k=40)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_gpu_autograd_matches_conv2d(dtype):
    _check_autograd(GEOMETRIES["k3_s1_p1"], dtype, "cuda", batch=8, c_in=32, hw=(16, 16), n=64, k=29)


# -- regressions: bias stride, masked slots, out-of-range indices, grid, device -----------
@interpreter_only
@pytest.mark.parametrize("kind", ["strided", "expanded"])
def test_forward_reads_bias_with_its_stride(kind):
    """A non-contiguous bias (b[::2], an expanded scalar) is read element by element."""
    from tritonsparse.kernels.condensed_conv import condensed_conv_fwd

    geometry = GEOMETRIES["k3_s1_p1"]
    x, values, indices, _ = _problem(geometry, torch.float32)
    bias = torch.randn(2 * values.shape[0])[::2] if kind == "strided" else torch.tensor([0.5]).expand(values.shape[0])
    y = _nan((2, values.shape[0], 5, 7), torch.float32, "cpu")
    condensed_conv_fwd(x, values, indices, bias, y, *geometry)
    assert_close(y, _reference(x, values, indices, bias.contiguous(), geometry), torch.float32, values.shape[1], "y")


@interpreter_only
def test_masked_tail_slots_read_nothing():
    """Tail slots of the fan-in (K not a multiple of BLOCK_K) and rows past n must not
    multiply a real element: an inf at tap 0 of channel 0 (what index 0 reads) that no
    row uses leaves the output finite."""
    from tritonsparse.kernels.condensed_conv import condensed_conv_fwd

    geometry = GEOMETRIES["k3_s2_p0"]
    x, values, _, bias = _problem(geometry, torch.float32, k=5, n=3)
    x[:, 0, 0, 0] = float("inf")
    indices = random_indices(3, 5, 26).add(1)  # every index but 0
    y = _nan((2, 3, 2, 3), torch.float32, "cpu")
    condensed_conv_fwd(x, values, indices, bias, y, *geometry)
    assert torch.isfinite(y).all()
    x[:, 0, 0, 0] = 0.0
    assert_close(y, _reference(x, values, indices, bias, geometry), torch.float32, 5, "y")


@interpreter_only
def test_out_of_range_indices_read_zeros():
    """An index outside [0, C·kh·kw) contributes nothing (forward) and gets a zero
    gradient (dValues): x is never read outside its bounds."""
    from tritonsparse.kernels.condensed_conv import condensed_conv_dw, condensed_conv_fwd

    geometry = GEOMETRIES["k3_s1_p1"]
    x, values, indices, bias = _problem(geometry, torch.float32)
    bad = indices.clone()
    bad[0, 0], bad[1, 2], bad[3, 1] = 27, 1 << 20, -5
    keep = (bad >= 0) & (bad < 27)
    y = _nan((2, values.shape[0], 5, 7), torch.float32, "cpu")
    condensed_conv_fwd(x, values, bad, bias, y, *geometry)
    y_ref = _reference(x, values * keep, indices, bias, geometry)
    assert_close(y, y_ref, torch.float32, values.shape[1], "y")
    gv = _nan(values.shape, torch.float32, "cpu")
    condensed_conv_dw(x, torch.randn(y.shape), bad, gv, *geometry)
    assert (gv[~keep] == 0).all() and not gv.isnan().any()


def test_forward_grid_is_one_axis():
    """The pixel blocks go on axis 0 (2**31 - 1 programs), not on axis 1 (65,535): CIFAR
    at batch 1024 has N·OH·OW = 1,048,576 pixels, past the old limit of 1,048,560."""
    from tritonsparse.kernels.condensed_conv import conv_fwd_grid

    meta = {"BLOCK_N": 2, "BLOCK_P": 64}
    for n, P in [(64, 1024 * 32 * 32), (512, 4096 * 56 * 56)]:
        grid = conv_fwd_grid(n, P, meta)
        assert len(grid) == 1 and grid[0] == -(-n // 2) * -(-P // 64) and grid[0] < 2**31
    from tritonsparse.kernels.condensed_conv import _FWD_TILES

    assert all(bp >= 32 * w for _, _, bp, w in _FWD_TILES)  # >= 1 pixel per thread per (channel, slot)


@interpreter_only
def test_launchers_enter_the_tensors_device(monkeypatch):
    """Both launchers make the inputs' device current (a no-op context on CPU; on CUDA it
    is torch.cuda.device(x.device))."""
    import contextlib

    import tritonsparse.kernels.condensed_conv as cc

    seen = []

    def record(t):
        seen.append(t)
        return contextlib.nullcontext()

    monkeypatch.setattr(cc, "launch_device", record)
    geometry = GEOMETRIES["k1_s1_p0"]
    x, values, indices, bias = _problem(geometry, torch.float32)
    y = torch.empty(2, values.shape[0], 5, 7)
    cc.condensed_conv_fwd(x, values, indices, bias, y, *geometry)
    cc.condensed_conv_dw(x, y, indices, torch.empty(values.shape), *geometry)
    assert len(seen) == 2 and all(t is x for t in seen)

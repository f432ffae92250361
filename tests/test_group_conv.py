"""CondensedConv2d with group-shared patterns (G output channels share their K taps): the
layer and the functional ``condensed_conv2d`` against fp64 ``F.conv2d`` of the dense
weight (forward, dX, dValues, dBias) on small odd shapes, on the Triton backend (the
group gather-MMA kernels, in Triton's interpreter) and the torch backend; ``from_conv``
recognising the structure; ablated groups; DST over a grouped conv; bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tritonsparse import _triton
from tritonsparse.conv_ops import condensed_conv2d
from tritonsparse.group_ops import expand_group_indices
from tritonsparse.nn import CondensedConv2d

from helpers import assert_close, random_indices

BACKENDS = ["triton", "torch"]

# (in_channels, out_channels, G, kernel_size, stride, padding, dilation, K, batch, (H, W))
CASES = [
    pytest.param(3, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 7, 2, (5, 7), id="c3-o8-G4-k3-p1-K7"),
    pytest.param(2, 6, 3, (3, 2), (2, 1), (1, 0), (1, 2), 5, 1, (6, 7), id="c2-o6-G3-k3x2-s2x1-d1x2-K5"),
    pytest.param(5, 4, 4, (1, 1), (2, 2), (1, 1), (1, 1), 3, 3, (3, 4), id="c5-o4-G=n-k1-s2-K3"),
    pytest.param(2, 4, 2, (3, 3), (1, 1), (2, 2), (2, 2), 18, 2, (4, 3), id="c2-o4-G2-d2-K=all"),
]


def _use_backend(monkeypatch, backend):
    if backend == "triton" and not _triton.interpreting():
        pytest.skip("kernels on CPU need TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)


def _reference(x, weight, bias, stride, padding, dilation, grad_y):
    """fp64 F.conv2d of the dense weight: y, dX, dW (dense), dBias."""
    xd = x.detach().double().requires_grad_()
    wd = weight.detach().double().requires_grad_()
    bd = bias.detach().double().requires_grad_()
    y = F.conv2d(xd, wd, bd, stride, padding, dilation)
    y.backward(grad_y.double())
    return y.detach(), xd.grad, wd.grad, bd.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("c_in,c_out,g,ks,stride,padding,dilation,k,batch,hw", CASES)
def test_layer_matches_conv2d(monkeypatch, backend, dtype, c_in, c_out, g, ks, stride, padding, dilation, k,
                              batch, hw):
    _use_backend(monkeypatch, backend)
    torch.manual_seed(0)
    layer = CondensedConv2d(c_in, c_out, ks, k, stride=stride, padding=padding, dilation=dilation,
                            dtype=dtype, group_size=g)
    assert layer.group_size == g and layer.weight_indices.shape == (c_out // g, k)
    x = torch.randn(batch, c_in, *hw).to(dtype).requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    weight = layer.to_dense_conv_weight()
    ry, rgx, rgw, rgb = _reference(x, weight, layer.bias, stride, padding, dilation, grad)
    assert y.dtype == dtype and y.shape == ry.shape
    assert_close(y, ry, dtype, k, "y")
    assert_close(x.grad, rgx, dtype, k * g, "dX")
    full = expand_group_indices(layer.weight_indices, g).long()
    rgv = rgw.view(c_out, -1).gather(1, full)
    n_pix = batch * y.shape[2] * y.shape[3]
    assert_close(layer._rows_view(layer.values.grad, c_out), rgv, dtype, n_pix, "dValues")  # rows padded to 16
    assert_close(layer.bias.grad, rgb, dtype, n_pix, "dBias")


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_group_indices(monkeypatch, backend):
    """condensed_conv2d with (n/G, K) indices is the conv of the expanded per-row pattern."""
    _use_backend(monkeypatch, backend)
    torch.manual_seed(1)
    geometry = ((3, 3), (1, 2), (1, 1), (1, 1))
    n, g, k, c_in = 6, 2, 5, 3
    x = torch.randn(2, c_in, 5, 6)
    values = torch.randn(n, k, requires_grad=True)
    idx = random_indices(n // g, k, c_in * 9)
    bias = torch.randn(n)
    y = condensed_conv2d(x, values, idx, bias, *geometry)
    w = torch.zeros(n, c_in * 9, dtype=torch.float64).scatter(1, expand_group_indices(idx, g).long(),
                                                               values.detach().double())
    ref = F.conv2d(x.double(), w.view(n, c_in, 3, 3), bias.double(), *geometry[1:])
    assert_close(y, ref, torch.float32, k, "y")
    y.sum().backward()
    assert values.grad.shape == values.shape and values.grad.abs().sum() > 0


def test_triton_forward_is_im2col_free(monkeypatch):
    """On the Triton backend the grouped forward gathers taps straight from x (the implicit
    group kernel): nothing is unfolded, and an index outside C·kh·kw never reaches it."""
    _use_backend(monkeypatch, "triton")
    torch.manual_seed(5)
    layer = CondensedConv2d(3, 8, (3, 2), 6, stride=(2, 1), padding=(1, 0), dilation=(1, 2), group_size=4)
    x = torch.randn(2, 3, 6, 7)
    ref = F.conv2d(x.double(), layer.to_dense_conv_weight().double(), layer.bias.detach().double(),
                   (2, 1), (1, 0), (1, 2))

    def no_unfold(*args, **kwargs):
        raise AssertionError("the forward unfolded its input")

    monkeypatch.setattr(F, "unfold", no_unfold)
    with torch.no_grad():
        y = layer(x)
    assert_close(y, ref, torch.float32, 6, "y")


def test_from_conv_recognises_groups():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        cols = torch.stack([torch.randperm(27)[:6] for _ in range(2)])  # 2 groups of 4 channels
        mask = torch.zeros(8, 27, dtype=torch.bool).scatter(1, cols.repeat_interleave(4, 0), True)
        conv.weight.mul_(mask.view_as(conv.weight))
    auto = CondensedConv2d.from_conv(conv, group_size="auto")
    assert auto.group_size == 4 and auto.fan_in == 6
    explicit = CondensedConv2d.from_conv(conv, group_size=2)
    assert explicit.group_size == 2
    per_row = CondensedConv2d.from_conv(conv)
    assert per_row.group_size == 1
    x = torch.randn(2, 3, 5, 4)
    for layer in (auto, explicit, per_row):
        torch.testing.assert_close(layer.to_dense_conv_weight(), conv.weight.detach())
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="group_size=3"):
        CondensedConv2d.from_conv(conv, group_size=3)  # 3 does not divide the 8 channels
    with pytest.raises(ValueError, match="group_size=8"):
        CondensedConv2d.from_conv(conv, group_size=8)  # the two groups of 4 do not share taps


def test_ablated_groups_output_bias():
    torch.manual_seed(3)
    layer = CondensedConv2d(2, 6, 3, 4, padding=1, group_size=2)
    values = torch.randn(4, 4)
    idx = random_indices(2, 4, 18)
    layer.set_pattern(values, idx, torch.tensor([0, 1, 4, 5]))  # group 1 (channels 2, 3) ablated
    x = torch.randn(1, 2, 4, 5)
    y = layer(x)
    torch.testing.assert_close(y[:, 2:4], layer.bias[2:4].view(1, 2, 1, 1).expand(1, 2, 4, 5).detach())
    ref = F.conv2d(x, layer.to_dense_conv_weight(), layer.bias.detach(), padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="group"):
        layer.set_pattern(torch.randn(3, 4), random_indices(3, 4, 18), torch.tensor([0, 1, 4]))  # not whole groups


@pytest.mark.parametrize("method", ["srigl", "set"])
def test_dst_over_grouped_conv(monkeypatch, method):
    """DST updates a grouped conv over group columns: the layer keeps its group structure
    and budget, and still computes the conv of its dense weight."""
    from tritonsparse.dst import DynamicSparsity

    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    torch.manual_seed(4)
    conv = CondensedConv2d(3, 8, 3, 9, padding=1, group_size=4)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    budget = conv.nnz_budget
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dst = DynamicSparsity(model, opt, method=method, total_steps=12, delta_t=3, gamma_sal=0.0)
    x, t = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6,))
    before = conv.weight_indices.clone()
    for _ in range(6):
        F.cross_entropy(model(x), t).backward()
        opt.step()
        opt.zero_grad()
        dst.step()
    update = dst.last_update["0"]  # the conv's last update ran over group columns and moved some
    assert update["group_size"] == 4 and update["grown"] > 0 and not torch.equal(before, conv.weight_indices)
    assert conv.group_size == 4 and conv.weight_indices.shape == (conv.n_active // 4, conv.fan_in)
    assert conv.n_active * conv.fan_in <= budget
    ref = F.conv2d(x, conv.to_dense_conv_weight(), conv.bias.detach(), padding=1)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="group_size=3 does not divide out_channels=8"):
        CondensedConv2d(2, 8, 3, 4, group_size=3)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        CondensedConv2d(2, 8, 3, 4, group_size=0)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        CondensedConv2d(2, 8, 3, 4, group_size=True)
    layer = CondensedConv2d(2, 8, 3, 4, group_size=4)
    with pytest.raises(ValueError, match=r"x must be \(N, 2, H, W\)"):
        layer(torch.randn(1, 3, 5, 5))
    x = torch.randn(1, 2, 5, 5)
    values = torch.randn(6, 4)
    with pytest.raises(ValueError, match="not a multiple"):  # 6 rows over 4 index rows
        condensed_conv2d(x, values, random_indices(4, 4, 18), None, (3, 3))
    with pytest.raises(ValueError, match="indices"):  # a tap outside C·kh·kw = 18
        condensed_conv2d(x, values, torch.full((3, 4), 18, dtype=torch.int32), None, (3, 3))

"""CondensedLinear: a drop-in for nn.Linear, in inference and training."""
import pytest
import torch
from torch import nn

from tritonsparse.nn import CondensedLinear


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _sparse_linear(in_f=20, out_f=7, k=4, ablated=()):
    lin = nn.Linear(in_f, out_f)
    mask = torch.zeros(out_f, in_f, dtype=torch.bool)
    for r in range(out_f):
        if r not in ablated:
            mask[r, torch.randperm(in_f)[:k]] = True
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask


@pytest.mark.parametrize("ablated", [(), (1, 4)], ids=["all_active", "ablated"])
def test_from_linear_matches_forward_and_gradients(ablated):
    lin, mask = _sparse_linear(ablated=ablated)
    layer = CondensedLinear.from_linear(lin)
    assert layer.n_active == 7 - len(ablated) and layer.fan_in == 4
    x = torch.randn(3, 5, 20, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = layer(x), lin(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g), y_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, lin.bias.grad, rtol=1e-5, atol=1e-5)
    dense_grad = lin.weight.grad[layer.active_rows].gather(1, layer.weight_indices.long())
    torch.testing.assert_close(layer.values.grad[: layer.n_active * 4].view(-1, 4), dense_grad, rtol=1e-5, atol=1e-5)
    assert layer.values.grad[layer.n_active * 4 :].abs().sum() == 0
    torch.testing.assert_close(layer.to_dense_weight(), lin.weight.detach())


def test_set_pattern_keeps_the_parameter_object():
    layer = CondensedLinear(10, 6, fan_in=3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    param = layer.values
    # ablate two rows and widen the others to K=4 (4*4 = 16 <= capacity 18)
    rows = torch.tensor([0, 2, 3, 5])
    idx = torch.stack([torch.randperm(10)[:4] for _ in range(4)])
    layer.set_pattern(torch.randn(4, 4), idx, rows)
    assert layer.values is param and opt.param_groups[0]["params"][0] is param
    assert layer.fan_in == 4 and layer.n_active == 4
    y = layer(torch.randn(2, 10))
    assert torch.equal(y[:, 1], layer.bias.detach().expand(2, -1)[:, 1])
    with pytest.raises(ValueError, match="capacity"):
        layer.set_pattern(torch.randn(6, 4), torch.stack([torch.randperm(10)[:4] for _ in range(6)]), None)


def test_state_dict_round_trip():
    a = CondensedLinear(12, 5, fan_in=3)
    a.set_pattern(torch.randn(3, 5)[:, :3], torch.stack([torch.randperm(12)[:3] for _ in range(3)]), torch.tensor([0, 1, 4]))
    b = CondensedLinear(12, 5, fan_in=3)
    b.load_state_dict(a.state_dict())
    assert b.n_active == 3 and b.fan_in == 3 and b.active_rows.tolist() == [0, 1, 4]
    x = torch.randn(4, 12)
    torch.testing.assert_close(a(x), b(x))


def test_dtype_move_and_repr():
    layer = CondensedLinear(16, 4, fan_in=2).to(torch.bfloat16)
    assert layer.values.dtype == torch.bfloat16
    assert layer(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert "fan_in=2" in repr(layer)


def test_trains_like_a_linear_layer():
    torch.manual_seed(0)
    teacher, _ = _sparse_linear(12, 3, 4)
    student = CondensedLinear(12, 3, fan_in=4)
    student.set_pattern(torch.zeros(3, 4), CondensedLinear.from_linear(teacher).weight_indices, None)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    x = torch.randn(256, 12)
    target = teacher(x).detach()
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.mse_loss(student(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_meta_init_then_to_empty_and_load():
    """Built on the meta device (no values), materialised with to_empty (garbage buffers),
    then loaded: the layer keeps its sizes meanwhile and never reads the garbage."""
    layer = CondensedLinear(10, 4, fan_in=3, device="meta")
    assert layer(torch.randn(2, 10, device="meta")).shape == (2, 4)
    layer.to_empty(device="cpu")
    assert (layer.fan_in, layer.n_active) == (3, 4)
    source = CondensedLinear(10, 4, fan_in=3)
    layer.load_state_dict(source.state_dict())
    x = torch.randn(2, 10)
    torch.testing.assert_close(layer(x), source(x))


def test_state_dict_with_an_impossible_fan_in_is_rejected():
    layer = CondensedLinear(10, 4, fan_in=3)
    state = layer.state_dict()
    state["fan_in_buffer"].fill_(99)
    with pytest.raises(ValueError, match="fan_in_buffer"):
        layer.load_state_dict(state)

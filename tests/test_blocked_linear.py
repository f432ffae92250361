"""``BlockedCondensedLinear`` (column-blocked CSR, CPU inference) and
``export(model, cpu_blocked=True)``: the same outputs as the condensed layer (fp64
reference), on odd shapes, ablated rows, group-shared patterns, every batch size, bf16;
state_dict round trip; errors naming the argument."""
import pytest
import torch
from torch import nn

import tritonsparse
from tritonsparse import cpu
from tritonsparse.nn import BlockedCondensedLinear, CondensedLinear


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _dense(layer):
    return layer.to_dense_weight().double(), (layer.bias.double() if layer.bias is not None else None)


@pytest.mark.parametrize("in_f,out_f,k,block", [(1000, 37, 13, 256), (300, 20, 300, 64), (50, 7, 1, 4096),
                                                (257, 9, 30, 1)])
@pytest.mark.parametrize("batch", [1, 3, 0])
def test_matches_the_condensed_layer(in_f, out_f, k, block, batch):
    torch.manual_seed(0)
    layer = CondensedLinear(in_f, out_f, k)
    blocked = BlockedCondensedLinear.from_condensed(layer, block_columns=block)
    assert blocked.blocks == -(-in_f // block)
    assert blocked.col.numel() == out_f * k and int(blocked.edges[-1]) == in_f
    x = torch.randn(batch, in_f)
    w, b = _dense(layer)
    want = (x.double() @ w.t() + b).float()
    torch.testing.assert_close(blocked(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked(x), layer(x).detach(), rtol=1e-5, atol=1e-5)


def test_blocks_hold_each_nonzero_once_in_its_column_range():
    torch.manual_seed(1)
    idx = torch.stack([torch.randperm(100)[:9] for _ in range(6)]).int()
    crow, col, vals, edges = cpu.column_blocks(torch.randn(6, 9), idx, None, (6, 100), block_columns=30)
    assert edges.tolist() == [0, 25, 50, 75, 100]  # 4 equal blocks of at most 30 columns
    assert int(crow[:, -1].sum()) == 54 and (crow[:, 0] == 0).all()
    start = 0
    for c in range(4):
        nnz = int(crow[c, -1])
        assert ((col[start:start + nnz] >= 0) & (col[start:start + nnz] < int(edges[c + 1] - edges[c]))).all()
        start += nnz


def test_ablated_rows_output_the_bias_and_groups_expand():
    torch.manual_seed(2)
    layer = CondensedLinear(80, 32, 6, group_size=8)
    keep = torch.tensor([r for r in range(32) if r // 8 != 1])  # one group ablated
    layer.set_pattern(layer.weight_values.detach()[: keep.numel()], layer.weight_indices[: keep.numel() // 8], keep)
    blocked = BlockedCondensedLinear.from_condensed(layer, block_columns=32)
    x = torch.randn(4, 80)
    y = blocked(x)
    torch.testing.assert_close(y, layer(x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, 8:16], layer.bias.detach()[8:16].expand(4, 8))


def test_bf16_leading_dims_and_no_bias():
    torch.manual_seed(3)
    layer = CondensedLinear(64, 10, 5, bias=False).to(torch.bfloat16)
    blocked = BlockedCondensedLinear.from_condensed(layer, block_columns=16)
    x = torch.randn(2, 3, 64).bfloat16()
    y = blocked(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 10)
    torch.testing.assert_close(y, layer(x).detach(), rtol=2e-2, atol=2e-2)


def test_state_dict_round_trip():
    torch.manual_seed(4)
    a = BlockedCondensedLinear.from_condensed(CondensedLinear(90, 12, 7), block_columns=40)
    b = BlockedCondensedLinear.from_condensed(CondensedLinear(90, 12, 7), block_columns=40)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 90)
    torch.testing.assert_close(b(x), a(x))
    assert "blocks=3" in repr(a)


def test_export_cpu_blocked_keeps_outputs():
    torch.manual_seed(5)
    model = nn.Sequential(CondensedLinear(40, 24, 8), nn.ReLU(), CondensedLinear(24, 6, 5))
    out = tritonsparse.export(model, cpu_blocked=True)
    assert all(isinstance(out[i], BlockedCondensedLinear) for i in (0, 2))
    x = torch.randn(3, 40)
    torch.testing.assert_close(out(x), model.eval()(x).detach(), rtol=1e-5, atol=1e-5)
    single = tritonsparse.export(model[0], cpu_blocked=True)
    assert isinstance(single, BlockedCondensedLinear)
    with pytest.raises(TypeError, match="cpu_blocked"):
        tritonsparse.export(model, cpu_blocked="yes")


def test_errors_name_the_argument():
    layer = CondensedLinear(30, 5, 3)
    blocked = BlockedCondensedLinear.from_condensed(layer)
    with pytest.raises(ValueError, match="in_features=30"):
        blocked(torch.randn(2, 31))
    with pytest.raises(TypeError, match="floating-point"):
        blocked(torch.ones(2, 30, dtype=torch.int64))
    with pytest.raises(TypeError, match="CondensedLinear"):
        BlockedCondensedLinear.from_condensed(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="block_columns"):
        BlockedCondensedLinear.from_condensed(layer, block_columns=0)
    with pytest.raises(ValueError, match="indices"):
        cpu.column_blocks(torch.randn(2, 2), torch.tensor([[0, 30], [1, 2]]), None, (2, 30))
    with pytest.raises(ValueError, match="crow"):
        BlockedCondensedLinear(30, 5, blocked.crow[:, :-1], blocked.col, blocked.vals, blocked.edges)
    with pytest.raises(ValueError, match="edges"):
        BlockedCondensedLinear(30, 5, blocked.crow, blocked.col, blocked.vals, blocked.edges * 2)
    with pytest.raises(ValueError, match="col and vals"):
        BlockedCondensedLinear(30, 5, blocked.crow, blocked.col[:-1], blocked.vals[:-1], blocked.edges)

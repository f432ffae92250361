"""Sparse-IFT transforms and the FLOP counter."""
import pytest
import torch
from torch import nn

from tritonsparse.dst import MaskedLinear, sparsify
from tritonsparse.ift import (IFT_KINDS, SparseDoped, SparseFactorized, SparseParallel, count_flops, doped_rank,
                              factorized_width, iso_flop_report, parallel_branches, sparse_ift, wide_factor)
from tritonsparse.models import MLP, ResNet18
from tritonsparse.nn import CondensedConv2d, CondensedLinear


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _mlp():
    return MLP(64, 10, hidden=(256, 256, 256))


def _resnet():
    with torch.device("meta"):  # FLOPs need shapes only: no memory, no compute
        return ResNet18(10)


CASES = [
    # every layer of the MLP is sparse, so Sparse Wide's first/last layers (widened on one
    # side) are made iso too; ResNet-18 keeps its dense stem and head (as the papers)
    pytest.param(_mlp, (2, 1, 8, 8), (), "cpu", id="mlp"),
    pytest.param(_resnet, (1, 3, 32, 32), None, "meta", id="resnet18"),
]


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("kind", ["wide", "parallel", "factorized", "doped"])
@pytest.mark.parametrize("make,shape,dense_modules,device", CASES)
def test_iso_flops(make, shape, dense_modules, device, kind, sparsity):
    model = make()
    report = iso_flop_report(model, kind, sparsity, torch.randn(shape, device=device), dense_modules)
    assert report["ratio"] == pytest.approx(1.0, abs=0.02), report


def test_resnet18_dense_flops():
    flops = count_flops(_resnet(), torch.randn(1, 3, 32, 32, device="meta"))
    assert flops.total == pytest.approx(2 * 0.556e9, rel=0.01)  # 0.556 GMACs, the known CIFAR ResNet-18 cost


@pytest.mark.parametrize("s,n,k2", [(0.5, 2, 2), (0.75, 4, 4), (0.9, 10, 10), (0.8, 5, 5)])
def test_width_rules(s, n, k2):
    assert parallel_branches(s) == n
    assert wide_factor(s) ** 2 == pytest.approx(k2)


def test_factorized_and_doped_widths():
    assert factorized_width(576, 64, 0.9) == 576  # 3x3 conv 64->64: D_in = 9*64
    assert factorized_width(100, 30, 0.5) == 47  # ceil(3000 / 65) = ceil(46.15)
    assert doped_rank(576, 64, 0.9) == 51  # floor(0.9 * 36864 / 640) = floor(51.84)


@pytest.mark.parametrize("cls", [SparseParallel, SparseFactorized, SparseDoped], ids=lambda c: c.__name__)
@pytest.mark.parametrize("layer", [nn.Linear(24, 17), nn.Conv2d(5, 7, 3, stride=2, padding=1)], ids=["linear", "conv"])
def test_modules_keep_shapes(cls, layer):
    x = torch.randn(4, 24) if isinstance(layer, nn.Linear) else torch.randn(4, 5, 9, 9)
    module = cls(layer, 0.75)
    assert module(x).shape == layer(x).shape
    for part in module.sparse_parts:
        assert isinstance(module.get_submodule(part), type(layer))


def test_factorized_conv_geometry():
    m = SparseFactorized(nn.Conv2d(8, 16, 3, stride=2, padding=1), 0.9)
    assert m.u.kernel_size == (3, 3) and m.u.stride == (2, 2) and m.v.kernel_size == (1, 1)
    assert m.u.out_channels == m.inner == factorized_width(72, 16, 0.9)


def test_sparse_ift_marks_dense_and_sparse():
    ift = sparse_ift(_mlp(), "doped", 0.9)
    assert "stem" in ift.dense_layers and "head" in ift.dense_layers
    assert "hidden.0.low_rank_u" in ift.dense_layers and "hidden.0.sparse" in ift.sparse_layers
    names = dict(ift.model.named_modules())
    assert all(isinstance(names[n], (nn.Linear, nn.Conv2d)) for n in list(ift.sparse_layers) + ift.dense_layers)


def test_sparse_ift_wide_widens_but_keeps_io():
    ift = sparse_ift(_mlp(), "wide", 0.9)
    m = ift.model
    assert m.stem.in_features == 64 and m.head.out_features == 10
    assert m.hidden[0].in_features == int(256 * 10 ** 0.5)
    assert set(ift.sparse_layers) == {"hidden.0", "hidden.1"}


@pytest.mark.parametrize("method,sparse_type", [("srigl", (CondensedLinear, CondensedConv2d)), ("rigl", (MaskedLinear, nn.Conv2d))])
@pytest.mark.parametrize("kind", ["parallel", "factorized", "doped"])
def test_sparsify_after_ift(kind, method, sparse_type):
    model = ResNet18(10, width=4)
    ift = sparse_ift(model, kind, 0.75)
    sparsify(ift.model, 0.75, method, "uniform", dense_modules=tuple(ift.dense_layers))
    for name in ift.sparse_layers:
        assert isinstance(ift.model.get_submodule(name), sparse_type), name
    for name in ift.dense_layers:
        assert type(ift.model.get_submodule(name)) in (nn.Linear, nn.Conv2d), name
    x = torch.randn(2, 3, 16, 16)
    assert ift.model(x).shape == (2, 10)
    # the sparsified model costs what the transformed one was built to cost (uniform 75%)
    built = count_flops(sparse_ift(ResNet18(10, width=4), kind, 0.75).model, x, ift.densities()).total
    assert count_flops(ift.model, x).total == pytest.approx(built, rel=0.02)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        sparse_ift(_mlp(), "deep", 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        sparse_ift(_mlp(), "parallel", 1.0)
    with pytest.raises(TypeError, match="config"):
        sparse_ift(nn.Sequential(nn.Linear(3, 4)), "wide", 0.5)
    with pytest.raises(TypeError, match="layer"):
        SparseParallel(nn.ReLU(), 0.5)
    with pytest.raises(ValueError, match="example_input"):
        count_flops(_mlp(), torch.tensor(1.0))


def test_kinds_listed():
    assert IFT_KINDS == ("none", "wide", "parallel", "factorized", "doped")

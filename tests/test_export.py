"""export: compact inference models with ablated neurons physically removed."""
import pytest
import torch
from torch import nn

from tritonsparse import export
from tritonsparse.dst import MaskedLinear, sparsify
from tritonsparse.models import MLP, ResNet18
from tritonsparse.nn import CondensedConv2d, CondensedLinear


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


@torch.no_grad()
def _ablate(layer, keep):
    """Keep only the output rows ``keep`` of a sparse layer (what SRigL's ablation does)."""
    if isinstance(layer, CondensedLinear):
        pos = torch.searchsorted(layer.active_rows, keep)
        layer.set_pattern(layer.weight_values[pos], layer.weight_indices[pos], keep)
    else:
        mask = torch.zeros_like(layer.mask)
        mask[keep] = layer.mask[keep]
        layer.mask.copy_(mask)
        layer.weight.mul_(mask)
    if layer.bias is not None:
        layer.bias.uniform_(-1, 1)  # ablated neurons still output act(bias): export must fold it


@pytest.mark.parametrize("method", ["srigl", "static", "rigl"])
@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU()], ids=["relu", "gelu"])
def test_mlp_ablated_neurons_removed(method, act):
    model = MLP(64, 10, hidden=(48, 40, 40))
    model.act = act
    sparsify(model, 0.8, method, "uniform", dense_modules=("head",))
    _ablate(model.stem, torch.arange(0, 48, 3))
    _ablate(model.hidden[0], torch.arange(1, 40, 2))
    model.eval()
    x = torch.randn(16, 1, 8, 8)
    out = export(model)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    assert out.stem.out_features == out.hidden[0].in_features == 16
    assert out.hidden[0].out_features == out.hidden[1].in_features
    if method == "rigl":  # a random unstructured mask may leave more rows empty
        assert out.hidden[0].out_features <= 20
    else:
        assert out.hidden[0].out_features == 20
        assert isinstance(out.hidden[0], CondensedLinear) and out.hidden[0].n_active == 20
    assert isinstance(model.stem, (CondensedLinear, MaskedLinear)), "the original model is left alone"


def test_sequential_chain():
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    sparsify(model, 0.7, "srigl", "uniform", dense_modules=("5",))
    _ablate(model[1], torch.tensor([0, 4, 5, 29]))
    model.eval()
    x = torch.randn(8, 20)
    out = export(model)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    assert out[1].out_features == 4 and out[3].in_features == 4


def test_conv_model_compacted_without_removal():
    model = ResNet18(10, width=4)
    sparsify(model, 0.8, "srigl", "erk", dense_modules=("stem", "head"))
    conv = model.layer1[0].conv1
    _ablate(conv, torch.tensor([0, 2]))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    out = export(model)
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-4)
    assert isinstance(out.layer1[0].conv1, CondensedConv2d) and out.layer1[0].conv1.n_active == 2


def test_trained_srigl_model(tmp_path):
    from tritonsparse.train import TrainConfig, train

    torch.set_num_threads(1)
    res = train(TrainConfig(dataset="synthetic", hidden=(64, 64), epochs=2, batch_size=32, delta_t=2, sparsity=0.9,
                            gamma_sal=0.9, device="cpu", out=str(tmp_path), plots=False, progress=False))
    model = res.model.eval()
    x = torch.randn(32, 1, 8, 8)
    out = export(model)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    active = res.final["layers"]["hidden.0"]["active_neurons"]
    assert out.hidden[0].out_features == active


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        export("not a model")

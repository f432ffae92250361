"""Models: shapes, dense defaults, width multiplier, validation."""
import pytest
import torch
from torch import nn

from tritonsparse.models import MLP, ResNet18, ViT, build_model


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("resnet18", (3, 32, 32)), ("resnet18", (1, 8, 8)),
                                        ("vit", (3, 32, 32)), ("vit", (1, 8, 8))])
def test_forward_shapes(name, shape):
    model = build_model(name, shape, 7) if name != "vit" else build_model(name, shape, 7, dim=24, depth=2, heads=2)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    out.sum().backward()
    for prefix in model.default_dense_modules:
        assert isinstance(model.get_submodule(prefix), (nn.Linear, nn.Conv2d))


def test_resnet18_structure():
    m = ResNet18(10)
    assert m.stem.kernel_size == (3, 3) and m.stem.stride == (1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels,
            m.layer4[0].conv1.out_channels] == [64, 128, 256, 512]
    assert 11.0e6 < sum(p.numel() for p in m.parameters()) < 11.3e6


def test_vit_sparse_projections_are_linear():
    m = ViT(dim=24, depth=2, heads=2)
    names = {n for n, x in m.named_modules() if isinstance(x, nn.Linear)}
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1", "blocks.0.fc2", "head"} <= names


def test_width_mult():
    assert MLP(10, 3, hidden=(100,), width_mult=1.5).stem.out_features == 150
    assert ResNet18(width=8, width_mult=2.0).stem.out_channels == 16
    assert ViT(dim=24, heads=4, depth=1, width_mult=1.3).head.in_features == 28  # 31 rounded down to 4k


def test_validation():
    with pytest.raises(ValueError, match="model"):
        build_model("lenet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="image_size"):
        ViT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("resnet18", (64,), 10)
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, 2, hidden=())

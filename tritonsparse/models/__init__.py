"""Models for the sparse training experiments: MLP, CIFAR ResNet-18, small ViT.

Every model carries ``config`` (its constructor arguments, used by Sparse Wide to
rebuild it wider through ``width_mult``) and ``default_dense_modules`` (stem and head,
kept dense as in the SRigL and Sparse-IFT papers).
"""
from .mlp import MLP
from .resnet import ResNet18
from .vit import ViT

MODELS = {"mlp": MLP, "resnet18": ResNet18, "vit": ViT}


def build_model(name: str, input_shape, num_classes: int, **kwargs):
    """Build model ``name`` ("mlp", "resnet18" or "vit") for inputs of ``input_shape``
    (one example, e.g. (1, 8, 8) or (3, 32, 32)) and ``num_classes`` outputs."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if name == "mlp":
        n = 1
        for s in input_shape:
            n *= s
        return MLP(n, num_classes, **kwargs)
    if len(input_shape) != 3:
        raise ValueError(f"model={name!r} needs image inputs (C, H, W); got input_shape={input_shape}")
    c, h, w = input_shape
    if name == "resnet18":
        return ResNet18(num_classes, in_channels=c, **kwargs)
    if h != w:
        raise ValueError(f"model='vit' needs square images, got input_shape={input_shape}")
    kwargs.setdefault("patch_size", 4 if h % 4 == 0 else 1)
    return ViT(num_classes, in_channels=c, image_size=h, **kwargs)


__all__ = ["MLP", "MODELS", "ResNet18", "ViT", "build_model"]

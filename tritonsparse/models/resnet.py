"""CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages of widths 64-128-256-512."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from .mlp import scaled


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (works for any size >= 8): ``stem`` 3x3 conv + BN +
    ReLU, four stages of two :class:`BasicBlock` (strides 1, 2, 2, 2), global average
    pool, ``head`` linear.

    Args:
        num_classes: outputs. in_channels: image channels.
        width: first-stage width (64); stages are width x (1, 2, 4, 8).
        width_mult: multiplies ``width`` (Sparse Wide), truncated to an integer.
    ``default_dense_modules`` = ("stem", "head").
    """

    default_dense_modules = ("stem", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64, width_mult: float = 1.0):
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise ValueError(f"num_classes, in_channels and width must be >= 1, got {num_classes}, {in_channels}, {width}")
        self.config = dict(num_classes=num_classes, in_channels=in_channels, width=width, width_mult=width_mult)
        w = scaled(width, width_mult)
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        stages, c_in = [], w
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = w * mult
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

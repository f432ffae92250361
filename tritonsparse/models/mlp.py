"""A multi-layer perceptron: ``stem`` (first layer), ``hidden`` layers, ``head``."""
from __future__ import annotations

from torch import nn


def scaled(width: int, width_mult: float) -> int:
    """``width`` times ``width_mult``, truncated to an integer (as the Sparse-IFT authors do)."""
    return max(1, int(width * width_mult + 1e-9))


class MLP(nn.Module):
    """``head(act(hidden[-1](... act(stem(flatten(x))))))``.

    Args:
        in_features: size of the flattened input.
        num_classes: outputs.
        hidden: widths of the hidden layers (the first is the stem's output).
        width_mult: multiplies every hidden width (Sparse Wide).
    ``default_dense_modules`` = ("stem", "head"): kept dense by default.
    """

    default_dense_modules = ("stem", "head")

    def __init__(self, in_features: int, num_classes: int, hidden=(256, 256), width_mult: float = 1.0):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if in_features < 1 or num_classes < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"in_features, num_classes and every hidden width must be >= 1, with at least one "
                             f"hidden layer; got in_features={in_features}, num_classes={num_classes}, hidden={hidden}")
        self.config = dict(in_features=in_features, num_classes=num_classes, hidden=hidden, width_mult=width_mult)
        widths = [scaled(h, width_mult) for h in hidden]
        self.stem = nn.Linear(in_features, widths[0])
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], num_classes)
        self.act = nn.ReLU()
        for m in (self.stem, *self.hidden):  # He init: keeps the signal through deep (and sparse) stacks
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def chain(self):
        """The layers in order, for export: ``[(name, activation after it or None), ...]``."""
        names = ["stem"] + [f"hidden.{i}" for i in range(len(self.hidden))]
        return [(n, self.act) for n in names] + [("head", None)]

    def forward(self, x):
        x = self.act(self.stem(x.flatten(1)))
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.head(x)

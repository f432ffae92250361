"""Layers built on the condensed kernels."""
from .condensed_linear import CondensedLinear
from .condensed_conv import CondensedConv2d

__all__ = ["CondensedConv2d", "CondensedLinear"]

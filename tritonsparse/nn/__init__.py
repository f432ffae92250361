"""Layers built on the condensed kernels."""
from .condensed_linear import CondensedLinear
from .condensed_conv import CondensedConv2d
from .blocked_linear import BlockedCondensedLinear

__all__ = ["BlockedCondensedLinear", "CondensedConv2d", "CondensedLinear"]

"""Layers built on the condensed kernels."""
from .condensed_linear import CondensedLinear

__all__ = ["CondensedLinear"]

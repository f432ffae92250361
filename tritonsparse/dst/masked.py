"""Masked dense layers: the unstructured baseline RigL trains on (dense weight x mask)."""
from __future__ import annotations

import torch
from torch import nn


class _Masked:
    """Shared by the masked layers: a bool ``mask`` buffer shaped like ``weight``; the
    forward uses ``weight * mask``. ``capture_hook(w_eff)`` (set by
    :mod:`tritonsparse.dst` on the steps it needs the dense gradient) gets the masked
    weight tensor of each forward under grad."""

    capture_hook = None

    def _init_mask(self, mask):
        if mask is None:
            mask = torch.ones_like(self.weight, dtype=torch.bool)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)} but weight has shape {tuple(self.weight.shape)}")
        self.register_buffer("mask", mask.to(device=self.weight.device, dtype=torch.bool).clone())
        with torch.no_grad():
            self.weight.mul_(self.mask)

    @torch.no_grad()
    def _copy_from(self, dense):
        self.weight.copy_(dense.weight * self.mask)
        if dense.bias is not None:
            self.bias.copy_(dense.bias)
        self.train(dense.training)
        return self

    def masked_weight(self):
        w = self.weight * self.mask
        if self.capture_hook is not None and torch.is_grad_enabled():
            self.capture_hook(w)
        return w

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())


class MaskedLinear(_Masked, nn.Linear):
    """``nn.Linear`` with a fixed-shape bool ``mask``: ``y = x (W ⊙ M)ᵀ + b``."""

    def __init__(self, in_features, out_features, bias=True, mask=None, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_mask(mask)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor):
        """A masked copy of ``linear`` (weights outside ``mask`` are zeroed)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, mask=mask,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        return layer._copy_from(linear)

    def forward(self, x):
        return nn.functional.linear(x, self.masked_weight(), self.bias)


class MaskedConv2d(_Masked, nn.Conv2d):
    """``nn.Conv2d`` with a fixed-shape bool ``mask`` on its weight."""

    def __init__(self, *args, mask=None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_mask(mask)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor):
        """A masked copy of ``conv`` (weights outside ``mask`` are zeroed)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, mask=mask, device=conv.weight.device, dtype=conv.weight.dtype)
        return layer._copy_from(conv)

    def forward(self, x):
        return self._conv_forward(x, self.masked_weight(), self.bias)

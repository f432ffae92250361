"""``CondensedConv2d``: a 2-D convolution with constant fan-in over C_in·kh·kw (implicit
im2col on the Triton backend, unfold fallback on the torch backend)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .._validate import FLOAT_DTYPES, check_tensor
from ..conv_ops import (condensed_conv2d, nchw_to_rows, output_size, rows_to_nchw, unfold_batch_major, unfold_rows,
                        uses_implicit)
from ..formats import CondensedWeight
from .condensed_linear import CondensedLinear


def _int_pair(name, v, minimum):
    p = _pair(v)
    if len(p) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in p):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return tuple(int(i) for i in p)


class CondensedConv2d(CondensedLinear):
    """Conv2d (groups=1) whose weight, seen as (out_channels, in_channels·kh·kw), has
    constant fan-in: every active output channel reads exactly ``fan_in`` of the
    C_in·kh·kw taps.

    Two paths, chosen per call by :func:`tritonsparse.conv_ops.condensed_conv2d`:

    * Triton backend (CUDA, or CPU under ``TRITON_INTERPRET=1``): **implicit im2col**.
      The forward and the values gradient gather the taps straight from x; the unfolded
      input is not built. dX is the condensed dX of the unfolded output gradient
      followed by ``F.fold`` (one unfolded-sized gradient in the backward).
    * torch backend (CPU) and ``torch.compile`` traces: the **unfold fallback**, the input
      unfolded (``F.unfold``) into (N·L, C_in·kh·kw) patches and multiplied by the
      condensed weight with ``condensed_matmul``; the patches take kh·kw times the
      input's memory.
    * ``group_size`` G > 1: G consecutive output channels share their K taps (indices
      (n_active/G, K)). Triton backend: an implicit-im2col forward on tensor cores (the
      group forward tile with output pixels as its batch; no unfolded input), and a
      backward through the group dX (then ``F.fold``) and the group dValues on the input
      unfolded batch-major. torch backend: the unfolded patches through
      :func:`tritonsparse.group_ops.group_condensed_matmul` (a batched matmul per chunk
      of groups).

    Storage, ``set_pattern`` and ablated rows are those of :class:`CondensedLinear` with
    ``in_features = in_channels·kh·kw`` (column ``c·kh·kw + i·kw + j`` is tap (c, i, j),
    the order of ``conv.weight.reshape(out, -1)``). ``capture_hook`` sees the 2-D
    patches (N·L, C_in·kh·kw) and the (N·L, out) output on both paths; on the implicit
    path the patches are unfolded only while a hook is set (DST update steps).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as
            ``nn.Conv2d`` (ints or pairs; padding as numbers, zero padding).
        fan_in: K, nonzeros per active output channel (1..in_channels·kh·kw).
        bias, device, dtype, index_dtype, capacity, nnz_budget: as :class:`CondensedLinear`.
        group_size: G, consecutive output channels sharing one set of K taps (default 1:
            a pattern per channel); ``out_channels`` must be a multiple of G. Storage
            and dynamic sparse training as for ``CondensedLinear(group_size=G)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, fan_in, stride=1, padding=0, dilation=1,
                 bias=True, device=None, dtype=None, index_dtype=None, capacity=None, group_size=1,
                 nnz_budget=None):
        kernel_size = _int_pair("kernel_size", kernel_size, 1)
        self_stride = _int_pair("stride", stride, 1)
        self_padding = _int_pair("padding", padding, 0)
        self_dilation = _int_pair("dilation", dilation, 1)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if out_channels % group_size:
            raise ValueError(f"group_size={group_size} does not divide out_channels={out_channels}")
        super().__init__(in_channels * kernel_size[0] * kernel_size[1], out_channels, fan_in, bias=bias,
                         device=device, dtype=dtype, index_dtype=index_dtype, capacity=capacity,
                         group_size=group_size, nnz_budget=nnz_budget)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, self_stride, self_padding, self_dilation

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None, index_dtype=None, group_size=None):
        """Condense an ``nn.Conv2d`` whose zero pattern (or ``mask``, shaped like its
        weight) has the same count of nonzeros in every nonzero output channel.
        ``group_size``: None or 1 gives a pattern per channel; an int G > 1 requires every
        G consecutive nonzero channels to share their taps; ``"auto"`` takes the largest G
        the pattern has (as :meth:`CondensedWeight.from_dense`)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv has groups={conv.groups}; CondensedConv2d supports groups=1 only")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"conv must use numeric zero padding, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        check_tensor("conv.weight", conv.weight.data, FLOAT_DTYPES, ndim=4)
        weight = conv.weight.detach().reshape(conv.out_channels, -1)
        if mask is not None:
            if tuple(mask.shape) != tuple(conv.weight.shape):
                raise ValueError(f"mask has shape {tuple(mask.shape)} but conv.weight has shape {tuple(conv.weight.shape)}")
            mask = mask.reshape(conv.out_channels, -1)
        cw = CondensedWeight.from_dense(weight, mask, index_dtype, group_size=group_size)
        if cw.n_active == 0:
            raise ValueError("conv has no nonzero weight: nothing to condense")
        if conv.out_channels % cw.group_size:  # the active channels group, but not all of them
            raise ValueError(f"group_size={cw.group_size} does not divide out_channels={conv.out_channels}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, max(cw.fan_in, 1), stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                    device=weight.device, dtype=weight.dtype, index_dtype=cw.indices.dtype,
                    group_size=cw.group_size)
        layer.set_pattern(cw.values, cw.indices, cw.active_rows)
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
        return layer

    def to_dense_conv_weight(self) -> torch.Tensor:
        """The dense (out_channels, in_channels, kh, kw) weight."""
        return self.to_dense_weight().view(self.out_channels, self.in_channels, *self.kernel_size)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return output_size((h, w), self.kernel_size, self.stride, self.padding, self.dilation)

    def _geometry(self):
        return self.kernel_size, self.stride, self.padding, self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        out_hw = self.output_size(x.shape[2], x.shape[3])
        if not uses_implicit(x):
            # unfold: CondensedLinear on the patches (hook and ablation included); G > 1 runs the group op
            unfold = unfold_batch_major if self.group_size > 1 else unfold_rows
            return rows_to_nchw(super().forward(unfold(x, *self._geometry())), n, out_hw)
        full = self.n_active == self.out_features
        y = condensed_conv2d(x, self.weight_values, self._indices_view, self.bias if full else None, *self._geometry(),
                             pattern=self._pattern)
        if not full:  # ablated channels output the bias alone
            y = y.new_zeros(n, self.out_features, *out_hw).index_copy(1, self.active_rows, y)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1, 1)
        if self.capture_hook is not None and torch.is_grad_enabled():
            # the hook wants (N·L, in) patches and an (N·L, out) output whose gradient it records
            y2 = nchw_to_rows(y)
            self.capture_hook(unfold_rows(x, *self._geometry()), y2)
            y = rows_to_nchw(y2, n, out_hw)
        return y

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, fan_in={self.fan_in}, active={self.n_active}, "
                f"bias={self.bias is not None}" + (f", group_size={self.group_size}" if self.group_size > 1 else ""))

"""``gradient_topk``: the best regrowth candidates of a layer without its dense gradient."""
from __future__ import annotations

import torch

from ._triton import backend_for
from ._validate import FLOAT_DTYPES, check_same_device, check_tensor
from .reference import gradient_topk_reference

_EXCLUDE_DTYPES = (torch.int16, torch.int32, torch.int64)


def gradient_topk(x: torch.Tensor, grad_output: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                  tf32: bool = False):
    """Per output row, the ``k`` input columns with the largest ``|(grad_outputᵀ x)[row, d]|``.

    ``grad_outputᵀ x`` is the gradient of the loss with respect to a linear layer's dense
    weight (out, in); this finds its per-row top-k without keeping it whole: row chunks
    of the product through the GEMM and a per-row selection kernel (extra memory one
    chunk, at most 256 MB), or, for ``k + Kx <= 128`` when the product would not fit in one chunk (and
    always in Triton's interpreter), one fused Triton kernel (``tl.dot`` tiles merged into a
    running per-row top-k, extra memory O(out·k)). Both give the same columns. See
    :mod:`tritonsparse.kernels.gradient_topk` for the designs and their modeled cost.
    Gradients accumulated over micro-batches are handled by concatenating them along
    the batch: the product sums over it.

    Args:
        x: (B, in_features) layer input (fp32, fp16 or bf16).
        grad_output: (B, out_features) gradient of the layer output, same dtype as ``x``.
        k: results per row, 1 <= k <= in_features.
        exclude: optional (out_features, Kx) int16/int32/int64 columns a row must not
            return (e.g. its active weights); negative entries are ignored (padding).
        tf32: rank fp32 inputs from TF32 tensor-core products on a GPU (faster, ~1e-3
            relative error, so near-ties can rank differently from the CPU). Default
            ``False``: exact fp32 products on every backend, so the CPU, the interpreter
            and the GPU choose the same columns. Low-precision inputs always multiply
            exactly and accumulate in fp32.

    Returns:
        ``(scores, indices)``: (out_features, k) fp32 scores, best first, and their int64
        columns. Equal scores are ordered by ascending column (deterministic). **A NaN
        score is never selected**, on every backend (+inf is a score like any other). A
        row with fewer than ``k`` selectable columns (not excluded, not NaN) is padded
        with index -1 and score -inf.

    CUDA tensors run the kernel; CPU tensors run the dense reference (or the kernel in
    Triton's interpreter when ``TRITON_INTERPRET=1``).

    Example:
        >>> x, gy = torch.randn(64, 300), torch.randn(64, 20)
        >>> scores, cols = gradient_topk(x, gy, k=5)
        >>> cols.shape
        torch.Size([20, 5])
    """
    check_tensor("x", x, FLOAT_DTYPES, ndim=2)
    check_tensor("grad_output", grad_output, FLOAT_DTYPES, ndim=2)
    if grad_output.shape[0] != x.shape[0]:
        raise ValueError(f"grad_output has batch {grad_output.shape[0]} but x has batch {x.shape[0]}; "
                         "they must match (B, out_features) and (B, in_features)")
    if grad_output.dtype != x.dtype:
        raise TypeError(f"grad_output has dtype {grad_output.dtype} but x has dtype {x.dtype}; they must match")
    in_features, out_features = x.shape[1], grad_output.shape[1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= in_features:
        raise ValueError(f"k must be in [1, in_features={in_features}], got {k}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    if exclude is not None:
        check_tensor("exclude", exclude, _EXCLUDE_DTYPES, ndim=2)
        if exclude.shape[0] != out_features:
            raise ValueError(f"exclude has {exclude.shape[0]} rows but grad_output has out_features={out_features}; "
                             "exclude must be (out_features, Kx)")
        if exclude.numel() and int(exclude.max()) >= in_features:
            raise ValueError(f"exclude holds {int(exclude.max())}, out of range for in_features={in_features}")
    check_same_device(x=x, grad_output=grad_output, exclude=exclude)
    if exclude is not None and exclude.shape[1] == 0:
        exclude = None

    if backend_for(x.device) == "torch":
        return gradient_topk_reference(x, grad_output, k, exclude)
    from .kernels import gradient_topk as kern

    kx = exclude.shape[1] if exclude is not None else 0
    on_gpu = x.device.type == "cuda"
    if not kern.uses_fused_kernel(k, kx, out_features, in_features, cuda=on_gpu):
        return kern.gradient_topk_chunked(x, grad_output, k, exclude, tf32=tf32 and on_gpu)
    scores = torch.empty(out_features, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(out_features, k, dtype=torch.int64, device=x.device)
    precision = "tf32" if tf32 and on_gpu and x.dtype == torch.float32 else "ieee"
    if not on_gpu and x.dtype == torch.bfloat16:  # Triton's interpreter multiplies bf16 dot operands as raw bits
        x, grad_output = x.float(), grad_output.float()
    return kern.gradient_topk(x, grad_output, k, exclude, scores, indices, precision)

"""``gradient_topk``: the best regrowth candidates of a layer without its dense gradient."""
from __future__ import annotations

import torch

from ._triton import backend_for, cuda_matmul_tf32
from ._validate import FLOAT_DTYPES, check_same_device, check_tensor
from .reference import gradient_topk_reference

_EXCLUDE_DTYPES = (torch.int16, torch.int32, torch.int64)
_CHUNK_BYTES = 256 * 2**20  # one chunk of groups in grouped_chunked


def gradient_topk(x: torch.Tensor, grad_output: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                  tf32: bool = False, group_size: int = 1):
    """Per output row, the ``k`` input columns with the largest ``|(grad_outputᵀ x)[row, d]|``;
    with ``group_size=G`` > 1, per group of G consecutive output rows, the ``k`` columns with
    the largest ``sum_r |(grad_outputᵀ x)[gG + r, d]|`` (the regrowth score of a
    group-shared layer, ``CondensedLinear(group_size=G)``).

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
        group_size: G, a divisor of out_features; 1 (default) scores single rows. For
            G > 1 rows and ``exclude`` are per group: ``exclude`` is (out_features / G, Kx)
            and the results (out_features / G, k). The fused kernel sums the G rows of
            each group tile by tile, so no dense gradient is formed either. It is built for
            DST's calls (fp32 ranked exactly, or bf16; ``k + Kx <= 128``); other calls
            (TF32, fp16), and on CUDA a product that fits in one chunk or too few groups to
            fill the GPU, take the chunked path (:func:`grouped_chunked`): the same columns.

    Returns:
        ``(scores, indices)``: (out_features / G, k) fp32 scores, best first, and their int64
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
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size < 1 or out_features % group_size:
        raise ValueError(f"group_size must be a positive divisor of out_features={out_features}, got {group_size}")
    n_groups = out_features // group_size
    if exclude is not None:
        check_tensor("exclude", exclude, _EXCLUDE_DTYPES, ndim=2)
        if exclude.shape[0] != n_groups:
            want = "(out_features, Kx)" if group_size == 1 else f"(out_features / group_size = {n_groups}, Kx)"
            raise ValueError(f"exclude has {exclude.shape[0]} rows but grad_output has out_features={out_features} "
                             f"and group_size={group_size}; exclude must be {want}")
        if exclude.numel() and int(exclude.max()) >= in_features:
            raise ValueError(f"exclude holds {int(exclude.max())}, out of range for in_features={in_features}")
    check_same_device(x=x, grad_output=grad_output, exclude=exclude)
    if exclude is not None and exclude.shape[1] == 0:
        exclude = None

    if backend_for(x.device) == "torch":
        if group_size == 1:
            return gradient_topk_reference(x, grad_output, k, exclude)
        return grouped_chunked(x, grad_output, k, exclude, group_size)
    from .kernels import gradient_topk as kern

    on_gpu = x.device.type == "cuda"
    kx = exclude.shape[1] if exclude is not None else 0
    precision = "tf32" if tf32 and on_gpu and x.dtype == torch.float32 else "ieee"
    fused = kern.uses_fused_kernel(k, kx, out_features, in_features, cuda=on_gpu, group_size=group_size)
    if fused and group_size > 1:  # the grouped kernel is built for DST's launches only
        fused = kern.grouped_kernel_serves(kern.buffer_width(k, kx), x.dtype, precision)
    if not fused:
        if group_size > 1:
            return grouped_chunked(x, grad_output, k, exclude, group_size, tf32=tf32 and on_gpu)
        return kern.gradient_topk_chunked(x, grad_output, k, exclude, tf32=tf32 and on_gpu)
    scores = torch.empty(n_groups, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n_groups, k, dtype=torch.int64, device=x.device)
    if not on_gpu and x.dtype == torch.bfloat16:  # Triton's interpreter multiplies bf16 dot operands as raw bits
        x, grad_output = x.float(), grad_output.float()
    return kern.gradient_topk(x, grad_output, k, exclude, scores, indices, group_size, precision)


def grouped_chunked(x, grad_output, k, exclude=None, group_size=1, tf32=False):
    """Per group of ``group_size`` (G) consecutive rows of ``grad_outputᵀ x``, the top-k
    columns of ``sum_r |(grad_outputᵀ x)[gG + r, :]|``, a chunk of groups at a time: the
    chunk's rows in one GEMM (fp32, TF32 only if ``tf32`` and on CUDA), |.| summed over each
    group's rows, then the fused kernel's selection rule (the Triton selection kernel of
    :func:`~tritonsparse.kernels.gradient_topk.gradient_topk_chunked` where it serves): NaN and excluded columns
    (``exclude`` (out / G, Kx), negative entries ignored) are never selected, best first,
    ties by ascending column, a group with fewer than k selectable columns padded with
    -1 / -inf. Returns ``(scores fp32, indices int64)``, each (out / G, k). Extra memory:
    one chunk (at most ``_CHUNK_BYTES``, 256 MB: 4G + 20 bytes per group and column)."""
    from .kernels import topk_select as sel
    from .kernels.gradient_topk import _select_torch

    g = int(group_size)
    in_features = x.shape[1]
    n_groups = grad_output.shape[1] // g
    xf, gf = x.float(), grad_output.float()
    scores = torch.empty(n_groups, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n_groups, k, dtype=torch.int64, device=x.device)
    step = max(1, min(n_groups, _CHUNK_BYTES // max((4 * g + 20) * in_features, 1)))
    use_kernel = backend_for(x.device) == "triton" and sel.serves(in_features, k)
    with cuda_matmul_tf32(tf32, x.device):
        for g0 in range(0, n_groups, step):
            g1 = min(n_groups, g0 + step)
            s = (gf[:, g0 * g:g1 * g].t() @ xf).abs_().view(g1 - g0, g, in_features).sum(1)
            ex = exclude[g0:g1] if exclude is not None else None
            if use_kernel:  # the per-row path's selection, the same rules on the group sums
                sel.topk_select(s, k, ex, out=(scores[g0:g1], indices[g0:g1]))
            else:
                scores[g0:g1], indices[g0:g1] = _select_torch(s, k, ex)
    return scores, indices

"""The plain-PyTorch path (CPU tensors): fast, not a gather.

A naive ``x[..., indices]`` gather materialises a (batch, n, K) tensor and loses to dense.
A condensed weight is a CSR matrix with equal row lengths, so the forward and dX run on
``torch.sparse.mm`` (MKL on CPU) with zero-copy row pointers; dValues is the dense
gradient dYᵀX sampled at the pattern, done in row chunks so memory stays bounded.
Low-precision inputs are computed in fp32 (MKL has no bf16 sparse kernels) and cast back,
which also gives the fp32 accumulation the kernels use.
"""
from __future__ import annotations

import functools
import warnings

import torch

from ._validate import check_indices_in_range

# torch warns on every CSR construction that the layout is beta; that is known here
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

_DW_CHUNK_ELEMS = 1 << 22  # rows of dYᵀX computed at once: chunk * in_features elements


def _csr(crow, col, values, shape):
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@functools.lru_cache(maxsize=64)
def _row_pointers(n, k, device):
    """``arange(0, n*K + 1, K)`` as int32: the row pointers of every (n, K) pattern
    (made outside inference mode, so the cached tensor serves every later call)."""
    with torch.inference_mode(False):
        if k == 0:
            return torch.zeros(n + 1, dtype=torch.int32, device=device)
        return torch.arange(0, n * k + 1, k, dtype=torch.int32, device=device)


def _forward_pattern(indices):
    """(crow, col) int32 arrays of the condensed pattern. ``col`` is the indices
    themselves when they are int32 (never a stale copy); int16 ones are widened here,
    on every call (about as cheap as the range check)."""
    n, k = indices.shape
    # contiguous: reshape(-1) of a column slice such as indices[:, ::2] is a strided view,
    # which the CSR constructor would take as it is (a silent wrong product)
    return _row_pointers(n, k, indices.device), indices.reshape(-1).to(torch.int32).contiguous()


def condensed_fwd(x2, values, indices, bias):
    """x2: (B, in_features) -> (B, n), as the transposed view of an (n, B) result (a copy
    to row-major would cost as much as the small-batch product itself). The indices must
    lie in [0, in_features): MKL does not check them (the caller does, every call)."""
    n = values.shape[0]
    crow, col = _forward_pattern(indices)
    w = _csr(crow, col, values.reshape(-1).float().contiguous(), (n, x2.shape[1]))
    if x2.shape[0] == 1:  # MKL's sparse matrix-vector product beats its (n, 1) matmul
        y_t = torch.mv(w, x2[0].float()).unsqueeze(1)
    else:
        y_t = torch.sparse.mm(w, x2.t().float().contiguous())
    if bias is not None:
        y_t += bias.float()[:, None]
    return y_t.to(x2.dtype).t()


def condensed_dx(grad2, values, transposed, in_features):
    """grad2: (B, n) -> dX (B, in_features) = grad2 @ W, over ``transposed``, the
    pattern's ``(crow, rows, perm)`` (:meth:`tritonsparse._structure.Pattern.transposed`)."""
    crow, rows, perm = transposed
    vals = values.reshape(-1).float().index_select(0, perm)  # index_select: ~3x faster than v[perm] here
    wt = _csr(crow, rows, vals, (in_features, values.shape[0]))
    return torch.sparse.mm(wt, grad2.t().float().contiguous()).t().to(grad2.dtype).contiguous()


def condensed_dw(grad2, x2, indices, out_dtype):
    """dValues[j, k] = (grad2ᵀ x2)[j, indices[j, k]], computed a block of rows at a time."""
    n, k = indices.shape
    out = torch.empty(n, k, dtype=out_dtype, device=x2.device)
    if n == 0 or k == 0:
        return out
    if x2.shape[0] == 1:  # one sample: dValues = g[j] * x[indices[j, k]], a gather beats the dense product
        xs = x2[0].float().index_select(0, indices.reshape(-1).long()).view(n, k)
        return (xs * grad2[0].float()[:, None]).to(out_dtype)
    gt = grad2.t().float()
    xf = x2.float()
    idx = indices.long()
    chunk = max(1, _DW_CHUNK_ELEMS // max(x2.shape[1], 1))
    for s in range(0, n, chunk):
        out[s : s + chunk] = (gt[s : s + chunk] @ xf).gather(1, idx[s : s + chunk])
    return out


# -- column-blocked CSR: a stored inference layout for matrix-vector products ------------
BLOCK_COLUMNS = 4096  # x columns per block: 16 KB of fp32, inside a core's L1d with room to spare


def column_blocks(values, indices, active_rows, shape, block_columns: int = BLOCK_COLUMNS):
    """The condensed weight ``values`` / ``indices`` (n_active, K) of ``active_rows`` (a
    (n_active,) index tensor, or None for every row) of a (n, in_features) ``shape``,
    split by input column into C = ceil(in_features / block_columns) equal blocks, each a
    CSR matrix over all n rows. Returns ``(crow, col, vals, edges)``: ``crow`` (C, n + 1)
    int32 row pointers of each block (from 0), ``col`` (nnz,) int32 columns relative to
    the block's first column, ``vals`` (nnz,) fp32, the blocks one after the other, and
    ``edges`` (C + 1,) int64 column boundaries. Indices are checked to lie in
    [0, in_features). Made once (it copies the values into block order)."""
    n, in_features = shape
    if isinstance(block_columns, bool) or not isinstance(block_columns, int) or block_columns < 1:
        raise ValueError(f"block_columns must be a positive int, got {block_columns!r}")
    check_indices_in_range("indices", indices, in_features)
    idx = indices.long()
    rows = torch.arange(n, device=idx.device) if active_rows is None else active_rows.long()
    blocks = max(1, -(-in_features // block_columns))
    edges = torch.div(torch.arange(blocks + 1, dtype=torch.int64) * in_features, blocks, rounding_mode="floor")
    # every row of the layer, ablated ones with column -1 (inside no block)
    full_idx = torch.full((n, idx.shape[1]), -1, dtype=torch.int64, device=idx.device)
    full_val = torch.zeros(n, idx.shape[1], dtype=torch.float32, device=idx.device)
    full_idx[rows], full_val[rows] = idx, values.detach().float()
    crow = torch.zeros(blocks, n + 1, dtype=torch.int32, device=idx.device)
    cols, vals = [], []
    for c in range(blocks):
        lo, hi = int(edges[c]), int(edges[c + 1])
        inside = (full_idx >= lo) & (full_idx < hi)
        crow[c, 1:] = inside.sum(1).cumsum(0).to(torch.int32)
        cols.append((full_idx[inside] - lo).to(torch.int32))  # row-major order: row by row
        vals.append(full_val[inside])
    return crow, torch.cat(cols), torch.cat(vals), edges


def blocked_matmul(x2, crow, col, vals, edges, bias=None):
    """x2 (B, in_features) times the column-blocked CSR weight of :func:`column_blocks`:
    one sparse product per block over x's columns of that block, summed in block order.
    Returns (B, n) in x2's dtype (computed in fp32, as a transposed view of (n, B))."""
    blocks, n = crow.shape[0], crow.shape[1] - 1
    xf = x2.float()
    y_t = None
    start = 0
    for c in range(blocks):
        lo, hi = int(edges[c]), int(edges[c + 1])
        nnz = int(crow[c, -1])
        w = _csr(crow[c], col[start:start + nnz], vals[start:start + nnz], (n, hi - lo))
        start += nnz
        part = (torch.mv(w, xf[0, lo:hi]).unsqueeze(1) if x2.shape[0] == 1
                else torch.sparse.mm(w, xf[:, lo:hi].t().contiguous()))
        y_t = part if y_t is None else y_t.add_(part)
    if bias is not None:
        y_t += bias.float()[:, None]
    return y_t.to(x2.dtype).t()

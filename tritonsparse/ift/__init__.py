"""Sparse Iso-FLOP Transformations (Sparse Wide / Parallel / Factorized / Doped) and a
FLOP counter. See :func:`sparse_ift` and :func:`count_flops`."""
from .flops import FlopCount, count_flops, iso_flop_report, module_density
from .layers import (SparseDoped, SparseFactorized, SparseParallel, doped_rank, factorized_width, layer_dims,
                     parallel_branches, wide_factor)
from .transforms import IFT_KINDS, SparseIFT, compute_layers, sparse_ift

__all__ = [
    "IFT_KINDS", "FlopCount", "SparseDoped", "SparseFactorized", "SparseIFT", "SparseParallel", "compute_layers",
    "count_flops", "doped_rank", "factorized_width", "iso_flop_report", "layer_dims", "module_density",
    "parallel_branches", "sparse_ift", "wide_factor",
]

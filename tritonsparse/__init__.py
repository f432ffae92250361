"""tritonsparse: autotuned Triton kernels for constant fan-in sparse networks.

Subpackages: ``tritonsparse.nn`` (layers), ``tritonsparse.dst`` (dynamic sparse
training), ``tritonsparse.ift`` (Sparse-IFT), ``tritonsparse.models``, ``tritonsparse.train``.
"""
from . import nn
from .csr import csr_matmul
from .export import export
from .formats import CondensedWeight, default_index_dtype
from .ops import condensed_matmul
from .topk import gradient_topk

__version__ = "0.1.0"

__all__ = ["CondensedWeight", "condensed_matmul", "csr_matmul", "default_index_dtype", "export", "gradient_topk", "nn"]

"""tritonsparse: autotuned Triton kernels for constant fan-in sparse networks."""
from .formats import CondensedWeight, default_index_dtype
from .ops import condensed_matmul
from .topk import gradient_topk
from .csr import csr_matmul  # noqa: F401  (CSR baseline)
from . import nn  # noqa: F401  (tritonsparse.nn.CondensedLinear)
from .export import export  # noqa: F401  (trained sparse model -> inference model; tritonsparse.ift/models/train are subpackages)

__version__ = "0.1.0"

__all__ = ["CondensedWeight", "condensed_matmul", "default_index_dtype", "gradient_topk", "nn"]

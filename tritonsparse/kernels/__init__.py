"""Triton kernels, one op per file. Each file holds the ``@triton.jit`` kernel, its
autotune space and a host launcher that takes prepared (validated, laid out) tensors."""

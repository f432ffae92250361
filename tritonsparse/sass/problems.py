"""Named problems for the SASS report: what the library would launch for one layer call.

A :class:`Problem` names an op and its sizes (kernel role, in, out, K, batch, dtype,
index dtype). :func:`launches` runs the library's public entry point on CPU tensors with
every Triton launch intercepted (:func:`tritonsparse.sass.compile.capture_launches`), so
the report sees exactly the kernels, arguments, grids and autotune prunes the library
would use on a GPU, whatever the launchers do on the host. Roles:

  * ``fwd``: ``condensed_matmul`` forward;
  * ``dx`` / ``dw``: its backward with only x / only the values requiring grad (the
    per-kernel view: each captures its own batch-major copy of dY);
  * ``bwd``: ONE backward with both x and the values requiring grad, what a training
    step runs (dY made batch-major once, then the dX and the dValues kernels);
  * ``topk``: ``gradient_topk`` (``K`` is k, ``Kx`` the excluded columns per row);
  * ``conv_fwd`` / ``conv_dw``: ``condensed_conv2d`` on a (batch, in, hw, hw) input with a
    3x3 kernel, padding 1 (``in`` is channels; ``K`` the fan-in over C·3·3).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

ROLES = ("fwd", "dx", "dw", "bwd", "topk", "conv_fwd", "conv_dw")
LINEAR_ROLES = ("fwd", "dx", "dw", "bwd")  # condensed_matmul (or its group-shared form)
_FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_INDEX = {"int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


@dataclass(frozen=True)
class Problem:
    """One op call: ``role`` (see the module doc), sizes, float dtype, index dtype."""

    role: str
    in_features: int
    out_features: int
    K: int
    batch: int
    dtype: str = "fp32"
    index_dtype: str = "int32"
    Kx: int = 0  # topk: excluded columns per row
    hw: int = 0  # conv: input height = width
    G: int = 1  # fwd/dx/dw/bwd: rows sharing one index row (group-shared pattern, gather-MMA kernels)
    dx_mode: str = "deterministic"  # G > 1: the group dX mode ("deterministic" or "atomic")
    batch_major: bool = False  # a layer in a chain: x and dY arrive batch-major (views of xT, dYT), y and dX leave so

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.dtype not in _FLOAT:
            raise ValueError(f"dtype must be one of {sorted(_FLOAT)}, got {self.dtype!r}")
        if self.index_dtype not in _INDEX:
            raise ValueError(f"index_dtype must be one of {sorted(_INDEX)}, got {self.index_dtype!r}")
        for name in ("in_features", "out_features", "K", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        fan_in = self.in_features * (9 if self.role.startswith("conv") else 1)
        if self.role != "topk" and self.K > fan_in:
            raise ValueError(f"K={self.K} exceeds the fan-in {fan_in} of in_features={self.in_features}")
        if self.G != 1 and (self.role not in LINEAR_ROLES or self.G < 1 or self.out_features % self.G):
            raise ValueError(f"G={self.G} needs role fwd/dx/dw/bwd and out_features divisible by G")
        if self.batch_major and self.role not in LINEAR_ROLES:
            raise ValueError(f"batch_major needs a linear role {LINEAR_ROLES} (condensed_matmul's batch_major_out)")
        if self.dx_mode not in ("deterministic", "atomic"):
            raise ValueError(f"dx_mode must be 'deterministic' or 'atomic', got {self.dx_mode!r}")
        if self.role.startswith("conv") and self.hw < 1:
            raise ValueError("hw (input height = width) must be >= 1 for a conv problem")

    @property
    def label(self) -> str:
        core = f"{self.role} {self.in_features}->{self.out_features} K={self.K} B={self.batch} {self.dtype}/{self.index_dtype}"
        if self.role == "topk":
            core = f"topk {self.in_features}->{self.out_features} k={self.K} Kx={self.Kx} B={self.batch} {self.dtype}"
        if self.role.startswith("conv"):
            core += f" {self.hw}x{self.hw}"
        if self.G > 1:
            core += f" G={self.G}" + (" atomic" if self.dx_mode == "atomic" and self.role in ("dx", "bwd") else "")
        core += " batch-major" if self.batch_major else ""
        return core

    @property
    def useful_fmas(self) -> int:
        """Multiply-adds the op needs (the dense GEMM's for topk; per output pixel for conv;
        dX's and dValues' for bwd)."""
        if self.role == "bwd":
            return 2 * self.batch * self.out_features * self.K
        if self.role == "topk":
            return self.batch * self.in_features * self.out_features
        if self.role.startswith("conv"):
            return self.batch * self.hw * self.hw * self.out_features * self.K
        return self.batch * self.out_features * self.K

    @property
    def dense_fmas(self) -> int:
        """Multiply-adds of the dense op of the same shape (two GEMMs for bwd)."""
        if self.role == "bwd":
            return 2 * self.batch * self.in_features * self.out_features
        if self.role.startswith("conv"):
            return self.batch * self.hw * self.hw * self.out_features * self.in_features * 9
        return self.batch * self.in_features * self.out_features

    def with_(self, **kw) -> "Problem":
        return replace(self, **kw)


def _pattern(n, fan_in, K, index_dtype, gen):
    """A random constant fan-in pattern (sorted indices per row)."""
    scores = torch.rand(n, fan_in, generator=gen)
    idx = scores.topk(K, dim=1).indices.sort(dim=1).values
    return idx.to(_INDEX[index_dtype])


def _calls(p: Problem):
    """``(prepare, forward, backward)`` closures that run the library entry point for ``p``
    on CPU tensors: ``prepare()`` makes the leaves (outside the capture), ``forward(state)``
    returns what ``backward(state)`` needs; ``backward`` is None for the forward roles."""
    import tritonsparse

    gen = torch.Generator().manual_seed(0)
    dt = _FLOAT[p.dtype]
    if p.role in LINEAR_ROLES:
        from ..formats import pad_fan_in

        idx = _pattern(p.out_features // p.G, p.in_features, p.K, p.index_dtype, gen)
        vals = torch.randn(p.out_features, p.K, generator=gen).to(dt)
        if p.G > 1:  # the group format's storage: rows padded to 16 slots
            idx, vals = pad_fan_in(idx), pad_fan_in(vals)
        x = torch.randn(p.batch, p.in_features, generator=gen).to(dt)

        def prepare():
            # batch-major: x as the previous op's batch_major_out leaves it (a view of xT), and
            # dY as the next layer's backward leaves it
            def lay(t):
                return t.t().contiguous().t() if p.batch_major else t.clone()

            xx = lay(x).requires_grad_(p.role in ("dx", "bwd"))
            vv = pad_fan_in(vals.clone()) if p.G > 1 else vals.clone()  # clone() drops the padding
            return xx, vv.requires_grad_(p.role in ("dw", "bwd")), lay(torch.ones(p.batch, p.out_features, dtype=dt))

        def forward(state):
            xx, vv, g = state
            with torch.set_grad_enabled(p.role != "fwd"):
                if p.G > 1:
                    from ..group_ops import group_condensed_matmul

                    return group_condensed_matmul(xx, vv, idx, dx_mode=p.dx_mode, batch_major_out=p.batch_major), g, (xx, vv)
                return tritonsparse.condensed_matmul(xx, vv, idx, batch_major_out=p.batch_major), g, (xx, vv)

        def backward(state):
            # the op's backward alone: torch.autograd.grad runs no AccumulateGrad, whose copy
            # here would be an artifact (the captured launches keep the gradient buffers
            # alive, so autograd could not take them over as it does in training)
            y, g, leaves = state
            torch.autograd.grad(y, [t for t in leaves if t.requires_grad], g)

        return prepare, forward, (backward if p.role != "fwd" else None)
    if p.role == "topk":
        x = torch.randn(p.batch, p.in_features, generator=gen).to(dt)
        go = torch.randn(p.batch, p.out_features, generator=gen).to(dt)
        ex = _pattern(p.out_features, p.in_features, p.Kx, "int32", gen) if p.Kx else None

        def forward(state):
            # the public op with its defaults (exact fp32 products); on CPU tensors it takes
            # the GPU's route, except that bf16 would be cast to fp32 for the interpreter
            tritonsparse.gradient_topk(x, go, p.K, ex)

        return (lambda: None), forward, None
    from ..conv_ops import condensed_conv2d

    idx = _pattern(p.out_features, p.in_features * 9, p.K, p.index_dtype, gen)
    vals = torch.randn(p.out_features, p.K, generator=gen).to(dt)
    x = torch.randn(p.batch, p.in_features, p.hw, p.hw, generator=gen).to(dt)

    def prepare():
        vv = vals.clone().requires_grad_(p.role == "conv_dw")
        return vv, torch.ones(p.batch, p.out_features, p.hw, p.hw, dtype=dt)

    def forward(state):
        vv, g = state
        with torch.set_grad_enabled(p.role != "conv_fwd"):
            return condensed_conv2d(x, vv, idx, None, (3, 3), (1, 1), (1, 1), (1, 1)), g

    def backward(state):
        y, g = state
        y.backward(g)

    return prepare, forward, (backward if p.role != "conv_fwd" else None)


def capture(p: Problem):
    """``(launches, torch_ops)``: the Triton launches (:class:`~tritonsparse.sass.compile.Launch`)
    and the data-moving PyTorch operators (:class:`~tritonsparse.sass.compile.TorchOp`) the
    library runs for ``p``, in order (for the backward roles, those of the backward only),
    in the steady state: a first call, not recorded, fills the caches of the index pattern
    (e.g. the transposed structure dX uses), as in training between mask updates."""
    from .compile import intercept_launches

    if not isinstance(p, Problem):
        raise TypeError(f"p must be a Problem, got {type(p).__name__}")
    prepare, forward, backward = _calls(p)
    for warm in (True, False):  # the first call fills the per-pattern caches; steady state is the second
        leaves = prepare()
        ops: list = []
        with intercept_launches(ops) as got:
            state = forward(leaves)
            n_launch, n_ops = len(got), len(ops)
            if backward is not None:
                backward(state)
        if not warm:
            if backward is None:
                return list(got), list(ops)
            return list(got[n_launch:]), list(ops[n_ops:])


def launches(p: Problem):
    """The Triton launches the library makes for ``p`` (see :func:`capture`)."""
    return capture(p)[0]


# The ViT-B MLP layers at 90% sparsity (SRigL's constant fan-in) and the Llama-3-8B MLP
# shapes of issue 8.
VIT_FC1 = dict(in_features=768, out_features=3072, K=77)
VIT_FC2 = dict(in_features=3072, out_features=768, K=307)
LLAMA_UP = dict(in_features=4096, out_features=14336, K=410)
LLAMA_DOWN = dict(in_features=14336, out_features=4096, K=1434)

# What the AOT check takes the runtime's int arguments from (one launch per kernel).
REPRESENTATIVE = (
    Problem("fwd", batch=256, **VIT_FC1),
    Problem("dx", batch=256, **VIT_FC1),
    Problem("dw", batch=256, **VIT_FC1),
    Problem("topk", 768, 3072, 8, 256, Kx=77),
    Problem("conv_fwd", 64, 64, 58, 8, hw=16),
    Problem("conv_dw", 64, 64, 58, 8, hw=16),
)

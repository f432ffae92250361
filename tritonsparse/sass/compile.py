"""Compile Triton kernels for a GPU target without a GPU, the way the runtime would.

A real call ``kernel[grid](*args)`` specializes the kernel on its arguments before it
compiles: 16-byte-aligned pointers and ints divisible by 16 get ``tt.divisibility=16``,
an int equal to 1 becomes a compile-time constant. This module reproduces that with
Triton's own binder (``create_function_from_signature`` + ``JITFunction._pack_args``)
on CPU tensors or :class:`FakePtr` stand-ins, so the binary it builds is the one the
runtime would launch for the same arguments.

Two ways in:
  * :func:`capture_launches` runs a launcher (the public API, a kernel launcher) on CPU
    tensors with every Triton launch intercepted, and returns what each launch would
    have been called with (kernel, arguments, grid);
  * :func:`specialize` / :func:`compile_kernel` build one kernel from named arguments.

Compiled binaries go through Triton's own file cache (``TRITON_CACHE_DIR``), so the AOT
check and the SASS report share compiles. Must run with ``TRITON_INTERPRET`` unset.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._structure import cuda_check_policy

_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64,
    "i8": torch.int8, "i16": torch.int16, "i32": torch.int32, "i64": torch.int64,
    "u8": torch.uint8, "i1": torch.bool,
}


class FakePtr:
    """Stands in for a device tensor argument: a dtype and an address (16-byte aligned
    by default, as every fresh CUDA allocation is)."""

    def __init__(self, dtype, offset_bytes: int = 0):
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"FakePtr: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"FakePtr: dtype must be a torch.dtype or a name, got {type(dtype).__name__}")
        self.dtype = dtype
        self._ptr = (1 << 24) + int(offset_bytes)

    def data_ptr(self) -> int:
        return self._ptr

    def __repr__(self):
        return f"FakePtr({self.dtype}, +{self._ptr - (1 << 24)})"


def tool(name: str) -> str:
    """Path of an NVIDIA tool (``nvdisasm``, ``cuobjdump``, ``ptxas``) shipped in the triton wheel."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found in the triton wheel ({path})")
    return path


def check_not_interpreting():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels, nothing can be compiled")


def jit_function(fn):
    """The ``JITFunction`` under autotune / heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction):
        if not hasattr(fn, "fn"):
            raise TypeError(f"not a Triton kernel: {fn!r}")
        fn = fn.fn
    return fn


def _apply_heuristics(fn, args: dict) -> dict:
    """Add the values of any ``triton.heuristics`` wrappers between ``fn`` and its JITFunction."""
    from triton.runtime.autotuner import Heuristics
    from triton.runtime.jit import JITFunction

    args = dict(args)
    while not isinstance(fn, JITFunction):
        if isinstance(fn, Heuristics):
            for name, rule in fn.values.items():
                args[name] = rule(args)
        fn = fn.fn
    return args


@dataclass
class Specialization:
    """What ``triton.compile`` needs to build one kernel as the runtime would."""

    kernel: Any  # JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict  # num_warps, num_stages, ... as passed to the compiler
    arch: int

    def describe(self) -> str:
        """One line: the specialized ints and pointers (D = divisible by 16, =1 constant)."""
        names = self.kernel.arg_names
        marks = []
        const_names = {names[k[0]]: v for k, v in self.constexprs.items()}
        div = {names[k[0]] for k, v in self.attrs.items() if any(a[0] == "tt.divisibility" for a in v)}
        for name, ty in self.signature.items():
            if ty == "constexpr":
                if not self.kernel.params[names.index(name)].is_constexpr:
                    marks.append(f"{name}=1")
            elif name in div:
                marks.append(f"{name}:D")
        return " ".join(marks)


def specialize(fn, args: dict, arch: int = 90, num_warps: int = 4, num_stages: int = 3, fp_fusion=None,
               **options) -> Specialization:
    """The runtime's specialization of ``fn`` (a kernel, possibly autotuned) for named
    arguments ``args`` (every parameter, constexprs included; tensors or :class:`FakePtr`
    for pointers), for ``sm_<arch>``. ``fp_fusion``: None keeps Triton's default."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    if not isinstance(args, dict):
        raise TypeError(f"args must be a dict of parameter name -> value, got {type(args).__name__}")
    jit = jit_function(fn)
    args = _apply_heuristics(fn, args)
    unknown = [n for n in args if n not in jit.arg_names]
    if unknown:
        raise ValueError(f"args: {jit.__name__} has no parameter(s) {unknown}")
    backend = make_backend(GPUTarget("cuda", int(arch), 32))
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    kw = {"num_warps": num_warps, "num_stages": num_stages, **options}
    # explicit, so no warning and one cache key; None: what the runtime would use today
    runtime_default = knobs.language.default_fp_fusion and not knobs.language.force_disable_fp_fusion
    kw["enable_fp_fusion"] = bool(runtime_default if fp_fusion is None else fp_fusion)
    kw["debug"] = False
    try:
        bound_args, spec, _ = binder(**{n: args[n] for n in jit.arg_names if n in args}, **kw)
    except TypeError as e:
        missing = [n for n in jit.arg_names if n not in args]
        raise ValueError(f"args for {jit.__name__}: {e} (not given: {missing})") from e
    parsed, signature, constexprs, attrs = jit._pack_args(backend, kw, bound_args, spec, kw)
    opts = {k: v for k, v in kw.items() if k in parsed.__dict__}
    return Specialization(jit, signature, constexprs, attrs, opts, int(arch))


def compile_spec(spec: Specialization):
    """``triton.compile`` of a :class:`Specialization` (through Triton's file cache)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    check_not_interpreting()
    src = ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs)
    return triton.compile(src, target=GPUTarget("cuda", spec.arch, 32), options=dict(spec.options))


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack, shared and local memory of a cubin (``cuobjdump --dump-resource-usage``)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out[-500:]}")
    regs, stack, shared, local = (int(g) for g in m.groups())
    return {"regs": regs, "stack": stack, "shared": shared, "local": local}


def disassemble(cubin: bytes) -> str:
    """SASS text of a cubin (``nvdisasm``, without line info)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout


# -- capturing launches ------------------------------------------------------------------
@dataclass
class Launch:
    """One intercepted kernel launch: the (autotuned) kernel, its named arguments (the
    call's keyword arguments included) and its grid (a tuple or a callable of the meta)."""

    kernel: Any
    args: dict
    grid: Any
    call_kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return jit_function(self.kernel).__name__

    def configs(self):
        """The configs the autotuner would time for this call: its own prune on the call's
        arguments (all configs if it has no prune; the kernel's defaults if not autotuned)."""
        from triton.runtime.autotuner import Autotuner

        if not isinstance(self.kernel, Autotuner):
            import triton

            return [triton.Config({}, num_warps=self.call_kwargs.get("num_warps", 4),
                                  num_stages=self.call_kwargs.get("num_stages", 3))]
        tuner = self.kernel
        if len(tuner.configs) <= 1:
            return list(tuner.configs)
        tuner.nargs = {k: v for k, v in self.args.items() if k in tuner.arg_names}
        try:
            return list(tuner.prune_configs({**self.call_kwargs, "grid": self.grid, "warmup": False}))
        finally:
            tuner.nargs = None

    def full_args(self, config) -> dict:
        return {**self.args, **config.kwargs}

    def grid_for(self, config) -> tuple:
        """The launch grid under ``config`` (padded to three dimensions)."""
        meta = self.full_args(config)
        g = self.grid(meta) if callable(self.grid) else self.grid
        g = tuple(int(v) for v in g)
        return g + (1,) * (3 - len(g))

    def specialization(self, config, arch: int = 90, fp_fusion=None) -> Specialization:
        extra = {k: v for k, v in (config.all_kwargs() if hasattr(config, "all_kwargs") else {}).items()
                 if k not in config.kwargs and v is not None and k in ("num_warps", "num_stages", "num_ctas", "maxnreg")}
        return specialize(self.kernel, self.full_args(config), arch=arch, fp_fusion=fp_fusion, **extra)


@dataclass
class TorchOp:
    """One PyTorch operator the launcher ran besides the kernels (a transpose, a pad, a sum
    of partials): its name and the bytes of its tensor inputs and outputs."""

    name: str
    bytes_in: int
    bytes_out: int
    flops: int = 0  # a matrix product's 2*M*N*K
    dtype: str = ""  # a matrix product's operand dtype (fp32, bf16, fp16)


# operators that move no data: views, allocations, metadata
_FREE_OPS = {
    "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "view", "_unsafe_view", "t",
    "transpose", "permute", "as_strided", "expand", "slice", "select", "unsqueeze", "squeeze", "detach", "alias",
    "reshape", "_reshape_alias", "unbind", "split", "narrow", "diagonal", "lift_fresh", "view_as", "numel",
    "size", "stride", "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "contiguous",
    "_to_copy_noop", "resolve_conj", "resolve_neg", "_has_compatible_shallow_copy_type", "set_",
    "scalar_tensor", "_local_scalar_dense",  # a wrapped Python scalar; a host read (a sync, no kernel)
}


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul"}
_DT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _matmul_flops(name, args, out) -> tuple[int, str]:
    """(2*M*N*K, operand dtype) of a matrix product; (0, "") for other operators."""
    if name not in _MATMULS or not isinstance(out, torch.Tensor):
        return 0, ""
    mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
    if len(mats) < 2:
        return 0, ""
    k = mats[-2].shape[-1]
    return 2 * out.numel() * k, _DT_NAMES.get(mats[-1].dtype, "fp32")


def _op_recorder(ops: list):
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__.rstrip("_")
            if name not in _FREE_OPS:
                flops, dt = _matmul_flops(name, args, out)
                ops.append(TorchOp(name, _tensor_bytes(args) + _tensor_bytes(kwargs or {}), _tensor_bytes(out),
                                   flops, dt))
            return out

    return _Record()


@contextlib.contextmanager
def intercept_launches(torch_ops: list | None = None):
    """Within the context, every Triton launch is recorded (a list of :class:`Launch` is
    yielded) instead of run; launchers' backend checks answer ``"triton"`` for CPU tensors,
    and index patterns (:class:`~tritonsparse._structure.Pattern`) follow the CUDA rule.
    With a list ``torch_ops``, the PyTorch operators that move data are appended to it
    (:class:`TorchOp`)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import tritonsparse._triton as tt

    check_not_interpreting()
    launches: list[Launch] = []

    def record(kernel, args, kwargs):
        jit = jit_function(kernel)
        grid = kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
        named = dict(zip(jit.arg_names, args))
        consts = {k: v for k, v in kwargs.items() if k in jit.arg_names}
        named.update(consts)
        rest = {k: v for k, v in kwargs.items() if k not in jit.arg_names}
        launches.append(Launch(kernel, named, grid, rest))

    def tuner_run(self, *args, **kwargs):
        record(self, args, dict(kwargs))

    def jit_run(self, *args, grid, warmup, **kwargs):
        record(self, args, {"grid": grid, **kwargs})

    patches = [(Autotuner, "run", tuner_run), (JITFunction, "run", jit_run)]
    # modules that picked backend_for up by name: make them take the Triton path on CPU
    import sys

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tritonsparse") and getattr(mod, "backend_for", None) is tt.backend_for:
            patches.append((mod, "backend_for", lambda device: "triton"))
    patches.append((tt, "backend_for", lambda device: "triton"))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    mode = _op_recorder(torch_ops) if torch_ops is not None else contextlib.nullcontext()
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        # index patterns follow the GPU's rule: range check and transposed structure redone
        # only when the indices tensor changes (on CPU tensors they are checked on every call)
        with cuda_check_policy(), mode:
            yield launches
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def capture_launches(call: Callable[[], Any]) -> list[Launch]:
    """Run ``call()`` (on CPU tensors) with every Triton launch intercepted; returns the
    launches in order. Outputs the kernels would write stay uninitialized."""
    if not callable(call):
        raise TypeError("call must be a callable taking no arguments")
    with intercept_launches() as launches:
        call()
    return list(launches)

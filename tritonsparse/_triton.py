"""The one place that knows whether Triton can run, and how.

Backends:
  * ``"triton"``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` (Triton's
    interpreter; slow, used by CI to check kernel logic without a GPU).
  * ``"torch"``: plain PyTorch (the CPU path).

``TRITONSPARSE_BACKEND=torch|triton`` forces one (mainly for tests and benchmarks).
"""
from __future__ import annotations

import contextlib
import os

import torch

try:  # triton is optional on CPU-only installs
    import triton
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_for(device: torch.device) -> str:
    """Pick the backend for tensors on ``device``: ``"triton"`` or ``"torch"``."""
    forced = os.environ.get("TRITONSPARSE_BACKEND", "").strip().lower()
    if forced not in ("", "auto", "torch", "triton"):
        raise ValueError(f"TRITONSPARSE_BACKEND must be 'auto', 'torch' or 'triton', got {forced!r}")
    if forced == "torch":
        return "torch"
    can_triton = HAS_TRITON and (device.type == "cuda" or (interpreting() and device.type == "cpu"))
    if forced == "triton" and not can_triton:
        raise RuntimeError(
            f"TRITONSPARSE_BACKEND=triton but Triton cannot run on {device} "
            "(needs CUDA, or TRITON_INTERPRET=1 for CPU tensors)"
        )
    return "triton" if can_triton else "torch"


def autotune(configs, key, prune_configs_by=None, **kwargs):
    """``triton.autotune`` that keeps a single config under the interpreter.

    The interpreter cannot benchmark (there is no driver), so autotuning more than one
    config fails there; the first config is the one the interpreter runs.
    """
    if interpreting():
        configs = configs[:1]
        prune_configs_by = None
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_configs_by, **kwargs)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def batch_bucket(batch: int) -> int:
    """Autotune key for the batch size: powers of two up to 4096, so a new batch size
    within a bucket reuses the tuned config instead of benchmarking again."""
    return min(next_power_of_2(batch), 4096)


def size_bucket(v: int) -> int:
    """Autotune key for a size that dynamic sparse training changes (rows ``n``, fan-in ``K``):
    the next power of two, so an SRigL update that ablates a neuron or raises K by one
    reuses the tuned config. Configs must be correct for any size in their bucket."""
    return next_power_of_2(max(int(v), 1))


def launch_device(t: torch.Tensor):
    """Context that makes ``t``'s CUDA device the current one for a kernel launch (Triton
    launches, and the autotuner benchmarks, on the current device, not the tensors');
    a no-op for CPU tensors (the interpreter)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cuda_matmul_tf32(enabled: bool, device: torch.device | None = None):
    """Within the context, fp32 matmuls on CUDA use TF32 exactly when ``enabled`` (restored
    on exit); a no-op when ``device`` is given and is not a CUDA device."""
    if device is not None and device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved

"""Argument checks shared by the public ops: one place, messages that name the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int16, torch.int32)


def check_tensor(name: str, t, dtypes=None, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_same_device(**tensors):
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; move them to one device")


_PLAIN = (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer)


def is_symbolic(t: torch.Tensor) -> bool:
    """True for meta and fake tensors (and while ``torch.compile`` traces): tensors
    without values, whose checks are left to the run with real data."""
    if torch.compiler.is_compiling() or t.is_meta:
        return True
    if type(t) in _PLAIN:  # the common case, without is_fake's few microseconds
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def check_indices_in_range(name: str, indices: torch.Tensor, in_features: int) -> None:
    """Raise ``ValueError`` naming ``name`` when an index lies outside [0, in_features).
    One pass over the indices (a host sync on CUDA); no-op for meta/fake tensors."""
    if indices.numel() == 0 or is_symbolic(indices):
        return
    ext = torch.aminmax(indices)
    lo, hi = int(ext.min), int(ext.max)
    if lo < 0 or hi >= in_features:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds {bad}, out of range for in_features={in_features} "
                         f"(x's last dimension; valid: 0..{in_features - 1})")


def check_in_features(x, in_features: int):
    """A layer's input must end in its in_features."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x has shape {tuple(x.shape)} but the weight has in_features={in_features}; x must be (..., {in_features})")

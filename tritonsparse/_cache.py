"""Per-tensor memo: results derived from a tensor (its index range, its transpose),
kept while the tensor is alive and unmodified (same storage, same version counter)."""
from __future__ import annotations

import weakref

_store: dict[tuple[int, str], tuple] = {}


def cached(tensor, name: str, compute):
    key = (id(tensor), name)
    stamp = (tensor.data_ptr(), tensor._version, tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
    hit = _store.get(key)
    if hit is not None:
        ref, old_stamp, value = hit
        if ref() is tensor and old_stamp == stamp:
            return value
    value = compute()
    _store[key] = (weakref.ref(tensor, lambda _r, k=key: _store.pop(k, None)), stamp, value)
    return value

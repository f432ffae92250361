"""A memo attached to a live object (a tensor): a dict that lives as long as the object
and is dropped with it. What goes in it, and when an entry is stale, is the caller's
business (see :mod:`tritonsparse._structure` and :mod:`tritonsparse.csr`); nothing
here looks at a tensor's storage or version counter."""
from __future__ import annotations

import weakref

_store: dict[int, tuple] = {}


def memo_of(obj) -> dict:
    """The memo dict of ``obj``, created empty on first use and discarded when ``obj``
    is garbage-collected. Entries must not reference ``obj`` (that would keep it alive)."""
    key = id(obj)
    hit = _store.get(key)
    if hit is None or hit[0]() is not obj:
        hit = (weakref.ref(obj, lambda _r, k=key: _store.pop(k, None)), {})
        _store[key] = hit
    return hit[1]

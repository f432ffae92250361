"""Autotune keys that suit dynamic sparse training (issue 8 item 4).

An SRigL update that ablates neurons lowers the active rows n and raises the fan-in K to
keep the density. Keyed on raw (n, K), every such update would start a new autotuning
run (every pruned config benchmarked again); keyed on ``size_bucket`` it reuses the
tuned config. These tests read the key the Triton autotuner would build from the
arguments the launchers actually pass (captured by a stand-in kernel)."""
import math

import pytest
import torch

from tritonsparse._triton import batch_bucket, size_bucket
from tritonsparse.kernels import _configs
from tritonsparse.kernels import condensed_fwd as cf
from tritonsparse.kernels import csr_gather as cg


class _KeyRecorder:
    """Stands in for the autotuned kernel: computes the autotuner's cache key (the values
    of its ``keys`` arguments, as ``triton.runtime.Autotuner.run`` does) for each launch."""

    def __init__(self, tuner):
        self.tuner = tuner
        self.keys = []
        self.pruned = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.tuner.arg_names, args), **kwargs)
            self.keys.append(tuple(named[k] for k in self.tuner.keys))
            prune = _configs.prune_gather_configs(*self._size_args())
            self.pruned.append(tuple(_configs.tile_of(c) for c in prune(_configs.gather_configs(), named)))

        return launch

    def _size_args(self):
        if "k_bucket" in self.tuner.keys:
            return ("n_bucket", "k_bucket", "xT_ptr")
        return ("n_bucket", "len_bucket", "inT_ptr")


def _srigl_run(in_features=768, out_features=3072, density=0.1, updates=200, seed=0):
    """(n, K) after each update of a simulated SRigL run with neuron ablation: a few
    neurons ablated per update (never below 30% of the layer), K raised so n * K stays at
    the layer's budget of nonzeros (capped at in_features)."""
    g = torch.Generator().manual_seed(seed)
    budget = density * in_features * out_features
    n = out_features
    shapes = []
    for _ in range(updates):
        n = max(int(0.3 * out_features), n - int(torch.randint(0, 12, (1,), generator=g)))
        K = min(in_features, math.ceil(budget / n))
        shapes.append((n, K))
    return shapes


@pytest.mark.parametrize("batch", [1, 16, 256])
def test_forward_keys_over_an_srigl_run(monkeypatch, batch):
    rec = _KeyRecorder(cf._condensed_fwd_kernel)
    monkeypatch.setattr(cf, "_condensed_fwd_kernel", rec)
    in_f = 768
    shapes = _srigl_run(in_features=in_f)
    for n, K in shapes:
        xT = torch.empty(in_f, batch, device="meta")
        values = torch.empty(n, K, device="meta")
        indices = torch.empty(n, K, dtype=torch.int16, device="meta")
        cf.condensed_fwd(xT, values, indices, None, torch.empty(batch, n, device="meta"))
    raw = set(shapes)
    assert len(raw) > 50  # the run does change (n, K) at most updates
    assert len(set(rec.keys)) <= 4, sorted(set(rec.keys))
    # the key holds buckets, not raw sizes, and the configs it times depend only on it
    by_key = {}
    for key, pruned in zip(rec.keys, rec.pruned):
        assert by_key.setdefault(key, pruned) == pruned
    assert {k[:3] for k in rec.keys} <= {(size_bucket(n), size_bucket(K), batch_bucket(batch)) for n, K in shapes}


def test_dx_keys_over_an_srigl_run(monkeypatch):
    """dX gathers over the transposed structure: n_rows = in_features is fixed and the mean
    row length n * K / in_features stays near the budget."""
    rec = _KeyRecorder(cg._csr_gather_kernel)
    monkeypatch.setattr(cg, "_csr_gather_kernel", rec)
    in_f, batch = 768, 256
    for n, K in _srigl_run(in_features=in_f):
        nnz = n * K
        crow = torch.linspace(0, nnz, in_f + 1).round().to(torch.int32)
        cg.csr_gather(torch.empty(n, batch, device="meta"), crow, torch.zeros(nnz, dtype=torch.int32),
                      torch.zeros(nnz), torch.empty(batch, in_f, device="meta"))
    assert len(set(rec.keys)) <= 2, sorted(set(rec.keys))


def test_size_bucket():
    assert [size_bucket(v) for v in (0, 1, 2, 3, 77, 128, 129, 3071)] == [1, 1, 2, 4, 128, 128, 256, 4096]

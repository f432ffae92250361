"""Differential test against the SRigL authors' code (calgaryml/condensed-sparsity),
run only where a checkout of it is named: TRITONSPARSE_SRIGL_REFERENCE=/path/to/repo/src.
Their code is imported, not copied; its heavy imports (wandb, torchvision, omegaconf,
meters) are stubbed, since only the update methods of RigLConstFanScheduler run.

On random layers (uneven gradient rows, some already ablated) both make the same masks,
ablated neurons and fan-in, except where one of the reference's bugs decides the
outcome: it keeps an inactive zero as a "kept" weight, or a surviving neuron holds more
than K of the kept set (then it keeps the lowest columns, the package the largest)."""
import logging
import os
import sys
import types

import pytest
import torch

from tritonsparse.dst.updates import condensed_update, gradient_candidates
from tritonsparse.nn import CondensedLinear

REF = os.environ.get("TRITONSPARSE_SRIGL_REFERENCE")
pytestmark = pytest.mark.skipif(not REF, reason="set TRITONSPARSE_SRIGL_REFERENCE to the authors' src/ folder")


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _import_reference():
    for name in ["wandb", "torchvision", "torchvision.models", "torchvision.models.resnet", "omegaconf",
                 "rigl_torch.utils.sparse_init", "rigl_torch.meters", "rigl_torch.meters.layer_meter"]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.models.resnet"].Bottleneck = type("Bottleneck", (), {})
    sys.modules["torchvision.models.resnet"].BasicBlock = type("BasicBlock", (), {})
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchvision.models"].resnet = sys.modules["torchvision.models.resnet"]
    sys.modules["omegaconf"].DictConfig = dict
    sys.modules["rigl_torch.utils.sparse_init"].sparse_init = None
    sys.modules["rigl_torch.meters.layer_meter"].LayerMeter = None
    sys.path.insert(0, REF)
    from rigl_torch.rigl_constant_fan import RigLConstFanScheduler
    from rigl_torch.utils.rigl_utils import get_fan_in_after_ablation
    return RigLConstFanScheduler, get_fan_in_after_ablation


def test_same_update_as_the_authors_code():
    RigLConstFanScheduler, get_fan_in_after_ablation = _import_reference()
    logging.getLogger("ref").setLevel(logging.ERROR)

    def reference(w, mask, G, budget, alpha, gamma):
        s = RigLConstFanScheduler.__new__(RigLConstFanScheduler)
        s.dynamic_ablation, s.min_salient_weights_per_neuron = True, gamma
        s.use_sparse_const_fan_in_for_ablation, s.static_ablation = True, False
        s._logger, s._min_sal_per_layer, s.static_ablated_filters = logging.getLogger("ref"), [], [0]
        sparsity = 1 - (budget + 0.5) / w.numel()
        assert int(w.numel() * (1 - sparsity)) == budget
        score_drop, score_grow = w.abs(), G.abs()
        n_ones = int(mask.sum())
        n_prune = int(n_ones * alpha)
        n_keep = n_ones - n_prune
        abl = s._get_neurons_to_ablate(score_drop=score_drop, score_grow=score_grow, n_keep=n_keep, n_prune=n_prune,
                                       sparsity=sparsity, mask=mask, weight=w, n_ones=n_ones, mod_name="x")
        k = get_fan_in_after_ablation(w, len(abl), sparsity)
        drop = s._get_drop_mask(score_drop, n_keep, abl, k)
        grow = s._get_grow_mask(score_grow, drop, k, abl)
        return drop | grow, sorted(abl), k, drop, mask

    stats = {"same": 0, "differ": 0, "ref_bug_zero_kept": 0, "ref_bug_overfull_row": 0}  # layers
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        out_f, in_f = int(torch.randint(4, 24, (1,), generator=g)), int(torch.randint(6, 40, (1,), generator=g))
        k0 = int(torch.randint(1, max(2, in_f // 3), (1,), generator=g))
        budget = out_f * k0 + int(torch.randint(0, out_f, (1,), generator=g))
        n_act = out_f if torch.rand(1, generator=g) < 0.5 else \
            int(torch.randint(budget // in_f + 1, out_f + 1, (1,), generator=g))  # already ablated
        n_act = max(n_act, -(-budget // in_f))
        act = torch.randperm(out_f, generator=g)[:n_act].sort().values
        k = min(in_f, budget // n_act)
        cols = torch.stack([torch.randperm(in_f, generator=g)[:k].sort().values for _ in range(n_act)])
        vals = torch.randn(n_act, k, generator=g)
        G = torch.randn(out_f, in_f, generator=g) * torch.rand(out_f, 1, generator=g).pow(3)  # uneven rows
        alpha = float(torch.rand(1, generator=g)) * 0.5
        gamma = [0.3, 0.5, 0.9][trial % 3]
        layer = CondensedLinear(in_f, out_f, budget // out_f, bias=False, capacity=budget)
        layer.set_pattern(vals, cols, act)
        w = layer.to_dense_weight().detach().clone()
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
        mask[act[:, None], cols] = True
        ref_mask, ref_abl, ref_k, drop, _ = reference(w.clone(), mask.clone(), G.clone(), budget, alpha, gamma)
        condensed_update(layer, None, alpha, gradient_candidates(torch.eye(in_f), G.t().contiguous()), gamma)
        pk_mask = torch.zeros(out_f, in_f, dtype=torch.bool)
        pk_mask[layer.active_rows[:, None], layer.weight_indices.long()] = True
        pk_abl = sorted(set(range(out_f)) - set(layer.active_rows.tolist()))
        # rows where a reference bug decides: an inactive zero kept, or more than K of
        # the top n_keep magnitudes (after ablation) in one row
        zero_kept = (drop & ~mask).any(1)
        alive = torch.ones(out_f, dtype=torch.bool)
        alive[ref_abl] = False
        n_keep = int(mask.sum()) - int(int(mask.sum()) * alpha)
        top = torch.zeros(out_f * in_f, dtype=torch.bool)
        top[torch.where(alive[:, None] & mask, w.abs(), -1.0).flatten().topk(n_keep).indices] = True
        buggy = zero_kept | (top.view(out_f, in_f).sum(1) > ref_k)
        assert ref_abl == pk_abl and ref_k == layer.fan_in, (trial, ref_abl, pk_abl, ref_k, layer.fan_in)
        same_rows = (ref_mask == pk_mask).all(1)
        assert same_rows[~buggy].all(), (trial, (~same_rows & ~buggy).nonzero().flatten().tolist())
        stats["same" if bool(same_rows.all()) else "differ"] += 1
        stats["ref_bug_zero_kept"] += int(zero_kept.any())
        stats["ref_bug_overfull_row"] += int(buggy.any() and not zero_kept.any())
    # measured: 165 of 200 layers identical in every row; the 35 others differ only in rows
    # where a reference bug decides (10 layers with a kept inactive zero, 26 with a full row)
    assert stats["same"] >= 120, stats

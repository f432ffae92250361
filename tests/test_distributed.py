"""Dynamic sparsity under DDP: real 2-process gloo jobs on the CPU (torch.multiprocessing).

Every job runs with ``TRITONSPARSE_DDP_CHECK=1``: after each mask update the ranks
compare a hash of every layer's pattern and values, of the step and of the RNG state.
The workers use the CPU torch path (``TRITONSPARSE_BACKEND=torch``): these tests are
about what moves between ranks, the kernels are tested elsewhere.
"""
import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tritonsparse.dst import DynamicSparsity, MaskedLinear, sparsify
from tritonsparse.dst import distributed as tsd

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2
IN, HID, OUT = 24, 20, 5


def _env():
    os.environ["TRITONSPARSE_BACKEND"] = "torch"
    os.environ["TRITONSPARSE_DDP_CHECK"] = "1"
    torch.set_num_threads(1)


def _entry(rank, world, init_file, fn, out_dir, args):
    _env()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears the group down while another still reads from it
    finally:
        dist.destroy_process_group()


def run_job(fn, *args, world=WORLD):
    """Run ``fn(rank, world, *args)`` on ``world`` gloo processes; return their results."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_entry, args=(world, init_file, fn, tmp, args), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _model(method, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, HID), nn.ReLU(), nn.Linear(HID, OUT))
    return sparsify(model, 0.7, method=method, distribution="uniform", seed=seed)


def _batch(step, rank, n=6):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(n, IN, generator=g), torch.randint(0, OUT, (n,), generator=g)


def method_of(m):
    return "masked" if isinstance(m, MaskedLinear) else "condensed"


def _snapshot(model, opt, dst):
    layers = {}
    for name, m in dst.layers.items():
        if method_of(m) == "masked":
            layers[name] = {"active": m.mask.any(1).nonzero().flatten(), "indices": m.mask.nonzero(),
                            "values": m.weight.detach().clone(),
                            "state": {k: v.clone() for k, v in opt.state[m.weight].items() if torch.is_tensor(v)}}
            continue
        layers[name] = {"active": m.active_rows.clone(), "indices": m.weight_indices.long().clone(),
                        "values": m.weight_values.detach().clone(),
                        "state": {k: v.clone() for k, v in opt.state[m.values].items() if torch.is_tensor(v)}}
    return {"layers": layers, "dst": dst.state_dict(), "hash": dst.check_consistent()}


# -- bit-identical patterns after SRigL / SET updates with ablation ---------------------
def _patterns_worker(rank, world, method):
    model = _model(method, seed=rank)  # ranks start from different patterns: the setup must align them
    ddp = tsd.wrap_ddp(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.9)
    dst = DynamicSparsity(ddp, opt, method=method, total_steps=16, delta_t=2, alpha=0.5, t_end=0.9,
                          gamma_sal=0.6, seed=rank)  # seeds differ too: SET's RNG must be rank 0's
    infos = []
    for step in range(12):
        x, y = _batch(step, rank)
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        opt.zero_grad()
        dst.step()
        if dst.last_update:
            infos.append(dict(dst.last_update))
            dst.last_update = {}
    return {"snap": _snapshot(model, opt, dst), "infos": infos}


METHODS = ("srigl", "set", "rigl")
COMMS = ("gather", "reduce", "auto")


def _all_worker(rank, world):
    """Every scenario of this file in one 2-process job (process start-up dominates)."""
    return {"patterns": {m: _patterns_worker(rank, world, m) for m in METHODS},
            "global": _global_worker(rank, world, COMMS),
            "nonfinite": {c: _nonfinite_worker(rank, world, c) for c in ("gather", "reduce")},
            "accumulate": {c: _accumulate_worker(rank, world, c) for c in ("gather", "reduce")},
            "salient": _salient_worker(rank, world),
            "released": _release_worker(rank, world)}


def _release_worker(rank, world):
    """Whether the DDP wrapper dies, by reference counting alone, once its owner drops it
    after building the sparsifier and training a step: the sparsifier must not keep it
    (with its reducer and gloo group) alive until interpreter shutdown."""
    import gc
    import weakref

    model = _model("srigl")
    ddp = tsd.wrap_ddp(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    dst = DynamicSparsity(ddp, opt, method="srigl", total_steps=4, delta_t=1, seed=0)
    x, y = _batch(0, rank)
    nn.functional.cross_entropy(ddp(x), y).backward()
    opt.step()
    dst.step()
    ref = weakref.ref(ddp)
    gc.disable()
    try:
        del ddp
        freed = ref() is None
    finally:
        gc.enable()
    return {"freed": freed, "dst_alive": dst.step_count}


@pytest.fixture(scope="module")
def job():
    old = os.environ.get("TRITONSPARSE_BACKEND")
    os.environ["TRITONSPARSE_BACKEND"] = "torch"  # workers inherit it; the single-process reference uses it
    try:
        yield run_job(_all_worker)
    finally:
        if old is None:
            os.environ.pop("TRITONSPARSE_BACKEND", None)
        else:
            os.environ["TRITONSPARSE_BACKEND"] = old


@pytest.mark.parametrize("method", METHODS)
def test_patterns_identical_across_ranks(job, method):
    r0, r1 = (r["patterns"][method] for r in job)
    assert r0["snap"]["hash"] == r1["snap"]["hash"]
    for name, a in r0["snap"]["layers"].items():
        b = r1["snap"]["layers"][name]
        assert torch.equal(a["active"], b["active"]) and torch.equal(a["indices"], b["indices"]), name
        assert torch.equal(a["values"], b["values"]), name
        assert a["state"].keys() == b["state"].keys()
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k]), (name, k)
    s0, s1 = r0["snap"]["dst"], r1["snap"]["dst"]
    assert s0["step"] == s1["step"] == 12 and torch.equal(s0["rng_state"], s1["rng_state"])
    assert len(r0["infos"]) == 6 and r0["infos"] == r1["infos"]
    assert sum(i["grown"] for info in r0["infos"] for i in info.values()) > 0
    if method == "srigl":  # ablation happened, so K and the active rows changed
        assert any(i["ablated"] > 0 for info in r0["infos"] for i in info.values())


# -- regrowth from the global gradient: 2 ranks == 1 process on the concatenated batch --
def _one_update(model, opt, dst, batches):
    """One step on the mean over ``batches`` of each batch's mean loss (DDP's objective
    when every rank holds one of them), then the mask update."""
    sum(nn.functional.cross_entropy(model(x), y) for x, y in batches).div(len(batches)).backward()
    opt.step()
    opt.zero_grad()
    dst.step()


def _dst(model, opt):
    return DynamicSparsity(model, opt, method="srigl", total_steps=10, delta_t=1, alpha=0.5, gamma_sal=0.6)


def _global_worker(rank, world, comms):
    out = {}
    for comm in comms:
        model = _model("srigl")
        ddp = tsd.wrap_ddp(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        dst = _dst(ddp, opt)
        dst.distributed.comm = comm
        _one_update(ddp, opt, dst, [_uneven_batch(rank)])
        out[comm] = {"snap": _snapshot(model, opt, dst), "paths": dst.distributed.last_paths}
    return out


def _uneven_batch(rank):
    return _batch(0, rank, n=7 - 3 * rank)  # 7 and 4 rows: the gather pads and trims


def _single_process():
    model = _model("srigl")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = _dst(model, opt)
    _one_update(model, opt, dst, [_uneven_batch(r) for r in range(WORLD)])  # both ranks' batches, one process
    return _snapshot(model, opt, dst)


def test_global_regrowth_equals_single_process_on_both_paths(job):
    """One SRigL update (with ablation) on 2 ranks, each with its own batch (of unequal
    sizes), gives the pattern of one process fed both batches (DDP's objective: the
    mean of the ranks' mean losses), whichever exchange is used."""
    ref = _single_process()
    assert any(a["active"].numel() < HID for a in ref["layers"].values())  # ablation took part
    ranks = [r["global"] for r in job]
    for comm in COMMS:
        want = comm if comm != "auto" else tsd.choose_path(7 + 4, HID, HID)
        assert set(ranks[0][comm]["paths"].values()) == {want}
        for name, a in ref["layers"].items():
            for r in ranks:
                b = r[comm]["snap"]["layers"][name]
                # the same regrowth decision; values differ from the single process only by
                # the order DDP sums the ranks' gradients in (no ties at these random data)
                assert torch.equal(a["active"], b["active"]) and torch.equal(a["indices"], b["indices"]), (comm, name)
                torch.testing.assert_close(a["values"], b["values"], rtol=1e-5, atol=1e-6)
    for name in ref["layers"]:  # rank-identical, and the two exchanges agree bit for bit
        assert torch.equal(ranks[0]["gather"]["snap"]["layers"][name]["values"],
                           ranks[1]["reduce"]["snap"]["layers"][name]["values"])


# -- the single-process rules under DDP: NaN skips, accumulation, the exact salient set ----
def _nonfinite_worker(rank, world, comm):
    """Rank 1 alone captures a NaN output gradient in the first layer: every rank skips
    that layer's update (same counter, same warning), the other layers update."""
    import warnings

    model = _model("srigl")
    ddp = tsd.wrap_ddp(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    dst = _dst(ddp, opt)
    dst.distributed.comm = comm
    first = next(iter(dst.layers))
    x, y = _batch(0, rank)
    nn.functional.cross_entropy(ddp(x), y).backward()
    opt.step()
    opt.zero_grad()
    if rank == 1:
        cap = dst._captures[first]
        cap.pairs[0] = (cap.pairs[0][0], torch.full_like(cap.pairs[0][1], float("nan")))
    before = dst.layers[first].weight_indices.clone(), dst.layers[first].active_rows.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dst.step()
    after = dst.layers[first].weight_indices, dst.layers[first].active_rows
    return {"skipped": dst.skipped_updates, "last_skipped": list(dst.last_skipped),
            "updated": sorted(dst.last_update), "kept": all(torch.equal(a, b) for a, b in zip(before, after)),
            "warned": any("NaN/inf" in str(w.message) for w in caught), "state": dst.state_dict(),
            "hash": dst.check_consistent(), "first": first}


def _accumulate_worker(rank, world, comm):
    """grad_accumulation_n=2: the update at step 2 ranks the gradient summed over both
    ranks and both steps; a resume from the middle of the window (state_dict saved after
    step 1, identical on both ranks) gives the same masks."""
    def make():
        model = _model("srigl")
        ddp = tsd.wrap_ddp(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        dst = DynamicSparsity(ddp, opt, method="srigl", total_steps=10, delta_t=2, alpha=0.5, gamma_sal=0.6,
                              grad_accumulation_n=2)
        dst.distributed.comm = comm
        return model, ddp, opt, dst

    model, ddp, opt, dst = make()
    _one_update(ddp, opt, dst, [_batch(1, rank)])
    mid = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "dst": dst.state_dict()})
    _one_update(ddp, opt, dst, [_batch(2, rank)])
    model2, ddp2, opt2, dst2 = make()  # a fresh job resumed from the middle of the window
    model2.load_state_dict(mid["model"])
    opt2.load_state_dict(mid["opt"])
    dst2.load_state_dict(mid["dst"])
    _one_update(ddp2, opt2, dst2, [_batch(2, rank)])
    return {"snap": _snapshot(model, opt, dst), "resumed": _snapshot(model2, opt2, dst2), "mid": mid["dst"],
            "updated": sorted(dst.last_update)}


def _salient_worker(rank, world):
    """The exact layer-wide salient set from the reduce exchange, on the adversarial cases
    of test_dst_rules (a row hoarding the top, ties, zero rows): each rank holds part of
    the gradient; rank 0 asks for more candidates of the rows that need them."""
    from test_dst_rules import _cases

    from tritonsparse.dst.updates import salient_gradient_positions

    out = {}
    for case, (G, n) in _cases().items():
        out_f, in_f = G.shape
        other = torch.randint(-4, 5, G.shape, generator=torch.Generator().manual_seed(7)).float()
        part = other if rank == 1 else 2 * G - other  # (1/2)(part_0 + part_1) = G, exactly
        x, g = torch.eye(in_f), part.t().contiguous()
        if rank != 0:
            tsd._serve_reduce(x, g, out_f, in_f, world, False)
            continue
        cands = tsd._reduce_candidates(x, g, out_f, in_f, world, False)
        rows_asked = []

        def counted(k, exclude, rows=None, cands=cands, rows_asked=rows_asked):
            rows_asked.append(rows is not None)
            return cands(k, exclude, rows)

        keys = salient_gradient_positions(counted, out_f, in_f, n)
        tsd._end_reduce(x.device)
        out[case] = {"keys": keys, "grew": any(rows_asked)}
    return out


def test_nonfinite_capture_on_one_rank_skips_on_every_rank(job):
    for comm in ("gather", "reduce"):
        r0, r1 = (r["nonfinite"][comm] for r in job)
        for r in (r0, r1):
            assert r["skipped"] == 1 and r["last_skipped"] == [r["first"]] and r["kept"] and r["warned"], comm
            assert r["first"] not in r["updated"] and r["updated"], comm
        assert r0["hash"] == r1["hash"] and r0["updated"] == r1["updated"]
        assert r0["state"]["skipped_updates"] == r1["state"]["skipped_updates"] == 1


def _acc_single():
    model = _model("srigl")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparsity(model, opt, method="srigl", total_steps=10, delta_t=2, alpha=0.5, gamma_sal=0.6,
                          grad_accumulation_n=2)
    for step in (1, 2):
        _one_update(model, opt, dst, [_batch(step, r) for r in range(WORLD)])
    return _snapshot(model, opt, dst)


def test_grad_accumulation_under_ddp_equals_single_process_and_resumes_mid_window(job):
    ref = _acc_single()
    for comm in ("gather", "reduce"):
        r0, r1 = (r["accumulate"][comm] for r in job)
        assert r0["updated"] and r0["updated"] == r1["updated"]
        mid0, mid1 = r0["mid"], r1["mid"]  # the window's captures: every rank's, on every rank
        assert len(mid0["captures_by_rank"]) == WORLD and all(mid0["captures_by_rank"])
        for c0, c1 in zip(mid0["captures_by_rank"], mid1["captures_by_rank"]):
            for name in c0:
                for (x0, g0), (x1, g1) in zip(c0[name]["pairs"], c1[name]["pairs"]):
                    assert torch.equal(x0, x1) and torch.equal(g0, g1)
        assert not torch.equal(mid0["captures_by_rank"][0]["0"]["pairs"][0][0],
                               mid0["captures_by_rank"][1]["0"]["pairs"][0][0])
        for name, a in ref["layers"].items():
            for r in (r0, r1):
                for snap in (r["snap"], r["resumed"]):
                    b = snap["layers"][name]
                    assert torch.equal(a["active"], b["active"]) and torch.equal(a["indices"], b["indices"]), (comm, name)
                    torch.testing.assert_close(a["values"], b["values"], rtol=1e-5, atol=1e-6)
        assert r0["snap"]["hash"] == r1["snap"]["hash"] == r0["resumed"]["hash"]


def test_reduce_path_salient_set_is_exact_on_adversarial_cases(job):
    from test_dst_rules import _cases, _dense_salient

    got = job[0]["salient"]
    for case, (G, n) in _cases().items():
        assert torch.equal(got[case]["keys"], _dense_salient(G, n)), case
    assert got["hoarding-row"]["grew"]  # the reduce exchange served a request for more of some rows


def test_sparsifier_does_not_keep_the_ddp_wrapper_alive(job):
    assert all(r["released"]["freed"] and r["released"]["dst_alive"] == 1 for r in job)


def test_state_with_window_captures_refuses_another_world_size():
    model = _model("srigl")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dst = DynamicSparsity(model, opt, method="srigl", total_steps=10, delta_t=2, grad_accumulation_n=2)
    state = dst.state_dict()
    state["captures_by_rank"] = [{"0": {"pairs": [(torch.zeros(1, IN), torch.zeros(1, HID))], "dense_grad": None}}] * 2
    with pytest.raises(ValueError, match="made by 2 processes"):
        dst.load_state_dict(state)


def test_choose_path_rule():
    assert tsd.choose_path(8, 100, 100) == "gather"  # 8*200 < 10000
    assert tsd.choose_path(50, 100, 100) == "reduce"  # 50*200 == 10000: not cheaper
    assert tsd.choose_path(0, 1, 1) == "gather"


# -- unsupported parallelism and a DDP that would broadcast the pattern buffers -------------
def test_clear_errors_for_unsupported_setups():
    """A DDP wrapper that would broadcast the int16 indices is refused with the fix in
    the message; so are a DTensor parameter (tensor parallelism), FSDP2, a ZeRO
    optimizer and prepare_ddp on an already wrapped model. One gloo rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.distributed.tensor import Replicate, distribute_tensor

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=0, world_size=1)
        try:
            model = _model("srigl")
            # init_sync=False: the constructor's own broadcast of the int16 indices would already fail on gloo
            ddp = nn.parallel.DistributedDataParallel(model, init_sync=False)
            with pytest.raises(ValueError, match="prepare_ddp"):
                DynamicSparsity(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), method="srigl")
            with pytest.raises(ValueError, match="before wrapping"):
                tsd.prepare_ddp(ddp)
            ok = nn.parallel.DistributedDataParallel(_model("srigl"), broadcast_buffers=False)
            DynamicSparsity(ok, torch.optim.SGD(ok.parameters(), lr=0.1), method="srigl")  # accepted
            model = tsd.prepare_ddp(_model("srigl"))
            zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.1)
            with pytest.raises(NotImplementedError, match="optimizer: ZeroRedundancyOptimizer"):
                DynamicSparsity(model, zero, method="srigl")
            model = _model("srigl")
            model.append(nn.Linear(OUT, OUT))
            mesh = init_device_mesh("cpu", (1,))
            model[5].weight = nn.Parameter(distribute_tensor(model[5].weight.detach(), mesh, [Replicate()]))
            with pytest.raises(NotImplementedError, match="'5.weight' is a DTensor"):
                DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), method="srigl")
            model = _model("srigl")
            fully_shard(model, mesh=mesh)  # FSDP2
            with pytest.raises(NotImplementedError, match="the model is FSDP-sharded"):
                DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), method="srigl")
        finally:
            dist.destroy_process_group()


def test_row_topk_follows_the_gradient_topk_contract():
    """The DDP reduce path ranks the all-reduced gradient rows with gradient_topk's own
    selection (``_select_torch``): ties to the smaller column, excluded columns and NaN
    scores never selected, short rows padded (-inf, -1)."""
    from tritonsparse.kernels.gradient_topk import _select_torch

    nan = float("nan")
    scores = torch.tensor([[0.5, nan, 2.0, -2.0, 0.25], [nan, nan, nan, 1.0, 3.0]])  # signed gradient entries
    exclude = torch.tensor([[0, -1], [4, -1]], dtype=torch.int32)
    top, idx = _select_torch(scores.clone(), 3, exclude)
    assert idx.tolist() == [[2, 3, 4], [3, -1, -1]]
    assert top[0].tolist() == [2.0, 2.0, 0.25] and top[1, 0] == 1.0 and torch.isinf(top[1, 1:]).all()

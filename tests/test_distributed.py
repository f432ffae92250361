"""Dynamic sparsity under DDP: real 2-process gloo jobs on the CPU (torch.multiprocessing).

Every job runs with ``TRITONSPARSE_DDP_CHECK=1``: after each mask update the ranks
compare a hash of every layer's pattern and values, of the step and of the RNG state.
The workers use the CPU torch path (``TRITONSPARSE_BACKEND=torch``): these tests are
about what moves between ranks, the kernels are tested elsewhere.
"""
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
            "global": _global_worker(rank, world, COMMS)}


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

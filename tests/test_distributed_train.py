"""The trainer data-parallel on 2 gloo processes (what ``torchrun`` runs): it matches
one process on the same global batch, writes only on rank 0, and resumes exactly."""
import contextlib
import json
import types

import pytest
import torch
from test_distributed import run_job

from tritonsparse.train import DivergenceError, TrainConfig, train
from tritonsparse.train import distributed as tdist
from tritonsparse.train._io import load_checkpoint

TIMING = ("step_time_ms", "epoch_time_s", "peak_mem_mb", "world_size")


def _cfg(out, **kw):
    base = dict(model="mlp", dataset="synthetic", hidden=(24, 24), epochs=2, batch_size=64, delta_t=3,
                sparsity=0.75, gamma_sal=0.9, device="cpu", out=str(out), plots=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _result(res):
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in res.history]
    return {"history": history, "model": res.model.state_dict(), "hash": res.dst.check_consistent(),
            "files": sorted(p.name for p in res.out.iterdir()) if res.out.is_dir() else []}


def _worker(rank, world, root, single_dir):
    out = {}
    try:  # a 1-process checkpoint cannot be resumed exactly by 2 processes
        train(_cfg(single_dir, resume=True))
    except ValueError as e:
        out["mismatch"] = str(e)
    out["full"] = _result(train(_cfg(f"{root}/full")))
    train(_cfg(f"{root}/resumed", stop_after_epochs=1))
    out["resumed"] = _result(train(_cfg(f"{root}/resumed", resume=True)))
    try:  # the folder holds a run: every rank refuses it, none deletes anything
        train(_cfg(f"{root}/full"))
    except FileExistsError as e:
        out["exists"] = str(e)
    # a NaN loss on rank 1 alone, at its 2nd training step: every rank stops there (none hangs in
    # DDP's backward), or with skip_nonfinite every rank skips that step
    with _nan_loss_on_rank_1(rank, at_call=2):
        try:
            train(_cfg(f"{root}/diverged", epochs=1))
        except DivergenceError as e:
            out["diverged"] = str(e)
    with _nan_loss_on_rank_1(rank, at_call=2):
        out["skipped"] = _result(train(_cfg(f"{root}/skipped", epochs=1, skip_nonfinite=True)))
    return out


@contextlib.contextmanager
def _nan_loss_on_rank_1(rank, at_call):
    from torch.nn import functional as F

    from tritonsparse.train import trainer

    calls = [0]

    def cross_entropy(*args, **kw):
        calls[0] += 1
        loss = F.cross_entropy(*args, **kw)
        return loss * float("nan") if rank == 1 and calls[0] == at_call else loss

    trainer.F = types.SimpleNamespace(cross_entropy=cross_entropy)
    try:
        yield
    finally:
        trainer.F = F


def test_two_ranks_match_one_process_and_resume_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    single = _result(train(_cfg(tmp_path / "single")))
    r0, r1 = run_job(_worker, str(tmp_path / "ddp"), str(tmp_path / "single"))
    assert "world size" in r0["mismatch"] and "world size" in r1["mismatch"]
    layers = r0["full"]["history"][-1]["layers"]
    assert any(v["active_neurons"] < v["out_features"] for v in layers.values())  # SRigL ablated during the run
    # the ranks agree bit for bit (the hash covers patterns, values, step and RNG)
    for run in ("full", "resumed"):
        assert r0[run]["hash"] == r1[run]["hash"]
        assert all(torch.equal(r0[run]["model"][k], r1[run]["model"][k]) for k in r0[run]["model"])
    # resumed == uninterrupted, exactly
    assert r0["resumed"]["history"] == r0["full"]["history"]
    assert all(torch.equal(r0["full"]["model"][k], r0["resumed"]["model"][k]) for k in r0["full"]["model"])
    # only rank 0 wrote: one checkpoint, metrics from the reduced values
    saved = json.loads((tmp_path / "ddp" / "full" / "metrics.json").read_text())
    assert [h["world_size"] for h in saved] == [2, 2]
    ckpt = load_checkpoint(tmp_path / "ddp" / "full")  # weights_only=True
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert ckpt["dst"]["world_size"] == 2 and ckpt["dst"]["skipped_updates"] == 0
    assert "already holds a run" in r0["exists"] and r0["exists"] == r1["exists"]
    assert (tmp_path / "ddp" / "full" / "checkpoint.pt").is_file()
    assert "the loss is not finite on another rank at step 2 (" in r0["diverged"]
    assert "the loss is nan at step 2 (" in r1["diverged"]
    s0, s1 = r0["skipped"], r1["skipped"]
    assert s0["history"][-1]["skipped_steps"] == s1["history"][-1]["skipped_steps"] == 1
    assert s0["hash"] == s1["hash"] and all(torch.equal(s0["model"][k], s1["model"][k]) for k in s0["model"])
    # one process on the same global batches: the same masks, values up to summation order
    for a, b in zip(single["history"], r0["full"]["history"]):
        assert a["layers"] == b["layers"]  # fan-in, active neurons per layer after each epoch
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1 / 256)
    for k, v in single["model"].items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, r0["full"]["model"][k], rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(v, r0["full"]["model"][k]), k


@pytest.mark.parametrize("n,world,batch", [(103, 2, 10), (64, 4, 16), (50, 3, 9)])
def test_rank_shares_make_up_the_single_process_batches(n, world, batch):
    """Rank r's i-th slice of batch/world examples, over all ranks, is exactly the i-th
    batch of the single-process permutation (randperm seeded seed * 100003 + epoch)."""
    seed, epoch = 3, 5
    single = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    orders = [tdist.epoch_order(tdist.Context(rank=r, world=world), n, seed, epoch) for r in range(world)]
    per = batch // world
    for i in range(n // batch):
        union = torch.cat([o[i * per:(i + 1) * per] for o in orders])
        assert sorted(union.tolist()) == sorted(single[i * batch:(i + 1) * batch].tolist())


def test_batch_size_must_split_evenly():
    with pytest.raises(ValueError, match="batch_size=10 .* multiple of the world size 3"):
        tdist.check_batch_size(tdist.Context(rank=0, world=3), 10)
    tdist.check_batch_size(tdist.Context(), 10)


def test_torchrun_cli(tmp_path):
    """``torchrun --nproc_per_node 2 -m tritonsparse.train``: gloo on CPU, one JSON
    summary (rank 0's), metrics written once with the world size."""
    import os
    import subprocess
    import sys

    import tritonsparse

    env = dict(os.environ, TRITONSPARSE_BACKEND="torch", OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(tritonsparse.__file__)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "tritonsparse.train", "--dataset", "synthetic", "--hidden", "16,16", "--max-steps", "4", "--batch-size",
           "32", "--delta-t", "2", "--method", "srigl", "--device", "cpu", "--no-progress", "--no-plots",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"test_acc"') == 1  # only rank 0 prints
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert json.loads((out / "metrics.json").read_text())[-1]["world_size"] == 2

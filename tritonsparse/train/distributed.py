"""The trainer under ``torchrun``: process group, data sharding, metric reduction.

``torchrun --nproc_per_node N -m tritonsparse.train ...`` sets ``WORLD_SIZE`` / ``RANK``
/ ``LOCAL_RANK``; :func:`init` then joins the group (NCCL on CUDA, gloo on CPU). The
global batch is ``--batch-size``: each rank takes ``batch_size / world`` examples of
every global batch, so the optimizer steps, schedule and DST updates are those of a
single process (up to the order DDP sums gradients in).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    """This process's place in the job: ``rank``, ``world``, ``local_rank``, and
    whether :func:`init` created the process group (then :func:`close` destroys it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Context:
    """Join the ``torchrun`` process group if the environment names one (``WORLD_SIZE``
    > 1) and none is initialised yet; reuse an initialised group. ``device`` (the
    ``--device`` flag) picks the backend: NCCL for CUDA, gloo for CPU."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, True)


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """One GPU per rank: ``cuda:LOCAL_RANK`` when ``device`` is CUDA without an index."""
    if ctx.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def check_batch_size(ctx: Context, batch_size: int):
    if ctx.active and batch_size % ctx.world:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be a multiple of the world size "
                         f"{ctx.world} under torchrun")


def epoch_order(ctx: Context, n: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's examples of an epoch, from a ``DistributedSampler`` whose permutation
    is the single-process one (``randperm`` seeded ``seed * 100003 + epoch``): rank r
    gets positions r, r + world, ..., so its i-th slice of ``batch_size / world``
    examples and the other ranks' i-th slices make up the single process's i-th batch."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed * 100003, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


def sum_across(ctx: Context, *values: float, op: str = "sum") -> list:
    """``values`` summed (or ``op="max"``) over the ranks (unchanged in one process)."""
    if not ctx.active:
        return list(values)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(ctx: Context, obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def close(ctx: Context):
    """Wait for every rank, then destroy the process group if :func:`init` made it.
    Collects garbage first: a DDP wrapper caught in a reference cycle would otherwise
    keep its reducer (and the gloo group it holds) alive into interpreter shutdown,
    where gloo can abort the process."""
    if ctx.active:
        gc.collect()
        dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()


def abort(ctx: Context):
    """After a failure: destroy the process group if :func:`init` made it, without the
    barrier of :func:`close` (a rank that failed alone would wait there forever)."""
    if ctx.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()

#!/usr/bin/env python
"""Training-step time and peak memory of ResNet-18 on CIFAR-shaped synthetic data:
dense, masked RigL, SRigL on the condensed layers, each with and without Sparse Wide.

Configurations (sparsity 90% by default, dense stem and head as in the papers; layer
densities uniform by default, which keeps Sparse Wide iso-FLOP, ``--distribution erk``
moves density to the early high-resolution layers and costs more FLOPs):
  dense                 nn.Conv2d / nn.Linear (cuDNN / cuBLAS)
  rigl                  masked dense layers (weight * mask), RigL mask updates
  srigl                 CondensedConv2d / CondensedLinear, SRigL updates (ablation on)
  rigl+wide, srigl+wide the same after Sparse Wide (widths x sqrt(round(1/(1-s))), iso-FLOP)
A step is forward + backward + SGD step + ``DynamicSparsity.step()`` (mask updates every
ΔT steps are part of the measured loop, as in training). Convolutions of the condensed
models run the implicit-im2col kernels on a GPU (forward and dValues; dX still unfolds
the gradient) and the unfold + ``condensed_matmul`` path on a CPU (see CondensedConv2d).

Timing: ``--warmup`` steps, then ``--steps`` timed steps, each bracketed by CUDA events
(GPU) or a synchronised wall clock (CPU, ``--threads`` fixed and recorded); median and
quartiles per step. Peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps
(GPU), process max RSS (CPU).

Output: one tidy row per configuration in ``<out>/train_step_<device>_<date>.csv``;
``--out`` defaults to ``./bench_results`` in the current folder (``--repo-results``: the
checkout's ``benchmarks/results/``, for results meant to be committed).

    python benchmarks/bench_train_step.py                 # GPU: a few hundred steps each
    python benchmarks/bench_train_step.py --quick         # tiny CPU smoke run
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonsparse.dst import DynamicSparsity, sparsify  # noqa: E402
from tritonsparse.ift import count_flops, sparse_ift  # noqa: E402
from tritonsparse.models import ResNet18  # noqa: E402

CONFIGS = {"dense": ("dense", "none"), "rigl": ("rigl", "none"), "srigl": ("srigl", "none"),
           "rigl+wide": ("rigl", "wide"), "srigl+wide": ("srigl", "wide")}


def build(method, ift, sparsity, width, num_classes, device, distribution="uniform"):
    """ResNet-18 prepared for ``method`` (dense or a DST method) and ``ift``."""
    model = ResNet18(num_classes, width=width)
    if method != "dense":
        plan = sparse_ift(model, ift, sparsity)
        model = sparsify(plan.model, sparsity, method, distribution, dense_modules=tuple(plan.dense_layers))
    return model.to(device)


def time_config(name, args, device):
    method, ift = CONFIGS[name]
    torch.manual_seed(0)
    model = build(method, ift, args.sparsity, args.width, 10, device, args.distribution)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    total = args.warmup + args.steps
    dst = None
    if method != "dense":
        dst = DynamicSparsity(model, opt, method=method, total_steps=total, delta_t=args.delta_t)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    flops = count_flops(model, x[:2]).total
    cuda = device.type == "cuda"

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dst is not None:
            dst.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t0))
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    med = statistics.median(times)
    return {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": _triton_version(), "threads": torch.get_num_threads(),
        "model": "resnet18", "width": args.width, "config": name, "method": method, "ift": ift,
        "sparsity": 0.0 if method == "dense" else args.sparsity, "distribution": args.distribution, "batch": args.batch, "image_size": args.image_size,
        "steps": args.steps, "median_ms": med, "q1_ms": q[0], "q3_ms": q[2], "images_per_s": 1000 * args.batch / med,
        "peak_mem_mb": peak, "mem_kind": "cuda_max_allocated" if cuda else "cpu_max_rss",
        "gflops_per_example": flops / 1e9,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:  # pragma: no cover
        return ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma separated, from {', '.join(CONFIGS)}")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--distribution", choices=("uniform", "erk"), default="uniform")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64, help="first-stage width of ResNet-18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (recorded)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run: width 8, batch 8, 16x16, 3 steps")
    p.add_argument("--out", default=None, help="folder of the CSV (default: ./bench_results)")
    p.add_argument("--repo-results", action="store_true", help="write into the checkout's benchmarks/results/")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results") if args.repo_results else "bench_results"
    if args.quick:
        args.width, args.batch, args.image_size, args.steps, args.warmup, args.delta_t = 8, 8, 16, 3, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [c for c in args.configs.split(",") if c]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        p.error(f"--configs: unknown {', '.join(bad)} (choose from {', '.join(CONFIGS)})")
    device = torch.device(args.device)
    if device.type == "cpu" and "TRITON_INTERPRET" in os.environ:
        os.environ.setdefault("TRITONSPARSE_BACKEND", "torch")  # never time the interpreter
    rows = []
    for name in names:
        row = time_config(name, args, device)
        rows.append(row)
        print(f"{name:12s} {row['median_ms']:9.2f} ms/step  {row['images_per_s']:9.0f} img/s  "
              f"peak {row['peak_mem_mb']:8.0f} MB  {row['gflops_per_example']:.3f} GFLOP/img")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = out / f"train_step_{tag}{'_quick' if args.quick else ''}_{_dt.date.today().isoformat()}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()

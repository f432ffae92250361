#!/usr/bin/env python
"""Regrowth-candidate search: the fused ``tritonsparse.gradient_topk`` kernel against the
dense baseline a DST method would otherwise run,
``torch.topk((grad_output.T @ x).abs() with the active positions set to -inf, k)``.

Methods (one CSV row each per point; a method that cannot run records ``skipped: <reason>``):
  fused_triton  tritonsparse.gradient_topk, one Triton kernel (tl.dot tiles merged into a
                running per-row top-k; extra memory O(out * k)); GPU only
  dense_topk    the dense (out, in) gradient in the input dtype, masked at ``exclude``
                (scatter -inf), then torch.topk

Grid: out x in = 4096 x 4096 and 100000 x 768, batch 256, 1024, 4096, fp32 and bf16,
k = 10% of in, and ``exclude`` = the active positions of a 90%-sparse layer (a random
(out, 10% of in) index array, distinct per row).

fp32 runs at ``--precision`` (default tf32) in both methods: the kernel's ``tf32``
argument and torch's ``set_float32_matmul_precision`` ("high" for tf32, "highest" for ieee).

Timing and metadata come from ``benchmarks/sweep.py``: on a GPU ``triton.testing.do_bench``
(median and quartiles); on a CPU a median-of-repeats wall-clock timer at a recorded thread
count, and the Triton kernel is skipped (the interpreter is never timed). Peak memory
(GPU only): ``torch.cuda.max_memory_allocated`` over one call after
``reset_peak_memory_stats``, minus what was allocated before it (the inputs), in MiB.
``score_rel_err`` compares each method's sorted scores with the fp32 reference
(``gradient_topk_reference``), relative to the largest score.

Output: ``<out-dir>/gradient_topk_<device>_<grid>_<date>.csv``; ``--out-dir`` defaults to
``./bench_results`` in the current folder (``--repo-results``: the checkout's
``benchmarks/results/``, for results meant to be committed).

    python benchmarks/bench_gradient_topk.py --quick   # tiny shapes, torch path, seconds on a CPU
    python benchmarks/bench_gradient_topk.py           # the full grid (meant for a GPU)
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (device_info, device_slug, forced_backend, parse_list, parse_shapes,  # noqa: E402
                   time_cpu, time_gpu)

import tritonsparse  # noqa: E402
from tritonsparse import default_index_dtype  # noqa: E402
from tritonsparse.reference import gradient_topk_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["fused_triton", "dense_topk"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FULL = dict(shapes="4096x4096,768x100000", batches="256,1024,4096", dtypes="fp32,bf16")
QUICK = dict(shapes="64x96,128x48", batches="16,64", dtypes="fp32,bf16")
FIELDS = ["device_type", "device_name", "threads", "torch_version", "triton_version", "dtype", "in_features",
          "out_features", "batch", "k", "exclude_k", "precision", "method", "status", "median_ms", "q25_ms", "q75_ms", "reps",
          "peak_mem_mib", "input_mem_mib", "score_rel_err"]
MIB = 1 << 20


def make_inputs(in_f, out_f, batch, dtype, exclude_k, device, seed=0):
    """x (B, in), grad_output (B, out) and the active positions (out, exclude_k) as int64
    and as the library's index dtype (None when ``exclude_k`` is 0)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, in_f, generator=g, device=device).to(dtype)
    gy = torch.randn(batch, out_f, generator=g, device=device).to(dtype)
    if not exclude_k:
        return x, gy, None, None
    ex = torch.rand(out_f, in_f, generator=g, device=device).topk(exclude_k, dim=1).indices
    return x, gy, ex, ex.to(default_index_dtype(in_f))


def dense_topk(x, gy, k, exclude):
    scores = (gy.t() @ x).abs()
    if exclude is not None:
        scores.scatter_(1, exclude, float("-inf"))
    return torch.topk(scores, k, dim=1)


def peak_memory_mib(fn):
    """Extra peak memory of one call, over what is allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak / MIB


def measure(method, x, gy, k, ex64, ex_idx, ref_scores, min_time, precision):
    """Status, timings, peak memory and error of one method at one point."""
    cuda = x.device.type == "cuda"
    if method == "fused_triton":
        if not cuda:
            return {"status": "skipped: no GPU (the Triton interpreter is not timed)"}
        fn, backend = (lambda: tritonsparse.gradient_topk(x, gy, k, ex_idx, tf32=precision == "tf32")), "triton"
    else:
        fn, backend = (lambda: dense_topk(x, gy, k, ex64)), None
    try:
        with forced_backend(backend):
            scores = fn()[0]  # first call: autotuning, and the sanity check
            err = ((scores.float() - ref_scores).abs().max() / ref_scores.abs().max().clamp_min(1e-30)).item()
            del scores
            if cuda:
                med, q25, q75, reps = time_gpu(fn, None)
                peak = f"{peak_memory_mib(fn):.4g}"
            else:
                (med, q25, q75, reps), peak = time_cpu(fn, min_time), ""
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "skipped: out of GPU memory"}
    return {"status": "ok", "median_ms": f"{med:.4g}", "q25_ms": f"{q25:.4g}", "q75_ms": f"{q75:.4g}", "reps": reps,
            "peak_mem_mib": peak, "score_rel_err": f"{err:.2e}"}


def run(shapes, batches, dtypes, methods, device, k_frac, exclude_frac, min_time, info, precision="tf32"):
    rows = []
    points = [(s, d, b) for s in shapes for d in dtypes for b in batches]
    for i, ((in_f, out_f), dname, batch) in enumerate(points, 1):
        k, exclude_k = max(1, round(k_frac * in_f)), round(exclude_frac * in_f)
        if k + exclude_k > in_f:
            raise ValueError(f"k + exclude ({k} + {exclude_k}) exceeds in_features={in_f}")
        x, gy, ex64, ex_idx = make_inputs(in_f, out_f, batch, DTYPES[dname], exclude_k, device)
        inputs = sum(t.numel() * t.element_size() for t in (x, gy, ex64, ex_idx) if t is not None)
        mode = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # the reference in full fp32
        ref_scores = gradient_topk_reference(x, gy, k, ex64)[0]
        torch.set_float32_matmul_precision(mode)
        for method in methods:
            res = measure(method, x, gy, k, ex64, ex_idx, ref_scores, min_time, precision)
            rows.append({**info, "dtype": dname, "in_features": in_f, "out_features": out_f, "batch": batch, "k": k,
                         "exclude_k": exclude_k, "precision": precision if dname == "fp32" else "", "method": method, "input_mem_mib": f"{inputs / MIB:.4g}", **res})
            detail = (f"{res['median_ms']} ms [{res['q25_ms']}, {res['q75_ms']}]"
                      + (f", peak +{res['peak_mem_mib']} MiB" if res["peak_mem_mib"] else "")
                      if res["status"] == "ok" else res["status"])
            print(f"[gradient_topk] {i}/{len(points)} out={out_f} in={in_f} {dname} batch={batch} k={k} "
                  f"{method}: {detail}", file=sys.stderr, flush=True)
        del x, gy, ex64, ex_idx, ref_scores
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"tiny grid, a few seconds on a CPU: {QUICK}")
    ap.add_argument("--shapes", help=f"comma-separated IN x OUT (default {FULL['shapes']}; --quick {QUICK['shapes']})")
    ap.add_argument("--batches", help=f"comma-separated (default {FULL['batches']}; --quick {QUICK['batches']})")
    ap.add_argument("--dtypes", help=f"comma-separated (default {FULL['dtypes']})")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    ap.add_argument("--k-frac", type=float, default=0.1, help="k as a fraction of in_features (default 0.1)")
    ap.add_argument("--exclude-frac", type=float, default=0.1,
                    help="active positions per row as a fraction of in_features; 0: no exclude (default 0.1)")
    ap.add_argument("--precision", choices=["tf32", "ieee"], default="tf32",
                    help="fp32 matmuls in both methods (default tf32, tensor cores)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="CPU: seconds of timed runs per measurement, at least 5 runs (default 0.3; --quick 0.02)")
    ap.add_argument("--out-dir", default=None, help="folder of the CSV (default: ./bench_results)")
    ap.add_argument("--repo-results", action="store_true", help="write into the checkout's benchmarks/results/")
    ap.add_argument("--tag", help="grid name in the output file name (default: quick, full or custom)")
    args = ap.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = str(ROOT / "benchmarks" / "results") if args.repo_results else "bench_results"

    spec = dict(QUICK if args.quick else FULL)
    custom = any(getattr(args, k) is not None for k in spec)
    spec.update({k: getattr(args, k) for k in spec if getattr(args, k) is not None})
    try:
        shapes, batches = parse_shapes(spec["shapes"]), parse_list(spec["batches"], int)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    dtypes, methods = parse_list(spec["dtypes"], str), parse_list(args.methods, str)
    for name, values, allowed in (("dtypes", dtypes, DTYPES), ("methods", methods, METHODS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if any(b < 1 for b in batches) or not 0 < args.k_frac <= 1 or not 0 <= args.exclude_frac < 1:
        ap.error("batches must be >= 1, --k-frac in (0, 1] and --exclude-frac in [0, 1)")

    has_gpu = torch.cuda.is_available()
    if args.device == "cuda" and not has_gpu:
        ap.error("--device cuda but no CUDA GPU is available")
    device = torch.device(("cuda" if has_gpu else "cpu") if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    threads = torch.get_num_threads()
    torch.set_float32_matmul_precision("high" if args.precision == "tf32" else "highest")
    min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.3)

    info = device_info(device, threads, quick=True)
    how = "triton.testing.do_bench" if device.type == "cuda" else (
        f"median of repeats, {threads} threads; the Triton kernel is skipped (no GPU)")
    print(f"[gradient_topk] {info['device_name']}: {how}", file=sys.stderr)
    t0 = time.time()
    try:
        rows = run(shapes, batches, dtypes, methods, device, args.k_frac, args.exclude_frac, min_time, info,
                   args.precision)
    except ValueError as e:
        ap.error(str(e))
    tag = args.tag or ("custom" if custom else "quick" if args.quick else "full")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(args.out_dir) / f"gradient_topk_{device_slug(info)}_{tag}_{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"[gradient_topk] {n_ok} measurements, {len(rows) - n_ok} skipped, {time.time() - t0:.1f} s -> {path}",
          file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The speedup study: sparse layers against a dense ``F.linear``, over sparsity, batch
size, layer shape, dtype, forward and training step.

Methods (one row per measurement in the CSV; a method that cannot run records
``skipped: <reason>`` instead of stopping the sweep):
  dense             torch.nn.functional.linear with the dense weight (cuBLAS / MKL)
  condensed_triton  tritonsparse.condensed_matmul, Triton kernels (GPU only)
  condensed_torch   tritonsparse.condensed_matmul, plain-torch path (torch.sparse inside)
  blocked_torch     tritonsparse.nn.BlockedCondensedLinear: the same weight stored as
                    column-blocked CSR for CPU inference (forward only; made once per point)
  csr_triton        tritonsparse.csr_matmul, Triton row-gather kernel (GPU only)
  torch_csr         torch.sparse.mm with a sparse CSR weight (cuSPARSE / MKL), as is
  structured        a dense F.linear over (1 - sparsity) * out_features rows: what
                    neuron-level structure alone (ablation) gives at equal parameter count
Every sparse method uses the same constant fan-in pattern (K = (1 - sparsity) *
in_features nonzeros in each row); the CSR methods get it as a CSR tensor.

Modes: ``forward`` (no autograd) and ``train`` (forward + dX + dW, + d bias). For the CSR
methods dW is ``torch.sparse.sampled_addmm`` (csr_triton) or torch's own backward.

Timing: on a GPU ``triton.testing.do_bench`` (warm-up, L2 flushed before every run,
median and quartiles of many runs). On a CPU a wall-clock timer: warm-up runs, then
repeats until ``--min-time`` seconds and at least 5 runs, median and quartiles; the
thread count is fixed (``--threads``) and recorded. Without a GPU the Triton methods are
skipped: the interpreter is not a kernel and is never timed. Every row records its
spread, ``iqr_rel`` = (q75 - q25) / median, and ``noisy`` = yes when it exceeds
``--noisy-above`` (default 0.2): such a timing is not to be trusted (a busy machine, too
few threads for the jobs running); the sweep warns about them at the end and the README
table marks them.

Shapes: the ViT-B MLP (768->3072, 3072->768), 4096->4096 and the Llama-3-8B MLP
(4096->14336, 14336->4096; ``--llm``: those at batch 1-16, where a 90% sparse layer with
int16 indices moves ~5x fewer bytes than the dense one). Indices are int16 wherever
in_features <= 32768 (column ``index_dtype``).

GB/s and TFLOP/s use a model of compulsory traffic and useful FLOPs: forward reads the
weight (values + indices for sparse) and x and writes y; the training step does it three
times (forward, dX, dW). Peak bandwidth: a table of known GPUs (spec sheets); on a CPU a
measured large copy.

Output: ``<out-dir>/sweep_<device>_<grid>_<date>.csv`` (tidy, one row per measurement)
and its plots, made from the CSV by :func:`plot_results` (so old results can be
re-plotted: ``--plot-only FILE``). ``--out-dir`` defaults to ``./sweep_results`` in the
current folder, plots go beside the CSV; ``--repo-results`` writes into the checkout's
``benchmarks/results/`` and ``plots/`` instead (results meant to be committed).
``--readme-table FILE`` prints the markdown table at 90% sparsity used in the README.

    python benchmarks/sweep.py --quick          # small grid, under a minute on a CPU
    python benchmarks/sweep.py                  # the full grid (meant for a GPU)
    python benchmarks/sweep.py --llm            # Llama-3-8B MLP shapes at batch 1-16 (GPU)
    python benchmarks/sweep.py --plot-only sweep_results/sweep_....csv
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION is unset")

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["dense", "condensed_triton", "condensed_torch", "blocked_torch", "csr_triton", "torch_csr", "structured"]
TRITON_METHODS = {"condensed_triton", "csr_triton"}
MODES = ["forward", "train"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LLM_SHAPES = "4096x14336,14336x4096"  # Llama-3-8B MLP: up/gate and down projections
FULL = dict(shapes="768x3072,3072x768,4096x4096," + LLM_SHAPES, sparsities="0.5,0.75,0.8,0.9,0.95,0.98,0.99",
            batches="1,8,32,128,256,1024,2048", dtypes="fp32,bf16", modes="forward,train")
# the CPU quick grid leaves the LLM shapes out (their dense weights alone take seconds per call)
QUICK = dict(shapes="768x3072", sparsities="0.5,0.9,0.99", batches="1,16,64", dtypes="fp32,bf16",
             modes="forward,train")
# memory-bound inference, where sparsity pays most: small batch, bf16, int16 indices
LLM = dict(shapes=LLM_SHAPES, sparsities="0.9", batches="1,2,4,8,16", dtypes="bf16,fp32", modes="forward,train")
NOISY_ABOVE = 0.2  # iqr_rel above which a row is marked noisy
# Peak memory bandwidth (GB/s) from spec sheets; the first matching name wins.
PEAK_GBPS = [("H100 PCIe", 2000.0), ("H100", 3350.0), ("H200", 4800.0), ("A100", 2000.0)]
FIELDS = ["device_type", "device_name", "threads", "torch_version", "triton_version", "peak_gbps", "peak_source",
          "dtype", "in_features", "out_features", "batch", "sparsity", "fan_in", "nnz", "index_dtype", "method", "mode",
          "status", "median_ms", "q25_ms", "q75_ms", "iqr_rel", "noisy", "reps", "gbps", "tflops", "pct_peak_bw",
          "max_rel_err"]


class Skip(Exception):
    """A method that cannot run in this configuration; the message says why."""


# -- device --------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def measure_copy_gbps(n_bytes: int = 1 << 28, reps: int = 5) -> float:
    """Achieved bandwidth of a large copy (read + write), median of ``reps``."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / statistics.median(times) / 1e9


def device_info(device: torch.device, threads: int, quick: bool) -> dict:
    import triton

    info = {"device_type": device.type, "threads": threads, "torch_version": torch.__version__,
            "triton_version": triton.__version__}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((gbps for key, gbps in PEAK_GBPS if key.lower() in name.lower()), None)
        info.update(device_name=name, peak_gbps=peak or "", peak_source="spec sheet" if peak else "unknown")
    else:
        info.update(device_name=cpu_name(), peak_gbps=round(measure_copy_gbps(1 << (26 if quick else 28)), 1),
                    peak_source=f"measured copy, {threads} threads")
    return info


def device_slug(info: dict) -> str:
    if info["device_type"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-")


# -- timing --------------------------------------------------------------------------------
def time_cpu(fn, min_time: float, min_reps: int = 5, max_reps: int = 200, warmup: int = 1):
    """(median, q25, q75) in ms and the number of timed runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q[0], q[2], len(times)


def time_gpu(fn, grad_to_none):
    import triton.testing

    med, q25, q75 = triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                            quantiles=[0.5, 0.25, 0.75])
    return med, q25, q75, ""


@contextlib.contextmanager
def forced_backend(name):
    """TRITONSPARSE_BACKEND=name while the block runs (the ops read it at each call)."""
    old = os.environ.get("TRITONSPARSE_BACKEND")
    if name:
        os.environ["TRITONSPARSE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITONSPARSE_BACKEND", None)
        else:
            os.environ["TRITONSPARSE_BACKEND"] = old


# -- problems ------------------------------------------------------------------------------
def make_pattern(in_f, out_f, sparsity, device, seed=0):
    """fp32 (values, int32 indices) of a random constant fan-in weight, columns sorted."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, round((1 - sparsity) * in_f))
    idx = torch.rand(out_f, in_f, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
    vals = torch.randn(out_f, k, generator=g) / math.sqrt(k)
    return vals.to(device), idx.to(torch.int32).to(device)


class Problem:
    """The tensors of one (shape, sparsity, dtype) point; batch-dependent ones are made per call."""

    def __init__(self, in_f, out_f, sparsity, dtype, device, pattern):
        from tritonsparse import default_index_dtype
        from tritonsparse.reference import condensed_to_dense

        vals, idx = pattern
        self.in_f, self.out_f, self.sparsity, self.dtype, self.device = in_f, out_f, sparsity, dtype, device
        self.fan_in = vals.shape[1]
        self.nnz = vals.numel()
        self.values = vals.to(dtype)
        self.indices = idx.to(default_index_dtype(in_f))
        self.dense = condensed_to_dense(vals, idx, in_f).to(dtype)
        crow = torch.arange(0, self.nnz + 1, self.fan_in, device=device, dtype=torch.int64)
        self.csr = torch.sparse_csr_tensor(crow, idx.reshape(-1).long(), self.values.reshape(-1), (out_f, in_f))
        self.bias = torch.randn(out_f, device=device).to(dtype)
        self.n_struct = max(1, round((1 - sparsity) * out_f))
        self.w_struct = torch.randn(self.n_struct, in_f, device=device).to(dtype) / math.sqrt(in_f)
        self.b_struct = self.bias[: self.n_struct].clone()
        self.es = torch.finfo(dtype).bits // 8
        self.index_bytes = torch.iinfo(self.indices.dtype).bits // 8
        self._blocked = None

    def blocked(self):
        """The weight as a ``BlockedCondensedLinear`` (made on first use, outside the timing)."""
        if self._blocked is None:
            from tritonsparse import cpu
            from tritonsparse.nn import BlockedCondensedLinear

            crow, col, vals, edges = cpu.column_blocks(self.values, self.indices, None, (self.out_f, self.in_f))
            self._blocked = BlockedCondensedLinear(self.in_f, self.out_f, crow, col, vals, edges, self.bias)
        return self._blocked

    def cost(self, method, batch, mode):
        """(FLOPs, bytes) of one call: useful FLOPs and compulsory traffic."""
        es, b = self.es, batch
        if method == "dense":
            flops, w_bytes, out_f = 2 * b * self.in_f * self.out_f, es * self.in_f * self.out_f, self.out_f
        elif method == "structured":
            flops, w_bytes, out_f = 2 * b * self.in_f * self.n_struct, es * self.in_f * self.n_struct, self.n_struct
        else:
            flops, out_f = 2 * b * self.nnz, self.out_f
            w_bytes = self.nnz * (es + self.index_bytes)
            if method == "blocked_torch":  # fp32 values and int32 columns, whatever the dtype, + row pointers
                w_bytes = self.nnz * 8 + self.blocked().crow.numel() * 4
            if method in ("csr_triton", "torch_csr"):
                w_bytes += (self.out_f + 1) * self.index_bytes
        act_bytes = es * b * (self.in_f + out_f)
        n = 3 if mode == "train" else 1
        return n * flops, n * (w_bytes + act_bytes)


def build(method, p: Problem, batch, mode):
    """(fn, leaves, backend, check): one call of the method; ``leaves`` are the tensors
    whose gradients are reset between calls (train), ``check(out)`` the relative error of
    a forward output against the dense product (None where there is no reference)."""
    import tritonsparse

    if method in TRITON_METHODS and p.device.type != "cuda":
        raise Skip("no GPU: Triton kernels would run in the interpreter, which is not timed")
    if method == "blocked_torch" and mode != "forward":
        raise Skip("an inference layout (no gradient with respect to the weight)")
    if method == "blocked_torch":
        p.blocked()  # the layout is made once, before any timing
    dense_call = lambda x, w, b: F.linear(x, w, b)  # noqa: E731
    table = {
        "dense": (dense_call, [p.dense, p.bias], None),
        "structured": (dense_call, [p.w_struct, p.b_struct], None),
        "condensed_triton": (lambda x, v, b: tritonsparse.condensed_matmul(x, v, p.indices, b), [p.values, p.bias], "triton"),
        "condensed_torch": (lambda x, v, b: tritonsparse.condensed_matmul(x, v, p.indices, b), [p.values, p.bias], "torch"),
        "blocked_torch": (lambda x, v, b: p.blocked()(x), [p.values, p.bias], "torch"),
        "csr_triton": (tritonsparse.csr_matmul, [p.csr, p.bias], "triton"),
        "torch_csr": (lambda x, w, b: torch.sparse.mm(w, x.t()).t() + b, [p.csr, p.bias], None),
    }
    if method not in table:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    call, params, backend = table[method]
    x = torch.randn(batch, p.in_f, device=p.device).to(p.dtype)

    def check(out):
        if method == "structured":
            return None
        ref = F.linear(x.float(), p.dense.float(), p.bias.float())
        return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

    if mode == "forward":
        def fn():
            with torch.no_grad():
                return call(x, *params)
        return fn, None, backend, check
    leaves = [x.requires_grad_(True)] + [t.detach().requires_grad_(True) for t in params]
    grad = torch.randn(batch, params[1].shape[0], device=p.device).to(p.dtype)

    def fn():
        for t in leaves:
            t.grad = None
        call(*leaves).backward(grad)

    return fn, leaves, backend, None


def _reason(e: Exception) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def spread(med, q25, q75) -> float:
    """The relative spread of a timing: interquartile range over median."""
    return (q75 - q25) / med if med > 0 else float("inf")


def measure(method, p: Problem, batch, mode, min_time, noisy_above=NOISY_ABOVE):
    """A dict with status, timings and rates of one method at one point. Any failure
    (dtype unsupported by a library, no GPU, ...) is recorded as ``skipped: reason``.
    ``iqr_rel`` is the spread of the timing, ``noisy`` "yes" above ``noisy_above``."""
    try:
        fn, leaves, backend, check = build(method, p, batch, mode)
        with forced_backend(backend):
            out = fn()  # first call: autotuning, cached structures, and a sanity check
            err = check(out) if check is not None else None
            if p.device.type == "cuda":
                torch.cuda.synchronize()
                med, q25, q75, reps = time_gpu(fn, leaves)
            else:
                med, q25, q75, reps = time_cpu(fn, min_time)
    except Skip as e:
        return {"status": f"skipped: {e}"}
    except Exception as e:  # noqa: BLE001 - recorded, not raised: the sweep goes on
        return {"status": f"skipped: {_reason(e)}"}
    flops, nbytes = p.cost(method, batch, mode)
    s = med / 1e3
    # the flag is decided on the written (rounded) spread so the CSV agrees with itself
    rel = float(f"{spread(med, q25, q75):.3g}")
    row = {"status": "ok", "median_ms": f"{med:.5g}", "q25_ms": f"{q25:.5g}", "q75_ms": f"{q75:.5g}", "reps": reps,
           "iqr_rel": f"{rel:.3g}", "noisy": "yes" if rel > noisy_above else "no",
           "gbps": f"{nbytes / s / 1e9:.4g}", "tflops": f"{flops / s / 1e12:.4g}",
           "max_rel_err": "" if err is None else f"{err:.2e}"}
    return row


# -- the sweep -----------------------------------------------------------------------------
def parse_list(text, kind=float):
    return [kind(v) for v in str(text).split(",") if v.strip()]


def parse_shapes(text):
    shapes = []
    for item in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX:]\s*(\d+)\s*", item)
        if not m:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not IN x OUT, e.g. 768x3072")
        shapes.append((int(m.group(1)), int(m.group(2))))
    return shapes


def _progress(total, enabled):
    try:
        from tqdm import tqdm

        return tqdm(total=total, disable=not enabled, dynamic_ncols=True, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is optional
        class Lines:
            n = 0

            def update(self, k=1):
                self.n += k
                if enabled:
                    print(f"[sweep] {self.n}/{total}", file=sys.stderr, flush=True)

            def set_postfix_str(self, s):
                pass

            def write(self, s):
                print(s, file=sys.stderr, flush=True)

            def close(self):
                pass

        return Lines()


def run_sweep(shapes, sparsities, batches, dtypes, modes, methods, device, min_time, info, progress=True,
              noisy_above=NOISY_ABOVE):
    """All rows of a sweep (list of dicts with ``FIELDS``). Dense runs once per (shape,
    dtype, mode, batch) and is recorded with sparsity 0."""
    rows, skipped_seen = [], set()
    sparse_methods = [m for m in methods if m != "dense"]
    total = len(shapes) * len(dtypes) * len(modes) * len(batches) * (
        ("dense" in methods) + len(sparsities) * len(sparse_methods))
    bar = _progress(total, progress)
    for in_f, out_f in shapes:
        patterns = {s: make_pattern(in_f, out_f, s, device) for s in sparsities}
        for dname in dtypes:
            problems = {s: Problem(in_f, out_f, s, DTYPES[dname], device, patterns[s]) for s in sparsities}
            for mode in modes:
                for batch in batches:
                    todo = [("dense", None)] if "dense" in methods else []
                    todo += [(m, s) for s in sparsities for m in sparse_methods]
                    for method, s in todo:
                        p = problems[s if s is not None else sparsities[0]]
                        bar.set_postfix_str(f"{in_f}x{out_f} {dname} {mode} b={batch} s={s} {method}")
                        res = measure(method, p, batch, mode, min_time, noisy_above)
                        bar.update(1)
                        row = {**info, "dtype": dname, "in_features": in_f, "out_features": out_f, "batch": batch,
                               "sparsity": 0.0 if s is None else s, "fan_in": in_f if s is None else p.fan_in,
                               "nnz": in_f * out_f if s is None else p.nnz, "method": method, "mode": mode,
                               "index_dtype": "" if s is None else str(p.indices.dtype).replace("torch.", ""), **res}
                        if res["status"] == "ok" and info.get("peak_gbps"):
                            row["pct_peak_bw"] = f"{100 * float(res['gbps']) / float(info['peak_gbps']):.3g}"
                        elif res["status"] != "ok":
                            key = (method, dname, mode, res["status"])
                            if key not in skipped_seen:  # say each reason once
                                skipped_seen.add(key)
                                bar.write(f"[sweep] {method} {dname} {mode}: {res['status']}")
                        rows.append(row)
    bar.close()
    return rows


def write_csv(rows, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- plots and tables from a CSV -----------------------------------------------------------
COLORS = {"dense": "black", "condensed_triton": "tab:blue", "condensed_torch": "tab:cyan", "blocked_torch": "tab:purple",
          "csr_triton": "tab:red", "torch_csr": "tab:orange", "structured": "tab:green"}


def _key(r):
    return (r["device_name"], r["dtype"], int(r["in_features"]), int(r["out_features"]), r["mode"], int(r["batch"]))


def with_speedups(rows):
    """The measured rows of the sparse methods, each with ``speedup`` over the dense row of
    the same device, dtype, shape, mode and batch."""
    dense = {_key(r): float(r["median_ms"]) for r in rows if r["method"] == "dense" and r["status"] == "ok"}
    return [{**r, "speedup": dense[_key(r)] / float(r["median_ms"])} for r in rows
            if r["method"] != "dense" and r["status"] == "ok" and _key(r) in dense]


def _nearest(values, target):
    return min(values, key=lambda v: abs(v - target)) if values else None


def _device_label(rows):
    r = rows[0]
    if r["device_type"] == "cpu":
        return f"CPU ({r['device_name']}, {r['threads']} thread{'s' if r['threads'] != '1' else ''})"
    return r["device_name"]


def plot_results(csv_path, plot_dir=None):
    """Make the plots of one result CSV into ``plot_dir`` (default: the CSV's folder);
    returns the paths written. File names start with the CSV's stem, which names the
    device and the grid, so runs never overwrite each other.

      * speedup over dense vs sparsity, one panel per batch size (rows: dtype), log y;
      * speedup vs batch size at 90% sparsity (or the nearest measured), one panel per shape;
      * achieved bandwidth vs peak at the smallest batch, forward (roofline-style view).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    sp = with_speedups(rows)
    plot_dir = Path(plot_dir) if plot_dir is not None else Path(csv_path).parent
    plot_dir.mkdir(parents=True, exist_ok=True)
    tag, label, written = Path(csv_path).stem, _device_label(rows) if rows else "", []
    if not sp:
        return written
    shapes = sorted({(int(r["in_features"]), int(r["out_features"])) for r in sp})
    dtypes = [d for d in DTYPES if any(r["dtype"] == d for r in sp)]
    modes = [m for m in MODES if any(r["mode"] == m for r in sp)]
    batches = sorted({int(r["batch"]) for r in sp})
    methods = [m for m in METHODS if any(r["method"] == m for r in sp)]

    def grid(n_cols, width):
        return plt.subplots(len(dtypes), n_cols, figsize=(max(5.5, width * n_cols), 2.7 * len(dtypes)),
                            squeeze=False, sharey=True)

    def lines(ax, pts_of, log_y=True):
        for m in methods:
            pts = sorted(pts_of(m))
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=COLORS[m], label=m)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)

    def finish(fig, axes, name, title, ylabel):
        for row in axes:
            row[0].set_ylabel(ylabel)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title}\n{label}", fontsize=10)
        fig.tight_layout()
        path = plot_dir / f"{tag}_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    def pick(**kw):
        return [r for r in sp if all(str(r[k]) == str(v) for k, v in kw.items())]

    for in_f, out_f in shapes:
        for mode in modes:
            fig, axes = grid(len(batches), 3.0)
            for i, dt in enumerate(dtypes):
                for j, b in enumerate(batches):
                    ax = axes[i][j]
                    lines(ax, lambda m: [(float(r["sparsity"]), r["speedup"]) for r in pick(
                        dtype=dt, mode=mode, batch=b, method=m, in_features=in_f, out_features=out_f)])
                    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
                    ax.set_title(f"{dt}, batch {b}", fontsize=9)
                    ax.set_xlabel("sparsity")
            finish(fig, axes, f"speedup_vs_sparsity_{in_f}x{out_f}_{mode}",
                   f"{mode}: speedup over dense F.linear, {in_f}->{out_f}", "speedup over dense")

    s90 = _nearest(sorted({float(r["sparsity"]) for r in sp}), 0.9)
    for mode in modes:
        fig, axes = grid(len(shapes), 3.6)
        for i, dt in enumerate(dtypes):
            for j, (in_f, out_f) in enumerate(shapes):
                ax = axes[i][j]
                lines(ax, lambda m: [(int(r["batch"]), r["speedup"]) for r in pick(
                    dtype=dt, mode=mode, method=m, in_features=in_f, out_features=out_f) if float(r["sparsity"]) == s90])
                ax.set_xscale("log", base=2)
                ax.axhline(1.0, color="gray", lw=0.8, ls="--")
                ax.set_title(f"{dt}, {in_f}->{out_f}", fontsize=9)
                ax.set_xlabel("batch")
        finish(fig, axes, f"speedup_vs_batch_s{round(s90 * 100)}_{mode}",
               f"{mode}: speedup over dense at {s90:.0%} sparsity", "speedup over dense")

    b0 = batches[0]
    fwd = [r for r in rows if r["status"] == "ok" and r["mode"] == "forward" and int(r["batch"]) == b0]
    peak = next((float(r["peak_gbps"]) for r in rows if r.get("peak_gbps")), None)
    if fwd:
        fig, axes = grid(len(shapes), 3.6)
        for i, dt in enumerate(dtypes):
            for j, (in_f, out_f) in enumerate(shapes):
                ax = axes[i][j]
                here = [r for r in fwd if r["dtype"] == dt and int(r["in_features"]) == in_f and int(r["out_features"]) == out_f]
                lines(ax, lambda m: [(float(r["sparsity"]), float(r["gbps"])) for r in here
                                     if r["method"] == m and m != "dense"])
                for r in here:
                    if r["method"] == "dense":
                        ax.axhline(float(r["gbps"]), color=COLORS["dense"], lw=1, label="dense")
                if peak:
                    ax.axhline(peak, color="red", ls="--", lw=1, label=f"peak {peak:.0f} GB/s")
                ax.set_title(f"{dt}, {in_f}->{out_f}", fontsize=9)
                ax.set_xlabel("sparsity")
        src = next((r["peak_source"] for r in rows if r.get("peak_source")), "")
        finish(fig, axes, f"bandwidth_b{b0}_forward",
               f"forward, batch {b0}: achieved bandwidth (peak: {src})", "achieved GB/s")
    return written


def is_noisy(row, noisy_above=NOISY_ABOVE) -> bool:
    """Whether a measured row's spread is large: its ``noisy`` column, or for CSVs written
    before that column, IQR/median above ``noisy_above``."""
    if row.get("noisy") in ("yes", "no"):
        return row["noisy"] == "yes"
    return spread(float(row["median_ms"]), float(row["q25_ms"]), float(row["q75_ms"])) > noisy_above


def readme_table(csv_path, target=0.9):
    """Markdown table of the speedups over dense at the sparsity nearest ``target``, naming
    the device, with the reasons for the methods that were not measured. A ratio whose
    sparse or dense timing is noisy (spread IQR/median > 20%) is marked with ``*``, and a
    note under the table says how many."""
    rows = read_csv(csv_path)
    sp = with_speedups(rows)
    s = _nearest(sorted({float(r["sparsity"]) for r in sp}), target)
    methods = [m for m in METHODS[1:] if any(r["method"] == m for r in sp)]
    dense = {_key(r): r for r in rows if r["method"] == "dense" and r["status"] == "ok"}
    at_s = {(_key(r), r["method"]): r for r in sp if float(r["sparsity"]) == s}
    out = [f"Speedup over dense `F.linear` at {s:.0%} sparsity, {_device_label(rows)}, torch "
           f"{rows[0]['torch_version']}, triton {rows[0]['triton_version']} (from `{Path(csv_path).name}`):", "",
           "| shape | dtype | mode | batch | dense (ms) | " + " | ".join(methods) + " |",
           "|---|---|---|---:|---:|" + "---:|" * len(methods)]
    n_noisy = n_cells = 0
    for k in sorted(dense, key=lambda k: (k[2], k[3], list(DTYPES).index(k[1]), MODES.index(k[4]), k[5])):
        cells = []
        for m in methods:
            r = at_s.get((k, m))
            if r is None:
                cells.append("n/a")
                continue
            noisy = is_noisy(r) or is_noisy(dense[k])
            n_noisy, n_cells = n_noisy + noisy, n_cells + 1
            cells.append(f"{r['speedup']:.2f}x" + ("*" if noisy else ""))
        _, dt, in_f, out_f, mode, b = k
        d_ms = f"{float(dense[k]['median_ms']):.3g}" + ("*" if is_noisy(dense[k]) else "")
        out.append(f"| {in_f}->{out_f} | {dt} | {mode} | {b} | {d_ms} | " + " | ".join(cells) + " |")
    where = ("the CSV's columns `iqr_rel` and `noisy`" if any(r.get("noisy") for r in rows) else
             "computed from the CSV's quartiles, `(q75_ms - q25_ms) / median_ms`")
    out += ["", f"`*`: noisy, the spread (IQR/median) of the sparse or the dense timing is above "
                f"{NOISY_ABOVE:.0%} ({n_noisy} of {n_cells} ratios; {where}): do not trust these ratios." if n_noisy
            else f"Every timing's spread (IQR/median) is at most {NOISY_ABOVE:.0%} ({where})."]
    skipped = sorted({(r["method"], r["status"][len("skipped: "):]) for r in rows if r["status"].startswith("skipped")})
    if skipped:
        out += ["", "Not measured:"]
        for m, why in skipped:
            where = sorted({f"{r['dtype']} {r['mode']}" for r in rows if r["method"] == m and r["status"].endswith(why)})
            out.append(f"- `{m}` ({', '.join(where)}): {why}")
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small grid (under a minute on a CPU): {QUICK}")
    ap.add_argument("--llm", action="store_true", help=f"the Llama-3-8B MLP shapes at small batch: {LLM}")
    for name in ("shapes", "sparsities", "batches", "dtypes", "modes"):
        ap.add_argument(f"--{name}", help=f"comma-separated (default {FULL[name]}; --quick {QUICK[name]}; "
                                          f"--llm {LLM[name]})")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="CPU: seconds of timed runs per measurement, at least 5 runs (default 0.3; --quick 0.05)")
    ap.add_argument("--out-dir", default=None, help="folder of the CSV (default: ./sweep_results)")
    ap.add_argument("--plot-dir", default=None, help="folder of the plots (default: the CSV's folder)")
    ap.add_argument("--repo-results", action="store_true",
                    help="write the CSV into the checkout's benchmarks/results/ and the plots into its plots/ "
                         "(results meant to be committed); --out-dir / --plot-dir still take precedence")
    ap.add_argument("--noisy-above", type=float, default=NOISY_ABOVE,
                    help=f"spread (IQR/median) above which a timing is marked noisy (default {NOISY_ABOVE})")
    ap.add_argument("--tag", help="grid name in the output file name (default: quick, full or custom)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--plot-only", metavar="FILE", help="re-plot a result CSV and exit")
    ap.add_argument("--readme-table", metavar="FILE", help="print the markdown table at 90%% sparsity of a CSV and exit")
    return ap


def main(argv=None):
    """Run the sweep (or ``--plot-only`` / ``--readme-table``) as the command line says."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick and args.llm:
        ap.error("--quick and --llm are two different grids: pick one")
    if args.out_dir is None:
        args.out_dir = str(ROOT / "benchmarks" / "results") if args.repo_results else "sweep_results"
    if args.plot_dir is None:
        args.plot_dir = str(ROOT / "plots") if args.repo_results else None

    if args.plot_only:
        for path in plot_results(args.plot_only, args.plot_dir or Path(args.plot_only).parent):
            print(path)
        return 0
    if args.readme_table:
        print(readme_table(args.readme_table))
        return 0

    spec = dict(QUICK if args.quick else LLM if args.llm else FULL)
    custom = any(getattr(args, k) is not None for k in spec)
    spec.update({k: getattr(args, k) for k in spec if getattr(args, k) is not None})
    try:
        shapes = parse_shapes(spec["shapes"])
        sparsities, batches = parse_list(spec["sparsities"]), parse_list(spec["batches"], int)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    dtypes, modes, methods = (parse_list(spec["dtypes"], str), parse_list(spec["modes"], str),
                              parse_list(args.methods, str))
    for name, values, allowed in (("dtypes", dtypes, DTYPES), ("modes", modes, MODES), ("methods", methods, METHODS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if any(not 0 <= s < 1 for s in sparsities) or any(b < 1 for b in batches):
        ap.error("sparsities must be in [0, 1) and batches >= 1")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            ap.error("--device cuda but no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)

    info = device_info(device, threads, args.quick)
    if device.type == "cpu":
        print(f"[sweep] no GPU: timing the CPU paths (torch, {threads} threads, {info['device_name']}); the Triton "
              f"methods are skipped, the interpreter is not timed. Peak bandwidth {info['peak_gbps']} GB/s "
              f"({info['peak_source']}).", file=sys.stderr)
    else:
        print(f"[sweep] GPU {info['device_name']}: triton.testing.do_bench; peak bandwidth "
              f"{info['peak_gbps'] or 'unknown'} GB/s ({info['peak_source']}).", file=sys.stderr)
    t0 = time.time()
    rows = run_sweep(shapes, sparsities, batches, dtypes, modes, methods, device, min_time, info,
                     progress=not args.no_progress, noisy_above=args.noisy_above)
    tag = args.tag or ("custom" if custom else "quick" if args.quick else "llm" if args.llm else "full")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = write_csv(rows, Path(args.out_dir) / f"sweep_{device_slug(info)}_{tag}_{stamp}.csv")
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"[sweep] {n_ok} measurements, {len(rows) - n_ok} skipped, {time.time() - t0:.1f} s -> {path}", file=sys.stderr)
    noisy = [r for r in rows if r.get("noisy") == "yes"]
    if noisy:
        worst = max(noisy, key=lambda r: float(r["iqr_rel"]))
        print(f"[sweep] WARNING: {len(noisy)} of {n_ok} timings are noisy (spread IQR/median > "
              f"{args.noisy_above:.0%}, worst {float(worst['iqr_rel']):.0%}: {worst['method']} {worst['dtype']} "
              f"{worst['mode']} batch {worst['batch']}); column `noisy` in the CSV. Their ratios are not to be "
              "trusted: rerun on an idle machine, with fewer --threads or a longer --min-time.", file=sys.stderr)
    print(path)
    if not args.no_plots:
        for p in plot_results(path, args.plot_dir or path.parent):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

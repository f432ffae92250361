"""What a group size G costs in accuracy and buys in speed (issue 13).

Accuracy (measured on this machine's CPU): SRigL with group-shared patterns,
G in {1, 4, 16, 64}, at 90% and 95% sparsity, on two small tasks, several seeds:
  * ``digits``: the 8x8 digits (1437 train / 360 test), MLP 64-256-256-256-10;
  * ``teacher``: a teacher-student task: 64 Gaussian inputs, labels the sign of a fixed
    random teacher network's output (two balanced classes), same student MLP.
The two 256x256 hidden layers are sparse (the stem and head stay dense, the models'
default); SRigL's schedule: ΔT = 50, α = 0.3, T_end = 0.75, γ_sal = 0.3.

Speed (**modeled**, not measured: no GPU here): an analytic H100 SXM roofline of one layer's
forward and training step (forward + dX + dValues), bf16, against dense bf16 at 700 TFLOP/s
(issue 8's achieved cuBLAS rate), for the ViT-B MLP (768<->3072) and the Llama-3-8B MLP
(4096<->14336) at 90% sparsity. See :func:`modeled_times` for every term. It is a bound
model from byte and FLOP counts, not the SASS report's model: treat it as the shape of
the trade-off, not as timings.

    python benchmarks/group_study.py [--seeds 3] [--epochs 40] [--out DIR] [--smoke]
    python benchmarks/group_study.py --replot DIR/group_study.csv

Writes ``group_study.csv`` (one row per run or modeled case) and ``group_study.png``
into ``--out`` (default ./bench_results; ``--repo-results`` writes benchmarks/results
and plots/ in the checkout). ``--groups``, ``--sparsities`` and ``--tasks`` (comma lists)
narrow the grid.

Width study: does G's accuracy cost come from G or from few groups per layer (a 256-wide
layer at G=64 has only 4 index sets)? ``--width`` sets the hidden width W of the MLP
64-W-W-W-10 (comma list; sparse W x W hidden layers, fan-in K = (1 - s)·W) and writes
``group_study_width.csv`` / ``group_study_width.png`` (accuracy rows only, each with its
width and its groups per layer W/G), e.g.

    python benchmarks/group_study.py --width 256,1024 --groups 1,16,64 --sparsities 0.9 \
        --tasks digits --threads 1 --repo-results
    python benchmarks/group_study.py --replot benchmarks/results/group_study_width.csv

Without ``--width`` the study runs at W = 256 (today's study, reproducible as before).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonsparse.dst import DynamicSparsity, sparsify  # noqa: E402
from tritonsparse.models.mlp import MLP  # noqa: E402

GROUPS = (1, 4, 16, 64)
SPARSITIES = (0.9, 0.95)
TASKS = ("digits", "teacher")
WIDTH = 256  # the study's hidden width
FIELDS = ["kind", "task", "shape", "batch", "mode", "group_size", "sparsity", "seed", "test_acc", "active_neurons",
          "fan_in", "seconds", "modeled_us", "modeled_dense_us", "modeled_speedup", "bound", "machine", "torch",
          "width", "groups_per_layer"]

# -- H100 SXM constants (issue 8) ---------------------------------------------------------------
SMS, CLOCK = 132, 1.98e9
L1_BYTES_PER_S = SMS * 128 * CLOCK          # ~33.5 TB/s
L2_BYTES_PER_S = 5.5e12
HBM_BYTES_PER_S = 3.35e12
DENSE_BF16_FLOPS = 700e12                   # achieved dense cuBLAS bf16
MMA_BF16_FLOPS = 700e12                     # the gather-MMA kernels' tensor-core rate, assumed equal
LAUNCH_S = 2e-6                             # per kernel
SHAPES = {"vit_fc1": (768, 3072), "vit_fc2": (3072, 768), "llm_up": (4096, 14336), "llm_down": (14336, 4096)}


def modeled_times(in_f: int, out_f: int, batch: int, sparsity: float, g: int, dx_mode: str = "atomic"):
    """**Modeled** seconds of (forward, training step) for one layer, bf16, and the bound
    of the forward. Terms (each kernel: the largest term plus one launch):

      * tensor-core FLOPs: 2·B·n·K·max(G, 16)/G (an MMA tile is at least 16 rows, so
        G < 16 computes padding rows) at ``MMA_BF16_FLOPS``;
      * L2 gather traffic: the (n/G)·K gathered rows of xT, 2·B bytes each, plus values,
        at ``L2_BYTES_PER_S``;
      * compulsory HBM bytes (x, values, indices, y) at ``HBM_BYTES_PER_S``;
      * G = 1 is the per-row CUDA-core gather kernel instead: 4 bytes of L1 traffic per
        FMA (issue 8's gather floor) at ``L1_BYTES_PER_S``.
    Training step = forward + dValues (same terms as the forward) + dX: the MMA terms
    plus, ``"atomic"``, fp32 atomics of the (n/G)·K·B partial sums through L2 (4 B each),
    or, ``"deterministic"``, a workspace of those partial sums written to and read back
    from HBM (8 B each) and a second launch.
    """
    k = max(1, round((1 - sparsity) * in_f))
    fmas = batch * out_f * k
    x_b, y_b, v_b = 2 * batch * in_f, 2 * batch * out_f, 2 * out_f * k
    hbm = (x_b + y_b + v_b + 2 * (out_f // g) * k) / HBM_BYTES_PER_S
    if g == 1:
        fwd_terms = {"L1 gather": 4 * fmas / L1_BYTES_PER_S, "HBM": hbm}
    else:
        fwd_terms = {"tensor cores": 2 * fmas * max(g, 16) / g / MMA_BF16_FLOPS,
                     "L2 gather": (2 * batch * (out_f // g) * k + v_b) / L2_BYTES_PER_S, "HBM": hbm}
    bound = max(fwd_terms, key=fwd_terms.get)
    fwd = fwd_terms[bound] + LAUNCH_S
    partials = (out_f // g) * k * batch
    if g == 1:
        dx = max(4 * fmas / L1_BYTES_PER_S, hbm) + LAUNCH_S
    elif dx_mode == "atomic":
        dx = max(fwd_terms["tensor cores"], 4 * partials / L2_BYTES_PER_S, hbm) + LAUNCH_S
    else:
        dx = max(fwd_terms["tensor cores"], hbm) + 8 * partials / HBM_BYTES_PER_S + 2 * LAUNCH_S
    return fwd, 2 * fwd + dx, bound


def modeled_dense(in_f, out_f, batch):
    """**Modeled** dense bf16 seconds (forward, step = 3 GEMMs) at ``DENSE_BF16_FLOPS``."""
    gemm = max(2 * batch * in_f * out_f / DENSE_BF16_FLOPS,
               2 * (batch * in_f + in_f * out_f + batch * out_f) / HBM_BYTES_PER_S) + LAUNCH_S
    return gemm, 3 * gemm


def modeled_rows(groups=GROUPS, batches=(256, 4096), sparsity=0.9):
    rows = []
    for shape, (in_f, out_f) in SHAPES.items():
        for batch in batches:
            dfwd, dstep = modeled_dense(in_f, out_f, batch)
            for g in groups:
                for mode, dense_t, idx in (("forward", dfwd, 0), ("step_atomic", dstep, 1), ("step_deterministic", dstep, 1)):
                    t = modeled_times(in_f, out_f, batch, sparsity, g, "deterministic" if "determ" in mode else "atomic")
                    rows.append({"kind": "modeled", "shape": f"{shape} {in_f}->{out_f}", "batch": batch, "mode": mode,
                                 "group_size": g, "sparsity": sparsity, "modeled_us": round(t[idx] * 1e6, 3),
                                 "modeled_dense_us": round(dense_t * 1e6, 3),
                                 "modeled_speedup": round(dense_t / t[idx], 3), "bound": t[2] if idx == 0 else ""})
    return rows


# -- accuracy ------------------------------------------------------------------------------------
def _digits():
    from tritonsparse.train.data import load_digits

    d = load_digits()
    xtr, xte = d.x_train.float().flatten(1), d.x_test.float().flatten(1)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
    return (xtr - mean) / std, d.y_train, (xte - mean) / std, d.y_test, 10


def _teacher(seed=1234, n_train=4000, n_test=2000, dim=64):
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(dim, 32, generator=gen) / math.sqrt(dim), torch.randn(32, 1, generator=gen) / math.sqrt(32)
    x = torch.randn(n_train + n_test, dim, generator=gen)
    score = (torch.tanh(x @ w1) @ w2).squeeze(1)
    y = (score > score.median()).long()  # two balanced classes
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2


def run_one(task, g, sparsity, seed, epochs, hidden=(256, 256, 256), batch_size=64, lr=0.05):
    """Train one SRigL model; returns (test accuracy, active neurons, fan-ins, seconds)."""
    xtr, ytr, xte, yte, classes = _digits() if task == "digits" else _teacher()
    torch.manual_seed(seed)
    model = MLP(xtr.shape[1], classes, hidden=hidden)
    sparsify(model, sparsity, "srigl", "uniform", dense_modules=("stem", "head"), seed=seed, group_size=g)
    steps = epochs * math.ceil(len(xtr) / batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    dst = DynamicSparsity(model, opt, "srigl", total_steps=steps, delta_t=50, alpha=0.3, t_end=0.75, gamma_sal=0.3,
                          no_ablation=("head",), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            dst.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    stats = dst.layer_stats()
    return acc, sum(s["active_neurons"] for s in stats.values()), "/".join(str(s["fan_in"]) for s in stats.values()), seconds


def accuracy_rows(tasks, groups, sparsities, seeds, epochs, hidden, on_row=None):
    """One SRigL run per (task, sparsity, G, seed) on the MLP with ``hidden`` widths; each row
    records the sparse layers' width (``hidden[1]``) and groups per layer (width / G).
    ``on_row(rows)`` is called after every run (e.g. to save partial results)."""
    rows = []
    width = hidden[1]
    for task in tasks:
        for s in sparsities:
            for g in groups:
                for seed in range(seeds):
                    acc, active, fan_in, sec = run_one(task, g, s, seed, epochs, hidden)
                    rows.append({"kind": "accuracy", "task": task, "group_size": g, "sparsity": s, "seed": seed,
                                 "test_acc": round(acc, 4), "active_neurons": active, "fan_in": fan_in,
                                 "seconds": round(sec, 2), "width": width, "groups_per_layer": width // g})
                    print(f"{task} W={width} s={s} G={g} seed={seed}: acc {acc:.4f} active {active} K {fan_in} "
                          f"({sec:.1f} s)", flush=True)
                    if on_row is not None:
                        on_row(rows)
    return rows


# -- output --------------------------------------------------------------------------------------
def write_csv(rows, path):
    machine = f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: "" for k in FIELDS}, **r, "machine": machine if r["kind"] == "accuracy" else "model",
                        "torch": torch.__version__})


def plot(csv_path, png_path):
    """The figure from a CSV (re-plots old results): accuracy vs G (mean ± spread over seeds)
    and modeled speedup vs G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    acc = [r for r in rows if r["kind"] == "accuracy"]
    for task in sorted({r["task"] for r in acc}):
        for s in sorted({r["sparsity"] for r in acc}):
            sel = [r for r in acc if r["task"] == task and r["sparsity"] == s]
            gs = sorted({int(r["group_size"]) for r in sel})
            vals = [[float(r["test_acc"]) for r in sel if int(r["group_size"]) == g] for g in gs]
            mean = [sum(v) / len(v) for v in vals]
            a1.errorbar(gs, mean, yerr=[[m - min(v) for m, v in zip(mean, vals)], [max(v) - m for m, v in zip(mean, vals)]],
                        marker="o", capsize=3, label=f"{task}, {float(s):.0%} sparse")
    _axes(a1, "group size G", "test accuracy (mean, min-max over seeds)", "SRigL accuracy vs G (measured, CPU)", 8)
    mod = [r for r in rows if r["kind"] == "modeled" and r["mode"] in ("forward", "step_atomic")]
    for key in sorted({(r["shape"], r["batch"], r["mode"]) for r in mod}):
        sel = sorted((int(r["group_size"]), float(r["modeled_speedup"])) for r in mod
                     if (r["shape"], r["batch"], r["mode"]) == key)
        if key[1] != "4096" and key[2] != "forward":
            continue
        a2.plot([g for g, _ in sel], [s for _, s in sel], marker="o",
                label=f"{key[0].split()[0]} B={key[1]} {key[2].replace('_', ' ')}")
    a2.axhline(1.0, color="grey", lw=0.8)
    _axes(a2, "group size G", "speedup over dense bf16 (modeled)",
          "MODELED H100 speedup, 90% sparse, bf16 (analytic roofline)", 7)
    _save(fig, png_path)


def _axes(ax, xlabel, ylabel, title, legend_size):
    """Log2 x axis, labels, title and legend of one panel."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)


def _save(fig, png_path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def _width_stats(rows):
    """From a width-study CSV's rows: {(task, sparsity, width, G): sorted accuracies over seeds}
    and {same key: the first sparse layer's fan-in K}."""
    out, fan_in = {}, {}
    for r in rows:
        if r["kind"] == "accuracy":
            key = (r["task"], float(r["sparsity"]), int(r.get("width") or WIDTH), int(r["group_size"]))
            out.setdefault(key, []).append(float(r["test_acc"]))
            fan_in[key] = int(r["fan_in"].split("/")[0])
    return {k: sorted(v) for k, v in sorted(out.items())}, fan_in


def width_table(csv_path):
    """A markdown table of a width-study CSV: per (task, sparsity, width) the accuracy in % at
    each G as mean [min-max] over seeds, with the groups per layer W/G, and the mean gap of the
    largest G to G=1 in points."""
    with open(csv_path) as f:
        stats, _ = _width_stats(csv.DictReader(f))
    groups = sorted({k[3] for k in stats})
    head = "| task, sparsity, width | " + " | ".join(f"G={g}" for g in groups) + f" | G={groups[-1]} - G=1 |"
    lines = [head, "|" + "---|" * (len(groups) + 2)]
    for task, sp, w in sorted({k[:3] for k in stats}):
        cells, means = [], {}
        for g in groups:
            v = stats.get((task, sp, w, g))
            if v is None:
                cells.append("")
                continue
            means[g] = 100 * sum(v) / len(v)
            cells.append(f"{means[g]:.2f} [{100 * v[0]:.2f}-{100 * v[-1]:.2f}] ({w // g} groups)")
        gap = f"{means[groups[-1]] - means[1]:+.2f}" if 1 in means and groups[-1] in means else ""
        lines.append(f"| {task}, {sp:.0%}, W={w} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


def plot_width(csv_path, png_path):
    """The width study's figure from its CSV (re-plots old results): accuracy vs G per hidden
    width, and the gap to G=1 at the same width against groups per layer (W/G) and against
    the most distinct inputs a layer can read, min(W, (W/G)·K); each mean with min-max over
    seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        stats, fan_in = _width_stats(csv.DictReader(f))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4.5))
    for task, sp, w in sorted({k[:3] for k in stats}):
        gs = sorted(k[3] for k in stats if k[:3] == (task, sp, w))
        vals = [[100 * a for a in stats[(task, sp, w, g)]] for g in gs]
        mean = [sum(v) / len(v) for v in vals]
        label = f"{task} {sp:.0%}, W={w}"
        a1.errorbar(gs, mean, yerr=[[m - v[0] for m, v in zip(mean, vals)], [v[-1] - m for m, v in zip(mean, vals)]],
                    marker="o", capsize=3, label=label)
        if 1 not in gs:
            continue
        base = mean[0]
        sel = [(w // g, g, m - base, v) for g, m, v in zip(gs, mean, vals) if g > 1]
        if not sel:
            continue
        reads = [min(w, (w // g) * fan_in[(task, sp, w, g)]) for _, g, _, _ in sel]
        for ax, xs in ((a2, [s[0] for s in sel]), (a3, reads)):
            ax.errorbar(xs, [s[2] for s in sel],
                        yerr=[[s[2] - (s[3][0] - base) for s in sel], [(s[3][-1] - base) - s[2] for s in sel]],
                        marker="s", capsize=3, ls="none", label=label)
            for x, (_, g, gap, _) in zip(xs, sel):
                ax.annotate(f"G={g}", (x, gap), textcoords="offset points", xytext=(5, 4), fontsize=7)
    _axes(a1, "group size G", "test accuracy % (mean, min-max over seeds)",
          "SRigL accuracy vs G per hidden width (measured, CPU)", 8)
    for ax, xlabel, title in ((a2, "groups per sparse layer (W / G)", "gap to G=1 vs groups per layer"),
                              (a3, "most distinct inputs a sparse layer reads, min(W, W/G * K)",
                               "gap to G=1 vs distinct inputs read")):
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axhline(-1.0, color="red", lw=0.8, ls=":", label="1 point below G=1")
        _axes(ax, xlabel, "accuracy - mean G=1 at the same width (points)", title, 7)
    _save(fig, png_path)


def _list_of(kind, name, choices=None):
    """An argparse ``type``: a comma list of ``kind`` (positive; fractions in (0, 1) for floats)."""
    def parse(text):
        out = []
        for item in text.split(","):
            try:
                v = kind(item.strip())
            except ValueError:
                what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
                raise argparse.ArgumentTypeError(f"{name}: {item!r} is not {what}") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"{name}: {v!r} is not one of {', '.join(choices)}")
            if kind is int and v < 1 or kind is float and not 0 < v < 1:
                raise argparse.ArgumentTypeError(f"{name}: {v} is out of range")
            out.append(v)
        return tuple(out)
    return parse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded in the CSV)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--repo-results", action="store_true", help="write into benchmarks/results and plots/")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny grid (seconds): one seed, 1 epoch, G in {1, 4} and width 64 unless given")
    ap.add_argument("--width", type=_list_of(int, "--width"), default=None,
                    help="hidden width(s) W, comma list: runs the width study (group_study_width.csv, accuracy only)")
    ap.add_argument("--groups", type=_list_of(int, "--groups"), default=None, help="G values, comma list")
    ap.add_argument("--sparsities", type=_list_of(float, "--sparsities"), default=None, help="comma list")
    ap.add_argument("--tasks", type=_list_of(str, "--tasks", TASKS), default=None, help="comma list of " + ", ".join(TASKS))
    ap.add_argument("--replot", metavar="CSV", help="re-plot an existing CSV and exit")
    args = ap.parse_args(argv)
    if args.replot:
        png = Path(args.replot).with_suffix(".png")
        with open(args.replot) as f:
            width_study = not any(r["kind"] == "modeled" for r in csv.DictReader(f))
        (plot_width if width_study else plot)(args.replot, png)
        if width_study:
            print(width_table(args.replot))
        print(png)
        return 0
    width_study = args.width is not None
    widths = args.width or ((64,) if args.smoke else (WIDTH,))
    groups = args.groups or ((1, 4) if args.smoke else GROUPS)
    sparsities = args.sparsities or ((0.9,) if args.smoke else SPARSITIES)
    tasks = args.tasks or TASKS
    seeds, epochs = (1, 1) if args.smoke else (args.seeds, args.epochs)
    bad = [(g, w) for g in groups for w in widths if w % g]
    if bad:
        ap.error(f"--groups: G={bad[0][0]} does not divide --width {bad[0][1]} (a layer of width W holds W/G groups)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRITONSPARSE_BACKEND", "torch")
    stem = "group_study_width" if width_study else "group_study"
    out_csv = ROOT / "benchmarks" / "results" / f"{stem}.csv" if args.repo_results else Path(args.out) / f"{stem}.csv"
    out_png = ROOT / "plots" / f"{stem}.png" if args.repo_results else Path(args.out) / f"{stem}.png"
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    acc = []
    for w in widths:  # the CSV is rewritten after every run, so a cut run keeps what it finished
        acc += accuracy_rows(tasks, groups, sparsities, seeds, epochs, (w, w, w),
                             on_row=lambda rows, done=list(acc): write_csv(done + rows, out_csv))
    mod = [] if width_study else modeled_rows(groups=groups)
    write_csv(acc + mod, out_csv)
    (plot_width if width_study else plot)(out_csv, out_png)
    if width_study:
        print(width_table(out_csv))
    print(out_csv)
    print(out_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

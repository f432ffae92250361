"""SRigL's qualitative claims at CPU scale: test accuracy and the fraction of active
neurons against sparsity for dense, static, SET, RigL, SRigL without ablation and SRigL.

Two tasks, both an MLP 64-256-256-C (all three layers sparse, ERK densities; the
classifier is never ablated):

* ``digits``: scikit-learn's 8x8 digits (fixed stratified 80/20 split), batches of 64.
* ``teacher``: a teacher-student task. A fixed teacher whose 32 hidden ReLU units each
  read 4 of the 64 Gaussian inputs labels every input by the sign of its output
  (about the median: two balanced classes); the student sees fresh batches of 128 and
  is tested on 4000 held-out inputs. A random static pattern rarely covers a teacher
  unit's inputs; a dynamic one can find them by gradient.

SGD (momentum 0.9, lr 0.1 cosine-decayed to 0, weight decay 5e-4); mask updates every
ΔT = 25 steps until 75% of training, α = 0.3, γ_sal = 0.3 (SRigL), 0 (SRigL without
ablation). Each (task, method, sparsity) runs with several seeds; the CSV holds one row
per run, the figures mean and min..max over the seeds.

    python benchmarks/dst_study.py --out DIR            # full grid, CSV + figures in DIR
    python benchmarks/dst_study.py --plot-only FILE.csv --out DIR

Nothing is written into the checkout unless ``--out`` points there. The torch backend
(CPU), one thread, is used so runs are reproducible and the machine's other cores free.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tritonsparse.dst import DynamicSparsity, sparsify  # noqa: E402

METHODS = ("dense", "static", "set", "rigl", "srigl-noablation", "srigl")
SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
TASKS = ("digits", "teacher")
FIELDS = ("task", "method", "sparsity", "seed", "steps", "test_acc", "active_frac", "active_neurons",
          "hidden_neurons", "mean_fan_in", "skipped_updates", "seconds", "torch", "machine")
D_IN = 64


# -- tasks ------------------------------------------------------------------------------------
class Digits:
    """sklearn digits, standardised with the training split's statistics."""

    n_classes = 10

    def __init__(self, seed):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x_tr, x_te, y_tr, y_te = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
        mean, std = x_tr.mean(0), x_tr.std(0) + 1.0
        self.x_tr = torch.tensor((x_tr - mean) / std, dtype=torch.float32)
        self.x_te = torch.tensor((x_te - mean) / std, dtype=torch.float32)
        self.y_tr, self.y_te = torch.tensor(y_tr), torch.tensor(y_te)
        self.gen = torch.Generator().manual_seed(seed)

    def train_batch(self):
        idx = torch.randint(0, self.x_tr.shape[0], (64,), generator=self.gen)
        return self.x_tr[idx], self.y_tr[idx]

    def test(self):
        return self.x_te, self.y_te


class Teacher:
    """Labels = the sign (about its median) of a fixed sparse teacher's output on Gaussian
    inputs; the teacher depends only on ``teacher_seed``, the student's data on ``seed``."""

    n_classes = 2

    def __init__(self, seed, teacher_seed=1234, hidden=32, reads=4):
        g = torch.Generator().manual_seed(teacher_seed)
        self.w1 = torch.zeros(hidden, D_IN)
        for h in range(hidden):
            self.w1[h, torch.randperm(D_IN, generator=g)[:reads]] = torch.randn(reads, generator=g).sign()
        self.w2 = torch.randn(hidden, generator=g)
        self.gen = torch.Generator().manual_seed(seed)
        self.x_te = torch.randn(4000, D_IN, generator=torch.Generator().manual_seed(teacher_seed + 1))
        self.center = 0.0
        self.center = float(self._out(self.x_te).median())
        self.y_te = self.label(self.x_te)

    def _out(self, x):
        return torch.relu(x @ self.w1.t()) @ self.w2 - self.center

    def label(self, x):
        return (self._out(x) > 0).long()

    def train_batch(self):
        x = torch.randn(128, D_IN, generator=self.gen)
        return x, self.label(x)

    def test(self):
        return self.x_te, self.y_te


def make_task(name, seed):
    if name == "digits":
        return Digits(seed)
    if name == "teacher":
        return Teacher(seed)
    raise ValueError(f"task must be one of {TASKS}, got {name!r}")


# -- one run --------------------------------------------------------------------------------------
def _active(dst, model, hidden):
    """(active, total) neurons over the hidden (ablatable) sparse layers."""
    if dst is None:
        return sum(model.get_submodule(n).out_features for n in hidden), sum(
            model.get_submodule(n).out_features for n in hidden)
    stats = dst.layer_stats()
    return sum(stats[n]["active_neurons"] for n in hidden), sum(stats[n]["out_features"] for n in hidden)


def run_one(task_name, method, sparsity, seed, steps=800, width=256, delta_t=25):
    """Train one MLP; returns a CSV row (dict)."""
    t0 = time.perf_counter()
    task = make_task(task_name, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, task.n_classes))
    hidden, head = ("0", "2"), "4"
    dst = None
    if method != "dense":
        kind = "srigl" if method.startswith("srigl") else method
        sparsify(model, sparsity, method=kind, distribution="erk", seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    if method != "dense":
        kind = "srigl" if method.startswith("srigl") else method
        dst = DynamicSparsity(model, opt, method=kind, total_steps=steps, delta_t=delta_t, alpha=0.3, t_end=0.75,
                              gamma_sal=0.0 if method == "srigl-noablation" else 0.3, no_ablation=(head,),
                              seed=seed)
    model.train()
    for _ in range(steps):
        x, y = task.train_batch()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if dst is not None:
            dst.step()
    model.eval()
    x, y = task.test()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    active, total = _active(dst, model, hidden)
    fan_in = ""
    if dst is not None and method != "rigl":
        stats = dst.layer_stats()
        fan_in = sum(stats[n]["fan_in"] for n in hidden) / len(hidden)
    return {"task": task_name, "method": method, "sparsity": 0.0 if method == "dense" else sparsity, "seed": seed,
            "steps": steps, "test_acc": acc, "active_frac": active / total, "active_neurons": active,
            "hidden_neurons": total, "mean_fan_in": fan_in,
            "skipped_updates": dst.skipped_updates if dst is not None else 0,
            "seconds": round(time.perf_counter() - t0, 2), "torch": torch.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, 1 thread"}


def run_study(tasks=TASKS, methods=METHODS, sparsities=SPARSITIES, seeds=(0, 1, 2), steps=800, width=256,
              delta_t=25, out=None, progress=True):
    """Run the grid, append rows to ``out`` (CSV) as they finish; returns the rows.
    Dense runs once per (task, seed): it has no sparsity."""
    rows = []
    writer = None
    fh = open(out, "w", newline="") if out else None
    try:
        if fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
        for task in tasks:
            for method in methods:
                for s in ((0.0,) if method == "dense" else sparsities):
                    for seed in seeds:
                        row = run_one(task, method, s, seed, steps=steps, width=width, delta_t=delta_t)
                        rows.append(row)
                        if writer:
                            writer.writerow(row)
                            fh.flush()
                        if progress:
                            print(f"{task:8s} {method:17s} s={s:.2f} seed={seed} acc={row['test_acc']:.3f} "
                                  f"active={row['active_frac']:.2f} ({row['seconds']}s)", flush=True)
    finally:
        if fh:
            fh.close()
    return rows


# -- results ----------------------------------------------------------------------------------------
def read_rows(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("sparsity", "test_acc", "active_frac"):
            r[k] = float(r[k])
    return rows


def summarize(rows):
    """{(task, method, sparsity): (mean acc, min, max, mean active_frac, min, max, n)}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], float(r["sparsity"])), []).append(r)
    out = {}
    for key, rs in groups.items():
        acc = [float(r["test_acc"]) for r in rs]
        act = [float(r["active_frac"]) for r in rs]
        out[key] = (sum(acc) / len(acc), min(acc), max(acc), sum(act) / len(act), min(act), max(act), len(rs))
    return out


def markdown_table(rows, task):
    """Accuracy (mean over seeds, min..max) per method and sparsity, as markdown."""
    summ = summarize(rows)
    sps = sorted({k[2] for k in summ if k[0] == task and k[2] > 0})
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in sps) + " |", "|---" * (len(sps) + 1) + "|"]
    for m in METHODS:
        cells = []
        for s in sps:
            key = (task, m, 0.0 if m == "dense" else s)
            if key not in summ:
                cells.append("")
                continue
            a, lo, hi, f = summ[key][0], summ[key][1], summ[key][2], summ[key][3]
            cells.append(f"{100 * a:.1f} ({100 * lo:.0f}-{100 * hi:.0f})" + (f", {f:.0%} act." if m == "srigl" else ""))
        if any(cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(csv_path, plot_dir):
    """Figures from a result CSV (re-plots old results): per task, test accuracy and the
    fraction of active hidden neurons against sparsity, mean with min..max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    summ = summarize(rows)
    tasks = [t for t in TASKS if any(k[0] == t for k in summ)]
    stem = Path(csv_path).stem
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7.5), squeeze=False)
    for j, task in enumerate(tasks):
        sps = sorted({k[2] for k in summ if k[0] == task and k[2] > 0})
        xs = [-math.log10(1 - s) for s in sps]
        for m in METHODS:
            keys = [(task, m, 0.0 if m == "dense" else s) for s in sps]
            if not all(k in summ for k in keys):
                continue
            for i, (lo_i, mid_i, hi_i) in enumerate(((1, 0, 2), (4, 3, 5))):
                mid = [summ[k][mid_i] for k in keys]
                err = [[summ[k][mid_i] - summ[k][lo_i] for k in keys], [summ[k][hi_i] - summ[k][mid_i] for k in keys]]
                style = dict(ls="--", color="k") if m == "dense" else dict(marker="o", ms=4)
                axes[i][j].errorbar(xs, mid, yerr=err, label=m, capsize=3, **style)
        axes[0][j].set_title(f"{task}: test accuracy")
        axes[1][j].set_title(f"{task}: active hidden neurons")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xticks(xs, [f"{s:.0%}" for s in sps])
            ax.set_xlabel("sparsity")
            ax.grid(alpha=0.3)
        axes[0][j].set_ylabel("test accuracy")
        axes[1][j].set_ylabel("fraction of hidden neurons active")
    axes[0][0].legend(fontsize=8)
    n_seeds = max(v[6] for v in summ.values())
    fig.suptitle(f"DST study, MLP 64-256-256-C, ERK; mean and min..max over {n_seeds} seeds ({stem})", fontsize=10)
    fig.tight_layout()
    path = plot_dir / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _floats(s):
    return tuple(float(v) for v in s.split(","))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for the CSV and figure (default: a new temporary folder)")
    ap.add_argument("--plot-dir", default=None, help="folder for the figure (default: --out)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="default: %(default)s")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps per run (default: %(default)s)")
    ap.add_argument("--width", type=int, default=256, help="hidden width (default: %(default)s)")
    ap.add_argument("--delta-t", type=int, default=25, help="steps between mask updates (default: %(default)s)")
    ap.add_argument("--tag", default="full", help="name in the output files (default: %(default)s)")
    ap.add_argument("--plot-only", metavar="CSV", help="re-plot a result CSV and exit")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dst_study_"))
    plot_dir = Path(args.plot_dir) if args.plot_dir else out
    if args.plot_only:
        print(plot(args.plot_only, plot_dir))
        return 0
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    for t in tasks:
        if t not in TASKS:
            ap.error(f"--tasks: {t!r} is not one of {', '.join(TASKS)}")
    sps = _floats(args.sparsities)
    if not all(0 < s < 1 for s in sps):
        ap.error("--sparsities must lie in (0, 1)")
    torch.set_num_threads(1)
    os.environ.setdefault("TRITONSPARSE_BACKEND", "torch")  # CPU runs: never the interpreter
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"dst_study_{args.tag}_{time.strftime('%Y%m%d-%H%M%S')}.csv"
    t0 = time.perf_counter()
    rows = run_study(tasks, methods, sps, tuple(range(args.seeds)), args.steps, args.width, args.delta_t, csv_path,
                     progress=not args.no_progress)
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s -> {csv_path}")
    for t in tasks:
        print(f"\n{t}: test accuracy % (min-max over seeds)\n" + markdown_table(rows, t))
    print(plot(csv_path, plot_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

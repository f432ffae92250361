"""Quickstart demo (CPU, no download, well under two minutes on a laptop):

1. trains an MLP (64 -> 256 -> 256 -> 256 -> 10; dense stem and head) on scikit-learn's
   digits with SRigL at 90% sparsity (ERK), on the condensed constant fan-in layers;
2. checks every condensed layer against the dense ``nn.Linear`` holding the same weight;
3. exports the model (ablated neurons removed) and checks that its outputs are unchanged.

    python examples/demo.py [--epochs N] [--out DIR] [--plots-dir DIR]

The run's files (metrics.csv/json, layers.csv, plots, checkpoint) go to ``--out``, by
default a new temporary folder (printed at the end), so nothing is written into the
checkout; ``--plots-dir`` also copies the plots there.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing

if os.environ.get("TRITON_INTERPRET") == "1":  # never the (slow) Triton interpreter for the demo
    os.environ.setdefault("TRITONSPARSE_BACKEND", "torch")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import tritonsparse  # noqa: E402
from tritonsparse.nn import CondensedLinear  # noqa: E402
from tritonsparse.train import TrainConfig, train  # noqa: E402
from tritonsparse.train.cli import DefaultsHelpFormatter  # noqa: E402


def run(epochs: int = 30, out: str | None = None, plots_dir: str | None = None, progress: bool = True,
        seed: int = 0, overwrite: bool = False) -> dict:
    """Train, check, export; return a summary dict (accuracy, time, check errors, and
    ``out``, the run's folder: a new temporary folder when ``out`` is None)."""
    out = out or tempfile.mkdtemp(prefix="tritonsparse_demo_")
    t0 = time.perf_counter()
    cfg = TrainConfig(model="mlp", dataset="digits", method="srigl", sparsity=0.9, distribution="erk",
                      hidden=(256, 256, 256), epochs=epochs, batch_size=64, lr=0.1, weight_decay=5e-4,
                      delta_t=20, alpha=0.3, t_end=0.75, gamma_sal=0.3, device="cpu", seed=seed, out=out,
                      threads=1,  # the layers are tiny: one thread is fastest, and robust to a busy machine
                      plots_dir=plots_dir, progress=progress, overwrite=overwrite)
    result = train(cfg)
    train_time = time.perf_counter() - t0
    model = result.model.eval()
    data_x = torch.randn(32, 1, 8, 8)

    # 2. every condensed layer against the dense layer holding the same weight
    layer_err = 0.0
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, CondensedLinear):
                x = torch.randn(32, m.in_features)
                dense = F.linear(x, m.to_dense_weight(), m.bias)
                layer_err = max(layer_err, (m(x) - dense).abs().max().item())

    # 3. export: ablated neurons removed, same outputs
    exported = tritonsparse.export(model)
    with torch.no_grad():
        export_err = (exported(data_x) - model(data_x)).abs().max().item()
    final = result.final
    summary = {
        "test_acc": final["test_acc"], "sparsity": final["sparsity"], "train_time_s": train_time,
        "epochs": len(result.history), "step_time_ms": final["step_time_ms"],
        "flops_per_example": final["flops_per_example"], "dense_flops_per_example": final["dense_flops_per_example"],
        "max_err_condensed_vs_dense_layer": layer_err, "max_err_export": export_err,
        "layers": {n: (s["active_neurons"], s["out_features"], s["fan_in"]) for n, s in final["layers"].items()},
        "exported_widths": [m.out_features for m in exported.modules() if isinstance(m, (CondensedLinear, torch.nn.Linear))],
        "out": str(result.out),
    }
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--out", default=None, help="folder of the run's files (default: a new temporary folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--plots-dir", default=None, help="also copy the plots here (default: only into --out)")
    args = p.parse_args(argv)
    s = run(args.epochs, args.out, args.plots_dir or None, overwrite=args.overwrite)
    print(f"\nSRigL MLP on digits, {100 * s['sparsity']:.1f}% sparse: test accuracy {100 * s['test_acc']:.1f}% "
          f"after {s['epochs']} epochs in {s['train_time_s']:.1f} s ({s['step_time_ms']:.1f} ms/step)")
    print(f"FLOPs per example: {s['flops_per_example']:.0f} vs {s['dense_flops_per_example']:.0f} dense")
    for name, (active, total, k) in s["layers"].items():
        print(f"  {name}: {active}/{total} active neurons, fan-in {k}")
    print(f"condensed layer vs dense layer with the same weight: max |diff| = {s['max_err_condensed_vs_dense_layer']:.2e}")
    print(f"exported model (widths {s['exported_widths']}) vs trained: max |diff| = {s['max_err_export']:.2e}")
    ok = s["test_acc"] >= 0.9 and s["max_err_condensed_vs_dense_layer"] < 1e-4 and s["max_err_export"] < 1e-4
    print(f"metrics, plots and checkpoint: {s['out']}")
    print("OK" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

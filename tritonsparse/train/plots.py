"""Plots of a run, made from its ``metrics.json`` (so old runs can be re-plotted):
training curves and active neurons per layer (as the SRigL paper's neuron-ablation
figure). ``python -m tritonsparse.train.plots RUN_DIR [PLOTS_DIR]``."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: list, path: Path, title: str = ""):
    """Loss and accuracy (train and test) per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-"), ("test", "--")):
        ax1.plot(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
        ax2.plot(epochs, [100 * h[f"{key}_acc"] for h in history], style, label=key)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_active_neurons(history: list, path: Path, title: str = ""):
    """Left: % of active neurons of each sparse layer over the epochs. Right: the final
    % active neurons and density per layer, in network order."""
    plt = _pyplot()
    layers = list(history[-1].get("layers", {}))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if not layers:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "dense model: no sparse layers", ha="center", va="center")
    else:
        epochs = [h["epoch"] for h in history]
        for name in layers:
            frac = [100 * h["layers"][name]["active_neurons"] / h["layers"][name]["out_features"] for h in history]
            ax1.plot(epochs, frac, label=name)
        ax1.set(xlabel="epoch", ylabel="active neurons (%)", title="active neurons per layer", ylim=(0, 105))
        if len(layers) <= 12:
            ax1.legend(fontsize=7)
        last = history[-1]["layers"]
        xs = range(len(layers))
        ax2.bar(xs, [100 * last[n]["active_neurons"] / last[n]["out_features"] for n in layers], label="active neurons")
        ax2.plot(xs, [100 * last[n]["density"] for n in layers], "k.-", label="density")
        ax2.set_xticks(list(xs), layers, rotation=75, fontsize=6)
        ax2.set(ylabel="%", title="final: active neurons and density per layer")
        ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_run(run_dir, plots_dir=None) -> list:
    """Write ``training_curves.png`` and ``active_neurons.png`` into ``run_dir`` (from its
    metrics.json) and copy them to ``plots_dir`` as ``<run name>_*.png``. Returns the paths."""
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "metrics.json").read_text())
    title = run_dir.name
    paths = [run_dir / "training_curves.png", run_dir / "active_neurons.png"]
    plot_training_curves(history, paths[0], title)
    plot_active_neurons(history, paths[1], title)
    if plots_dir:
        dest = Path(plots_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for p in list(paths):
            paths.append(Path(shutil.copy(p, dest / f"{run_dir.name}_{p.name}")))
    return paths


if __name__ == "__main__":  # pragma: no cover
    print("\n".join(map(str, plot_run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))))

"""The training loop: dense, static, SET, RigL and SRigL, with or without Sparse-IFT."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..dst import METHODS as DST_METHODS, DynamicSparsity, sparsify
from ..dst.distributed import wrap_ddp
from ..ift import IFT_KINDS, count_flops, sparse_ift
from ..models import MODELS, build_model
from ._io import CHECKPOINT, PREVIOUS, atomic_write_text, load_checkpoint, save_checkpoint
from . import distributed as ddp
from .data import DATASETS, Dataset, load_dataset

METHODS = ("dense",) + tuple(DST_METHODS)
SCHEDULES = ("cosine", "step")
# the files a run writes into its folder (a fresh run refuses a folder holding any of them)
RUN_FILES = (CHECKPOINT, PREVIOUS, "metrics.json", "metrics.csv", "layers.csv", "training_curves.png",
             "active_neurons.png")
# settings a resumed run must share with the checkpoint (the others may change, e.g. --device)
_RESUME_KEYS = ("model", "dataset", "method", "sparsity", "group_size", "distribution", "ift", "epochs", "max_steps", "batch_size",
                "lr", "schedule", "seed", "delta_t", "alpha", "t_end", "gamma_sal", "hidden", "width")


@dataclass
class TrainConfig:
    """Settings of one training run (the command line's flags; defaults as in the
    RigL / SRigL papers where they apply: SGD with momentum 0.9, ΔT=100, α=0.3,
    T_end=0.75, γ_sal=0.3, cosine learning rate)."""

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    method: str = "srigl"
    sparsity: float = 0.9
    group_size: int = 1  # G > 1: group-shared patterns (tensor-core kernels), see tritonsparse.dst.groups
    distribution: str = "auto"  # "auto": ERK, or uniform with a Sparse-IFT (the paper's iso-FLOP setting)
    ift: str = "none"
    dense_modules: tuple | None = None  # None: the model's default_dense_modules (stem, head)
    hidden: tuple = (256, 256, 256)  # MLP hidden widths
    width: int | None = None  # ResNet-18 first-stage width (64) / ViT embedding dim (192); None: the default
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    lr_milestones: tuple = (0.5, 0.75)  # fractions of training, for schedule="step"
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    delta_t: int = 100
    alpha: float = 0.3
    t_end: float = 0.75
    gamma_sal: float = 0.3
    no_ablation: tuple = ("head",)
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    seed: int = 0
    out: str = "runs/run"
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace the run already in `out`
    skip_nonfinite: bool = False  # skip steps with a non-finite loss or gradient (else stop with an error)
    plots: bool = True  # training curves + active neurons per layer into `out` (and `plots_dir`)
    plots_dir: str | None = None  # also copy the plots here (None: only into `out`)
    progress: bool = True
    stop_after_epochs: int | None = None  # stop this invocation early (preemptible jobs; tests of --resume)
    synthetic_shape: tuple = (1, 8, 8)

    def validate(self):
        """Raise ``ValueError`` naming the first bad setting."""
        choices = {"model": tuple(MODELS), "dataset": DATASETS, "method": METHODS, "ift": IFT_KINDS,
                   "distribution": ("auto", "uniform", "erk"), "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.method == "dense" and self.ift != "none":
            raise ValueError(f"ift={self.ift!r} builds sparse parts: pick a sparse method (static, set, rigl, srigl), "
                             "not method='dense'")
        if isinstance(self.group_size, bool) or int(self.group_size) != self.group_size or self.group_size < 1:
            raise ValueError(f"group_size must be an int >= 1, got {self.group_size!r}")
        if self.group_size > 1 and self.method in ("dense", "rigl"):
            raise ValueError(f"group_size={self.group_size} needs condensed layers: method srigl, set or static, "
                             f"not {self.method!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run in out, "
                             "overwrite starts it again")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for name in ("epochs", "batch_size", "delta_t"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("alpha", "t_end", "gamma_sal", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return dev


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(cfg: TrainConfig, data: Dataset, device: torch.device):
    """Model (with Sparse-IFT and sparsity applied) and the names of its sparse layers."""
    kwargs = {"hidden": tuple(cfg.hidden)} if cfg.model == "mlp" else {}
    if cfg.width is not None and cfg.model != "mlp":
        kwargs["width" if cfg.model == "resnet18" else "dim"] = int(cfg.width)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **kwargs)
    dense_modules = tuple(cfg.dense_modules) if cfg.dense_modules is not None else None
    if cfg.method == "dense":
        return model.to(device), None
    ift = sparse_ift(model, cfg.ift, cfg.sparsity, dense_modules, group_size=int(cfg.group_size))
    model = ift.model.to(device)
    distribution = cfg.distribution if cfg.distribution != "auto" else ("erk" if cfg.ift == "none" else "uniform")
    sparsify(model, cfg.sparsity, cfg.method, distribution, dense_modules=tuple(ift.dense_layers), seed=cfg.seed,
             group_size=ift.group_size)
    return model, ift


def lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    """Multiplier of the base learning rate at a step: linear warm-up, then cosine to 0
    or step decay (``lr_gamma`` at each of ``lr_milestones``, fractions of training)."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    milestones = [int(m * total_steps) for m in cfg.lr_milestones]

    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            t = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        return cfg.lr_gamma ** sum(step >= m for m in milestones)

    return f


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory since the last reset: CUDA allocated on GPU, process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "cpu_max_rss"


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) on the test split."""
    was = model.training
    model.eval()
    loss = correct = 0.0
    n = data.y_test.shape[0]
    for i in range(0, n, batch_size):
        x, y = data.batch("test", torch.arange(i, min(n, i + batch_size)), device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    model.train(was)
    return loss / n, correct / n


def _evaluate_sharded(ctx, model, data: Dataset, device) -> tuple[float, float]:
    """:func:`evaluate`, each rank on every world-th test example, reduced across ranks."""
    if not ctx.active:
        return evaluate(model, data, device)
    shard = dataclasses.replace(data, x_test=data.x_test[ctx.rank::ctx.world], y_test=data.y_test[ctx.rank::ctx.world])
    n = shard.y_test.shape[0]
    loss, acc = evaluate(model, shard, device) if n else (0.0, 0.0)
    loss_sum, correct, n = ddp.sum_across(ctx, loss * n, acc * n, n)
    return loss_sum / n, correct / n


def _rng_state():
    # numpy's state as a tensor and plain numbers, so that the checkpoint loads with weights_only=True
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics(out: Path, history: list):
    """metrics.json, metrics.csv and layers.csv, each written atomically."""
    atomic_write_text(out / "metrics.json", json.dumps(history, indent=1))
    scalars = [{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history]
    fields = list(dict.fromkeys(k for h in scalars for k in h))  # resumed old runs may lack newer columns
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(scalars)
    atomic_write_text(out / "metrics.csv", f.getvalue())
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["epoch", "layer", "density", "active_neurons", "out_features", "fan_in", "nnz"])
    for h in history:
        for name, s in h["layers"].items():
            w.writerow([h["epoch"], name, s["density"], s["active_neurons"], s["out_features"], s["fan_in"], s["nnz"]])
    atomic_write_text(out / "layers.csv", f.getvalue())


def prepare_out(cfg: TrainConfig, write: bool = True) -> Path:
    """The run folder: created if needed; a fresh run refuses a folder that holds another
    run unless ``cfg.overwrite`` (then that run's files are removed first). With
    ``write=False`` (the ranks other than 0 under torchrun) it only checks."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={cfg.out!r} is a file, not a folder")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not cfg.resume:
        if not cfg.overwrite:
            raise FileExistsError(f"out={cfg.out!r} already holds a run ({', '.join(existing)}): pass --resume to "
                                  "continue it, --overwrite to replace it, or another --out")
        if write:
            for f in existing:
                (out / f).unlink()
    if write:
        out.mkdir(parents=True, exist_ok=True)
    return out


class DivergenceError(FloatingPointError):
    """The loss (or, with ``skip_nonfinite``, every step for a whole epoch) was not finite."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, the per-epoch metrics and the
    output folder (``metrics.json``/``metrics.csv``/``layers.csv``, plots, checkpoint)."""

    model: nn.Module
    history: list
    out: Path
    dst: DynamicSparsity | None = None
    ift: object = None
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _last_checkpoint(out: Path) -> str:
    if (out / CHECKPOINT).is_file():
        return f"the checkpoint {out / CHECKPOINT} holds the epochs before this one"
    return "no checkpoint was written"


def _grads_finite(optimizer) -> bool:
    """Whether every gradient the optimizer holds is finite (one device sync)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def train(cfg: TrainConfig) -> TrainResult:
    """Train one model as ``cfg`` says; see :class:`TrainConfig` and ``python -m
    tritonsparse.train --help``. Writes metrics, plots and a checkpoint every epoch to
    ``cfg.out`` (each file atomically; the previous checkpoint is kept as
    ``checkpoint.prev.pt``); with ``cfg.resume`` continues from that checkpoint, giving the
    same result as a run that never stopped. A fresh run refuses an ``out`` that holds a
    run unless ``cfg.overwrite``. A non-finite loss stops the run with
    :class:`DivergenceError` naming the step, or with ``cfg.skip_nonfinite`` the step is
    skipped (no optimizer step, as ``GradScaler`` does; counted in the metrics).

    Under ``torchrun`` (or an initialised process group) it trains data-parallel: DDP
    over the same model, ``batch_size`` is the global batch split over the ranks, DST
    updates are decided on rank 0 from the global gradient, metrics are reduced across
    ranks and only rank 0 writes. A loss is finite or not for all ranks together: a
    non-finite loss on any rank stops, or skips the step on, every rank."""
    from tqdm.auto import tqdm

    cfg.validate()
    ctx = ddp.init(cfg.device)
    try:
        result = _train(cfg, ctx, tqdm)
    except BaseException:
        ddp.abort(ctx)  # a failed run still releases its process group
        raise
    ddp.close(ctx)
    return result


def _train(cfg: TrainConfig, ctx, tqdm) -> TrainResult:
    device = ddp.device_for(ctx, resolve_device(cfg.device))
    ddp.check_batch_size(ctx, cfg.batch_size)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = prepare_out(cfg, write=ctx.is_main)
    seed_everything(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.synthetic_shape, cfg.seed)
    model, ift = build(cfg, data, device)
    net = wrap_ddp(model, device_ids=[device.index] if device.type == "cuda" else None) if ctx.active else model

    n_train = data.y_train.shape[0]
    drop_last = n_train > cfg.batch_size
    steps_per_epoch = n_train // cfg.batch_size if drop_last else 1
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 and not name.endswith("values") else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, steps_per_epoch))
    dst = None
    if cfg.method != "dense":
        dst = DynamicSparsity(net, optimizer, method=cfg.method, total_steps=total_steps, delta_t=cfg.delta_t,
                              alpha=cfg.alpha, t_end=cfg.t_end, gamma_sal=cfg.gamma_sal,
                              no_ablation=tuple(cfg.no_ablation), seed=cfg.seed)

    history, start_epoch, step = [], 0, 0
    skipped_total = skipped_run = 0  # non-finite steps skipped (skip_nonfinite): in all, and in a row
    if cfg.resume:
        ckpt = load_checkpoint(out, map_location=device)
        saved = ckpt["config"]
        saved = {"group_size": 1, **saved}  # checkpoints from before --group-size ran G=1
        diff = [k for k in _RESUME_KEYS if saved.get(k) != cfg.to_dict().get(k)]
        if diff:
            raise ValueError(f"resume: the checkpoint in {out} was made with other settings: "
                             + ", ".join(f"{k}={saved.get(k)!r} (now {cfg.to_dict().get(k)!r})" for k in diff))
        if ckpt.get("world_size", 1) != ctx.world:
            raise ValueError(f"resume: the checkpoint in {out} was made by {ckpt.get('world_size', 1)} process(es), "
                             f"this run has {ctx.world}; an exact resume needs the same world size")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if dst is not None:
            dst.load_state_dict(ckpt["dst"])
        history, start_epoch, step = ckpt["history"], ckpt["epoch"], ckpt["step"]
        skipped_total = int(ckpt.get("skipped_steps", 0))
        _set_rng_state(ckpt["rng_ranks"][ctx.rank] if ctx.active else ckpt["rng"])

    example = data.batch("test", torch.arange(min(2, data.y_test.shape[0])), device)[0]
    dense_flops = None
    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total_steps or (cfg.stop_after_epochs is not None and epochs_run >= cfg.stop_after_epochs):
            break
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)  # data order: a function of (seed, epoch)
        order, bs = torch.randperm(n_train, generator=gen), cfg.batch_size
        if ctx.active:  # the same permutation, this rank's share of every global batch
            order, bs = ddp.epoch_order(ctx, n_train, cfg.seed, epoch), cfg.batch_size // ctx.world
            gen = torch.Generator().manual_seed((cfg.seed * 100003 + epoch) * 1009 + ctx.rank)  # augmentation
        n_steps = min(steps_per_epoch, total_steps - step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss_sum = correct = seen = 0.0
        step_times = []
        t_epoch = time.perf_counter()
        skipped = 0
        # the bar only on a terminal, and only on rank 0: redrawn into a log file it would fill it
        bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (cfg.progress and ctx.is_main and sys.stderr.isatty()))
        for i in bar:
            idx = order[i * bs:(i + 1) * bs] if drop_last else order
            x, y = data.batch("train", idx, device, gen)
            t0 = time.perf_counter()
            out_logits = net(x)
            loss = F.cross_entropy(out_logits, y, label_smoothing=cfg.label_smoothing)
            loss_value = loss.item()
            loss_finite = math.isfinite(loss_value)
            if ctx.active:  # decided by all ranks together: DDP's backward is collective
                loss_finite = ddp.sum_across(ctx, float(not loss_finite))[0] == 0
            where = f"step {step + 1} (epoch {epoch + 1}, batch {i + 1}/{n_steps})"
            if not loss_finite and not cfg.skip_nonfinite:
                what = loss_value if not math.isfinite(loss_value) else "not finite on another rank"
                raise DivergenceError(f"training diverged: the loss is {what} at {where}, lr "
                                      f"{scheduler.get_last_lr()[0]:.3g}; lower --lr, or pass --skip-nonfinite to "
                                      f"skip such steps ({_last_checkpoint(out)})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.skip_nonfinite and not (loss_finite and _grads_finite(optimizer)):
                # as torch.amp.GradScaler does: no optimizer step, the schedules go on
                optimizer.zero_grad(set_to_none=True)
                skipped, skipped_run = skipped + 1, skipped_run + 1
                if skipped_run >= max(10, steps_per_epoch):
                    raise DivergenceError(f"training diverged: {skipped_run} steps in a row up to {where} had a "
                                          "non-finite loss or gradient (--skip-nonfinite); lower --lr")
            else:
                skipped_run = 0
                optimizer.step()
            scheduler.step()
            if dst is not None:
                dst.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
            step += 1
            if math.isfinite(loss_value):
                loss_sum += loss_value * y.shape[0]
                correct += (out_logits.argmax(1) == y).sum().item()
                seen += y.shape[0]
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.3g}")
        bar.close()
        skipped_total += skipped
        loss_sum, correct, seen = ddp.sum_across(ctx, loss_sum, correct, seen)
        test_loss, test_acc = _evaluate_sharded(ctx, model, data, device)
        flops = count_flops(model, example)
        dense_flops = dense_flops or flops.dense_total
        if ctx.active and dst is not None:
            dst.check_consistent()  # every epoch: patterns, values, step and RNG equal on all ranks
        layers = dst.layer_stats() if dst is not None else {}
        nnz = sum(s["nnz"] for s in layers.values())
        numel = sum(s["nnz"] / s["density"] for s in layers.values() if s["density"] > 0)
        mem, mem_kind = peak_memory_mb(device)
        step_ms = 1000.0 * float(np.median(step_times)) if step_times else float("nan")
        step_ms, mem = ddp.sum_across(ctx, step_ms, mem, op="max")  # the slowest rank, the largest memory
        record = {
            "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
            # NaN when every step of the epoch was skipped (skip_nonfinite)
            "train_loss": loss_sum / seen if seen else float("nan"),
            "train_acc": correct / seen if seen else float("nan"),
            "test_loss": test_loss, "test_acc": test_acc,
            "sparsity": 1.0 - nnz / numel if numel else 0.0,
            "active_neurons": sum(s["active_neurons"] for s in layers.values()),
            "flops_per_example": flops.total, "dense_flops_per_example": flops.dense_total,
            "step_time_ms": step_ms, "world_size": ctx.world,
            "epoch_time_s": time.perf_counter() - t_epoch, "peak_mem_mb": mem, "mem_kind": mem_kind,
            "skipped_steps": skipped, "skipped_steps_total": skipped_total,
            # DST updates skipped for non-finite gradients (SRigL keeps the pattern then)
            "skipped_dst_updates": int(getattr(dst, "skipped_updates", 0)) if dst is not None else 0,
            "device": str(device), "layers": layers,
        }
        history.append(record)
        epochs_run += 1
        if cfg.progress and ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.3f} | "
                       f"test loss {test_loss:.4f} acc {test_acc:.3f} | sparsity {record['sparsity']:.3f} | "
                       f"step {record['step_time_ms']:.1f} ms")
        rngs = ddp.gather_objects(ctx, _rng_state())  # every rank's RNG, for an exact resume
        dst_state = dst.state_dict() if dst is not None else None  # collective under DDP
        if not ctx.is_main:
            continue  # only rank 0 writes
        _write_metrics(out, history)
        save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "dst": dst_state, "epoch": epoch + 1, "step": step,
                         "skipped_steps": skipped_total, "history": history, "rng": rngs[0],
                         "world_size": ctx.world, "rng_ranks": rngs if ctx.active else None}, out)
    if history and cfg.plots and ctx.is_main:
        from .plots import plot_run

        plot_run(out, cfg.plots_dir)
    return TrainResult(model, history, out, dst, ift, extra={"rank": ctx.rank, "world_size": ctx.world})

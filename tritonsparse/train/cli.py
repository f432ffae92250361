"""Command line: ``python -m tritonsparse.train`` / ``tritonsparse-train``."""
from __future__ import annotations

import argparse
import json
import sys

from ._io import CheckpointError
from .trainer import METHODS, SCHEDULES, DivergenceError, TrainConfig, resolve_device, train

PROG = "tritonsparse-train"


def _floats(s):
    return tuple(float(v) for v in s.split(",") if v)


def _ints(s):
    return tuple(int(v) for v in s.split(",") if v)


def _names(s):
    return tuple(v for v in s.split(",") if v)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, except where there is none to show (flags,
    ``None``) or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, True) or action.default is argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's parser; ``--help`` shows every default."""
    from ..ift import IFT_KINDS
    from ..models import MODELS
    from .data import DATASETS

    d = TrainConfig()
    p = argparse.ArgumentParser(prog=prog, formatter_class=DefaultsHelpFormatter,
                                description="Train a dense, static, SET, RigL or SRigL sparse network, optionally "
                                            "Sparse-IFT transformed, on the condensed constant fan-in layers.")
    # comma-separated defaults are given as strings: argparse converts them like typed values
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=sorted(MODELS), default=d.model, help="network")
    g.add_argument("--hidden", type=_ints, default=_csv(d.hidden), help="MLP hidden widths, comma separated")
    g.add_argument("--width", type=int, default=None,
                   help="ResNet-18 first-stage width (default 64) or ViT embedding dim (default 192)")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="digits (embedded, no download), cifar10/cifar100 (--data-dir), synthetic")
    g.add_argument("--data-dir", default=d.data_dir, help="folder holding cifar-10-batches-py / cifar-100-python")
    g.add_argument("--synthetic-shape", type=_ints, default=_csv(d.synthetic_shape), help="C,H,W of the synthetic set")
    g = p.add_argument_group("sparsity")
    g.add_argument("--method", choices=METHODS, default=d.method, help="dense, or how the sparse masks evolve")
    g.add_argument("--sparsity", type=float, default=d.sparsity, help="fraction of zero weights in the sparse layers")
    g.add_argument("--group-size", type=int, default=d.group_size,
                   help="G consecutive output rows share one index set (tensor-core kernels; 1: a pattern per row)")
    g.add_argument("--distribution", choices=("auto", "uniform", "erk"), default=d.distribution,
                   help="layer densities; auto: erk, or uniform with --ift (iso-FLOP, as in Sparse-IFT)")
    g.add_argument("--ift", choices=IFT_KINDS, default=d.ift, help="Sparse Iso-FLOP Transformation")
    g.add_argument("--dense-modules", type=_names, default=None,
                   help="module-name prefixes kept dense (default: the model's stem and head)")
    g.add_argument("--delta-t", type=int, default=d.delta_t, help="steps between mask updates (ΔT)")
    g.add_argument("--alpha", type=float, default=d.alpha, help="initial drop fraction α")
    g.add_argument("--t-end", type=float, default=d.t_end, help="fraction of training after which masks freeze")
    g.add_argument("--gamma-sal", type=float, default=d.gamma_sal, help="SRigL neuron-ablation threshold γ_sal")
    g.add_argument("--no-ablation", type=_names, default=_csv(d.no_ablation), help="module prefixes never ablated")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs of training")
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many optimizer steps")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of SGD")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 on weights (not biases, norms)")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear learning-rate warm-up")
    g.add_argument("--lr-milestones", type=_floats, default=_csv(d.lr_milestones),
                   help="fractions of training where schedule=step multiplies the lr by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="factor of the step schedule")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="of the cross-entropy loss")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the model, masks and data order")
    g.add_argument("--out", default=d.out, help="output folder: metrics, plots, checkpoint")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it a fresh run refuses such a folder)")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip optimizer steps whose loss or gradient is not finite, as torch.amp.GradScaler does "
                        "(counted in the metrics); without it a non-finite loss stops the run with an error")
    g.add_argument("--plots-dir", default=d.plots_dir, help="also copy the plots here (default: only into --out)")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="write no plots")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar and no per-epoch lines (the bar is drawn only on a terminal)")
    g.add_argument("--stop-after-epochs", type=int, default=None,
                   help="stop after this many epochs of this invocation (continue later with --resume)")
    return p


def _fail(prog: str, e: BaseException, code: int) -> int:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return code


def main(argv=None, prog: str = PROG) -> int:
    """Parse ``argv``, train, print the final metrics as JSON. Returns the exit code: 0;
    2 for a bad setting, a missing file or an ``--out`` that holds another run; 1 for a
    diverged run or an unreadable checkpoint. Those errors are printed as one line."""
    args = vars(build_parser(prog).parse_args(argv))
    args["plots_dir"] = args["plots_dir"] or None
    cfg = TrainConfig(**args)
    try:
        cfg.validate()
        resolve_device(cfg.device)
    except ValueError as e:
        return _fail(prog, e, 2)
    try:
        result = train(cfg)
    except (FileNotFoundError, FileExistsError) as e:
        return _fail(prog, e, 2)
    except (DivergenceError, CheckpointError) as e:
        return _fail(prog, e, 1)
    except ValueError as e:  # settings that clash with the data or the checkpoint (resume)
        return _fail(prog, e, 2)
    if result.extra.get("rank", 0) == 0:  # under torchrun, rank 0 prints
        final = {k: v for k, v in result.final.items() if k != "layers"}
        print(json.dumps(final, indent=1))
    return 0

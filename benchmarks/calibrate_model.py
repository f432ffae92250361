"""Calibrate the SASS roofline model (:mod:`tritonsparse.sass.model`) against published
H100 timings of open-source Triton kernels (issue 12).

The published figures (each row names repository, file, commit and GPU; figures copied
with attribution, code never):

- Liger-Kernel's ``triton.testing.do_bench`` medians on an "NVIDIA H100 80GB HBM3"
  (``benchmark/data/all_benchmark_data.csv`` of github.com/linkedin/Liger-Kernel), in
  ``benchmarks/calibration/liger_h100.csv``;
- conch's README table ("NVIDIA H100", ``do_bench`` medians of its ``benchmarks/*.py``
  scripts at their default shapes; github.com/stackav-oss/conch): paged attention (KV
  blocks gathered through a block table: a gather point), vLLM copy-blocks and
  reshape-and-cache, in ``benchmarks/calibration/conch_h100.csv``.

Their code is imported, never copied: the script imports the ``liger-kernel`` and
``conch-triton-kernels`` packages (the optional extra ``.[calibrate]``, or ``--install``
into a private directory, pip ``--no-deps``) and runs their public functions on CPU
tensors with every Triton launch intercepted
(:func:`tritonsparse.sass.compile.intercept_launches`). Each launch is compiled for sm_90
with the runtime's specialization, its SASS counted and modeled exactly as the project's
report does; an op's time is the sum of its launches (each the modeled-fastest of the
configs its autotuner would time) plus the PyTorch operators it runs. No kernel runs;
no GPU is needed.

Fitting is honest: the kernel *families* are split in two folds; the model's constants
(HBM efficiency, launch floor, memory latency, L2 bandwidth, tensor-core rate) are fitted
on one fold and the error is reported on the other, and vice versa; once with all five
and once with only HBM efficiency and launch floor (``TWO_PARAMS``, the recommended
calibration: it generalizes across families, the five-constant fit does not). Errors are
|log(modeled / measured)|, median and 90th percentile, per regime. ``--conclusions``
re-models the project's own issue-8 problems with the recommended constants.

    pip install -e .[calibrate]          # or: --install --target DIR (pip --no-deps)
    python benchmarks/calibrate_model.py                 # compile + model + fit + plot
    python benchmarks/calibrate_model.py --refit-only    # fit + plot from the committed launch CSV
    python benchmarks/calibrate_model.py --families paged_attention copy_blocks   # recompute some families
    python benchmarks/calibrate_model.py --extract /path/to/all_benchmark_data.csv --commit SHA

Outputs go to ``./calibration_results`` (``--out-dir``) unless ``--repo-results`` is
given, which writes the committed files: ``benchmarks/results/calibration_h100_launches.csv``
(per launch and config: the model's terms at the reference constants),
``calibration_h100_points.csv`` (per published point: measured, modeled, held-out
modeled), ``calibration_h100_summary.csv`` (fitted constants, error statistics),
``calibration_h100_conclusions.csv`` (``--conclusions``) and ``plots/calibration_h100.png``.
All modeled times are **modeled** (H100 SXM roofline of ``tritonsparse.sass.model``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PUBLISHED_CSV = os.path.join(ROOT, "benchmarks", "calibration", "liger_h100.csv")
CONCH_CSV = os.path.join(ROOT, "benchmarks", "calibration", "conch_h100.csv")
PUBLISHED_CSVS = (PUBLISHED_CSV, CONCH_CSV)
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
PLOTS_DIR = os.path.join(ROOT, "plots")
DEFAULT_OUT_DIR = "calibration_results"  # relative to the current folder (git-ignored in the checkout)
LAUNCHES_NAME, POINTS_NAME, SUMMARY_NAME = ("calibration_h100_launches.csv", "calibration_h100_points.csv",
                                            "calibration_h100_summary.csv")
CONCLUSIONS_NAME, PLOT_NAME = "calibration_h100_conclusions.csv", "calibration_h100.png"
# the committed results (what the README quotes; --repo-results rewrites them)
LAUNCHES_CSV = os.path.join(RESULTS_DIR, LAUNCHES_NAME)
POINTS_CSV = os.path.join(RESULTS_DIR, POINTS_NAME)
SUMMARY_CSV = os.path.join(RESULTS_DIR, SUMMARY_NAME)
CONCLUSIONS_CSV = os.path.join(RESULTS_DIR, CONCLUSIONS_NAME)
PLOT_PNG = os.path.join(PLOTS_DIR, PLOT_NAME)

LIGER_VERSION = "0.8.5"  # the package whose kernels are compiled (the figures name the version they measured)
LIGER_REPO = "linkedin/Liger-Kernel"
LIGER_FILE = "benchmark/data/all_benchmark_data.csv"
H100_NAME = "NVIDIA H100 80GB HBM3"
CONCH_VERSION = "1.3"  # conch-triton-kernels on PyPI (the README figures were measured with 1.1.0)

# (kernel_name, provider) of the published rows used, and the family each belongs to
FAMILY_OF = {
    ("layer_norm", "liger"): "layer_norm",
    ("fused_add_rms_norm", "liger_fused_add_rms_norm"): "fused_add_rms_norm",
    ("relu_squared", "liger"): "relu_squared",
    ("tvd", "liger"): "tvd",
    ("llama4_rope", "liger"): "llama4_rope",
    ("fused_moe", "liger"): "fused_moe",
    ("paged_attention", "conch"): "paged_attention",
    ("copy_blocks", "conch"): "copy_blocks",
    ("reshape_and_cache", "conch"): "reshape_and_cache",
}
CONCH_FAMILIES = ("paged_attention", "copy_blocks", "reshape_and_cache")
# the two folds of families (each fold is fitted on the other and tested on itself)
# (one gather family in each fold, so the gather regime is held out both ways)
FOLDS = {"A": ("layer_norm", "tvd", "fused_moe", "copy_blocks"),
         "B": ("fused_add_rms_norm", "relu_squared", "llama4_rope", "paged_attention", "reshape_and_cache")}
GATHER_FAMILIES = ("fused_moe", "paged_attention")
TWO_PARAMS = ("hbm_efficiency", "launch_floor_s")  # the constants streaming kernels pin down
TWO = "HBM + floor only"  # the recommended calibration's name in the summary
PER_POINT = "points weighted equally"  # the weighting sensitivity's name
REGIMES = ("memory-bound", "latency-bound", "tensor-core/gather")
LATENCY_BOUND_S = 10e-6  # a point whose compulsory bytes take less than this at HBM peak

PUBLISHED_COLUMNS = ["source_repo", "source_file", "source_commit", "gpu_name", "kernel_name", "kernel_provider",
                     "mode", "x_name", "x_value", "extra_config", "measured_version", "timestamp",
                     "median_ms", "p20_ms", "p80_ms"]
TERM_NAMES = ["issue", "fma pipe", "alu pipe", "cvt pipe", "mufu pipe", "L1/LSU", "tensor pipe", "latency", "L2",
              "HBM"]
LAUNCH_COLUMNS = ["point", "launch", "kind", "kernel", "config", "warps", "stages", "regs", "shared", "ctas",
                  "occupancy", "waves", "trips", "loop_instr", "hbm_bytes", "flops", "dtype", "modeled_us", "bound"] + \
                 [f"t_{n}" for n in TERM_NAMES]


# -- published figures --------------------------------------------------------------------
def extract_published(src_csv: str, commit: str, out_csv: str = PUBLISHED_CSV) -> int:
    """Copy the H100 rows of Liger's benchmark CSV (speed, forward/backward, the providers
    in ``FAMILY_OF``) into ``out_csv`` with their source. Returns the number of rows."""
    if not (isinstance(commit, str) and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit.lower())):
        raise ValueError(f"commit must be a 40-hex-digit git commit, got {commit!r}")
    rows = []
    with open(src_csv, newline="") as f:
        for r in csv.DictReader(f):
            if (r["gpu_name"] != H100_NAME or r["metric_name"] != "speed" or r["metric_unit"] != "ms"
                    or r["kernel_operation_mode"] not in ("forward", "backward")
                    or (r["kernel_name"], r["kernel_provider"]) not in FAMILY_OF):
                continue
            rows.append({"source_repo": LIGER_REPO, "source_file": LIGER_FILE, "source_commit": commit,
                         "gpu_name": r["gpu_name"], "kernel_name": r["kernel_name"],
                         "kernel_provider": r["kernel_provider"], "mode": r["kernel_operation_mode"],
                         "x_name": r["x_name"], "x_value": r["x_value"], "extra_config": r["extra_benchmark_config_str"],
                         "measured_version": r["liger_version"], "timestamp": r["timestamp"],
                         "median_ms": r["y_value_50"], "p20_ms": r["y_value_20"], "p80_ms": r["y_value_80"]})
    os.makedirs(os.path.dirname(out_csv), exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PUBLISHED_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def read_published(paths=PUBLISHED_CSVS) -> list[dict]:
    """The published points of ``paths`` (one CSV or several), each with an ``id``
    (family/mode/x) and its ``family``. A row without its source is an error."""
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            part = list(csv.DictReader(f))
        for r in part:
            missing = [c for c in ("source_repo", "source_file", "source_commit", "gpu_name") if not r.get(c)]
            if missing:
                raise ValueError(f"{path}: a published row lacks its source {missing}: {r}")
            key = (r["kernel_name"], r["kernel_provider"])
            if key not in FAMILY_OF:
                raise ValueError(f"{path}: unknown kernel {key}; expected one of {sorted(FAMILY_OF)}")
            r["family"] = FAMILY_OF[key]
            r["id"] = f"{r['family']}/{r['mode']}/{r['x_name']}={r['x_value']}"
        rows += part
    return rows


# -- the published kernels ------------------------------------------------------------------
def _ensure(module: str, requirement: str, install: bool, target: str | None):
    """Import ``module`` (installing ``requirement`` with pip ``--no-deps`` into ``target``
    first when ``install``: no CUDA build of torch is pulled in). Returns the module."""
    import importlib

    if target:
        target = os.path.abspath(target)
        if target not in sys.path:
            sys.path.insert(0, target)
    try:
        return importlib.import_module(module)
    except ImportError:
        if not install:
            raise RuntimeError(f"{requirement} is not installed: pip install -e .[calibrate] (or pass --install)")
        if not target:
            raise ValueError("--install needs --target (a directory for the package)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, requirement],
                       check=True)
        importlib.invalidate_caches()
        return importlib.import_module(module)


def ensure_liger(install: bool = False, target: str | None = None):
    """Import ``liger_kernel`` (see :func:`_ensure`; ``liger-kernel==LIGER_VERSION``)."""
    os.environ.setdefault("LIGER_FUSED_MOE_AUTOTUNE", "0")  # one GEMM config per MoE kernel (see README)
    return _ensure("liger_kernel", f"liger-kernel=={LIGER_VERSION}", install, target)


def ensure_conch(install: bool = False, target: str | None = None):
    """Import ``conch`` (see :func:`_ensure`; ``conch-triton-kernels==CONCH_VERSION``)."""
    return _ensure("conch", f"conch-triton-kernels=={CONCH_VERSION}", install, target)


@dataclass
class Captured:
    """What one published op ran: its Triton launches and its PyTorch operators."""

    launches: list
    torch_ops: list
    trips: dict = field(default_factory=dict)  # launch index -> callable(config kwargs) -> trips
    hbm: dict = field(default_factory=dict)  # launch index -> compulsory DRAM bytes, where not its storages


def _capture(fn, hook=None):
    """Run ``fn`` with launches intercepted; ``hook(launch)`` runs after each launch is recorded."""
    from triton.runtime.jit import JITFunction
    from triton.runtime.autotuner import Autotuner

    from tritonsparse.sass.compile import intercept_launches

    ops: list = []
    with intercept_launches(ops) as launches:
        if hook is not None:
            saved = {cls: cls.run for cls in (Autotuner, JITFunction)}

            def wrap(cls):
                inner = saved[cls]

                def run(self, *a, **k):
                    out = inner(self, *a, **k)
                    n_ops = len(ops)
                    hook(launches[-1])
                    del ops[n_ops:]  # the hook's own PyTorch work is not the op's
                    return out

                return run

            for cls in saved:
                cls.run = wrap(cls)
        try:
            out = fn()
        finally:
            if hook is not None:
                for cls, run in saved.items():
                    cls.run = run
    return list(launches), ops, out


SMS = 132  # H100 SXM: what Liger's launchers read from the device on CUDA (they see 1 on CPU)


def _fix_sm_count(launch, n_rows: int):
    """Liger's norm backward kernels launch one program per SM with ``rows_per_program``
    rows each; on CPU tensors the launcher sees one SM. Re-state the launch for 132 SMs."""
    launch.grid = (SMS,)
    launch.args["rows_per_program"] = math.ceil(n_rows / SMS)


def _cfg(point) -> dict:
    return json.loads(point["extra_config"])


def _dtype(name):
    import torch

    return {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}[name]


MAX_CAPTURE_BYTES = 6e9  # host memory a capture may touch (the PyTorch operators around the kernels do run)


class SkipPoint(Exception):
    """A published point this host cannot capture (said why, and left out of the fit)."""


def capture_point(point: dict) -> list[tuple[str, Captured]]:
    """The launches of one published point (its mode's launches only)."""
    import torch

    fam, mode, x = point["family"], point["mode"], int(float(point["x_value"]))
    cfg = _cfg(point)
    torch.manual_seed(0)

    def fwd_bwd(make_forward, n_rows_fix=None, bwd_kernel=None):
        f_l, f_ops, y = _capture(make_forward)
        if mode == "forward":
            return Captured(f_l, f_ops)
        out = y[0] if isinstance(y, tuple) else y
        dy = torch.empty_like(out)
        b_l, b_ops, _ = _capture(lambda: out.backward(dy))
        if n_rows_fix is not None:
            for launch in b_l:
                if launch.name == bwd_kernel:
                    _fix_sm_count(launch, n_rows_fix)
        return Captured(b_l, b_ops)

    if fam == "layer_norm":
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction

        M, N, dt = cfg["M"], x, _dtype(cfg["dtype"])
        X = torch.empty(M, N, dtype=dt).requires_grad_()
        W = torch.empty(N, dtype=dt).requires_grad_()
        B = torch.empty(N, dtype=dt).requires_grad_()
        cap = fwd_bwd(lambda: LigerLayerNormFunction.apply(X, W, B, cfg["eps"]), M, "_layer_norm_backward_kernel")
        for i, launch in enumerate(cap.launches):
            if launch.name == "_layer_norm_backward_kernel":
                cap.trips[i] = lambda kw, launch=launch: int(launch.args["rows_per_program"])
    elif fam == "fused_add_rms_norm":
        from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

        M, N, dt = cfg["M"], x, _dtype(cfg["dtype"])
        X = torch.empty(M, N, dtype=dt).requires_grad_()
        R = torch.empty(M, N, dtype=dt).requires_grad_()
        W = torch.empty(N, dtype=dt).requires_grad_()
        # the liger_fused_add_rms_norm provider: LigerFusedAddRMSNorm's defaults (offset 0, "llama" casting)
        cap = fwd_bwd(lambda: LigerFusedAddRMSNormFunction.apply(X, R, W, cfg["eps"], 0.0, "llama", False), M,
                      "_fused_add_rms_norm_backward_kernel")
        for i, launch in enumerate(cap.launches):
            if launch.name == "_fused_add_rms_norm_backward_kernel":
                cap.trips[i] = lambda kw, launch=launch: int(launch.args["rows_per_program"])
    elif fam == "relu_squared":
        from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction

        X = torch.empty(cfg["M"], x, dtype=_dtype(cfg["dtype"])).requires_grad_()
        cap = fwd_bwd(lambda: LigerReLUSquaredFunction.apply(X))
    elif fam == "tvd":
        from liger_kernel.ops.tvd import LigerTVDLossFunction

        BT = cfg["B"] * cfg["T"]
        if mode == "backward" and 4 * BT * x * 4 > MAX_CAPTURE_BYTES:
            raise SkipPoint(f"the backward's PyTorch operators would touch {4 * BT * x * 4 / 1e9:.1f} GB on this host")
        # Liger's harness feeds softmax(randn) with requires_grad: its backward runs PyTorch's
        # softmax backward after the loss's; the forward timing starts at the loss
        P = torch.empty(BT, x).requires_grad_()  # values do not matter: no kernel runs
        P = P.softmax(dim=-1) if mode == "backward" else P
        Q = torch.empty(BT, x)
        cap = fwd_bwd(lambda: LigerTVDLossFunction.apply(P, Q, None, "batchmean", -100))
        for i, launch in enumerate(cap.launches):
            if launch.name == "_tv_distance_kernel":
                cap.trips[i] = lambda kw, launch=launch: math.ceil(launch.args["n_cols"] / launch.args["BLOCK_SIZE"])
    elif fam == "llama4_rope":
        from liger_kernel.transformers.llama4_rope import liger_llama4_text_rotary_pos_emb

        dt = _dtype(cfg["dtype"])
        T = x if point["x_name"] == "T" else cfg["seq_len"]
        Hd = x if point["x_name"] == "H" else cfg["hidden_size"]
        nq, nkv = cfg["num_q_heads"], cfg["num_kv_heads"]
        hd = Hd // nq
        q = torch.empty(1, T, nq, hd, dtype=dt).requires_grad_()
        k = torch.empty(1, T, nkv, hd, dtype=dt).requires_grad_()
        freqs = torch.polar(torch.ones(T, hd // 2), torch.randn(T, hd // 2)).unsqueeze(0)
        cap = fwd_bwd(lambda: liger_llama4_text_rotary_pos_emb(q, k, freqs))
    elif fam == "fused_moe":
        cap = _capture_moe(point, cfg, x, mode)
    elif fam in CONCH_FAMILIES:
        cap = _capture_conch(fam, cfg)
    else:
        raise ValueError(f"unknown family {fam!r}")
    return [(point["id"], cap)]


def _capture_moe(point, cfg, x, mode) -> Captured:
    """Liger's fused MoE (routing metadata, gather + up-projection + SwiGLU, down-projection,
    token aggregation; and its backward) at the published shape. The routing prefix sum is
    computed in PyTorch when its launch is intercepted (the launcher reads its result)."""
    import torch
    from liger_kernel.ops import fused_moe as fm
    from liger_kernel.ops.fused_moe import LigerFusedMoEFunction

    T = x if cfg["sweep_dim"] == "T" else cfg["T"]
    E = x if cfg["sweep_dim"] == "E" else cfg["E"]
    H, I, K = cfg["H"], cfg["intermediate_dim"], cfg["K"]
    dt = _dtype(cfg["dtype"])
    X = torch.empty(T, H, dtype=dt).requires_grad_()
    gup = torch.empty(E, 2 * I, H, dtype=dt).requires_grad_()
    dn = torch.empty(E, H, I, dtype=dt).requires_grad_()
    logits = torch.randn(T, E)
    idx = torch.topk(logits, K, dim=-1).indices.to(torch.int32)
    wts = torch.softmax(torch.gather(logits, 1, idx.long()), dim=-1).to(dt).requires_grad_()
    counts = torch.bincount(idx.flatten().long(), minlength=E)
    block_m = fm.BLOCK_M_TOKEN

    def hook(launch):
        if launch.name == "_moe_router_prefix_sum_kernel":
            start = torch.zeros(E + 1, dtype=torch.int64)
            start[1:] = torch.cumsum(counts, 0)
            tiles = torch.zeros(E + 1, dtype=torch.int64)
            tiles[1:] = torch.cumsum((counts + block_m - 1) // block_m, 0)
            launch.args["expert_start_idx_ptr" if "expert_start_idx_ptr" in launch.args else _arg(launch, 1)].copy_(start)
            launch.args[_arg(launch, 2)].copy_(tiles)

    f_l, f_ops, y = _capture(lambda: LigerFusedMoEFunction.apply(X, gup, dn, idx, wts), hook)
    per_expert = T * K / E  # tokens per expert (the dW loops run over them)
    if mode == "forward":
        cap = Captured(f_l, f_ops)
    else:
        dy = torch.empty_like(y)
        b_l, b_ops, _ = _capture(lambda: y.backward(dy))
        cap = Captured(b_l, b_ops)
    dims = {"H_dim": H, "I_dim": I}
    for i, launch in enumerate(cap.launches):
        bound = _loop_bound(launch.name)
        if bound == "M_e":
            cap.trips[i] = lambda kw: max(1, math.ceil(per_expert / kw["BLOCK_K"]))
        elif bound in dims:
            cap.trips[i] = lambda kw, n=dims[bound]: max(1, math.ceil(n / kw["BLOCK_K"]))
        elif bound == "K_dim":
            cap.trips[i] = lambda kw: max(1, math.ceil(K / kw["BLOCK_K"]))
    return cap


def _capture_conch(fam: str, cfg: dict) -> Captured:
    """One of conch's ops at its benchmark script's default shape (``cfg``, from the
    published row). The inputs are built as the script builds them (same seed, same
    random sequence lengths and mappings); the caches are left uninitialized (no kernel
    runs). These launches touch a part of their tensors only, so their compulsory bytes
    are stated per launch (``Captured.hbm``) instead of the tensors' storages."""
    import random

    import torch

    dt = _dtype(cfg["dtype"])
    random.seed(cfg["seed"])  # what the scripts' seed_everything does before drawing
    torch.manual_seed(cfg["seed"])
    esize = torch.empty((), dtype=dt).element_size()
    if fam == "paged_attention":
        from conch.ops.attention.paged_attention import paged_attention

        B, S, bs = cfg["batch_size"], cfg["seq_len"], cfg["cache_block_size"]
        nq, nkv, hd = cfg["num_query_heads"], cfg["num_kv_heads"], cfg["head_dim"]
        q = torch.empty(B, nq, hd, dtype=dt)
        seq_lens = [random.randint(1, S) for _ in range(B)]  # the script's draw (create_tensors)
        seq_lens[-1] = S
        n_blocks = B * S // bs
        per_seq = (max(seq_lens) + bs - 1) // bs
        table = torch.as_tensor([[random.randint(0, n_blocks - 1) for _ in range(per_seq)] for _ in range(B)],
                                dtype=torch.int32)
        kc = torch.empty(n_blocks, bs, nkv, hd, dtype=dt)
        vc = torch.empty_like(kc)
        out = torch.empty_like(q)
        scales = (torch.full((1,), 1.0, dtype=dt), torch.full((1,), 1.0, dtype=dt))
        launches, ops, _ = _capture(lambda: paged_attention(
            q, kc, vc, table, torch.as_tensor(seq_lens, dtype=torch.int32), output=out, scale=float(hd ** -0.5),
            softcap=cfg["softcap"], kv_cache_dtype=cfg["kv_cache_dtype"], k_scale=scales[0], v_scale=scales[1]))
        cap = Captured(launches, ops)
        active = [(n + bs - 1) // bs for n in seq_lens]  # cache blocks each sequence reads
        for i, launch in enumerate(launches):
            if launch.name == "_paged_attention_compute_splits_kernel":
                per_split = int(launch.args["num_cache_blocks_per_split"])
                splits = launch.grid[1]
                # each program loops over per_split blocks and skips those past its sequence:
                # the mean number of blocks a program reads is the loop's trips
                cap.trips[i] = lambda kw, n=sum(active), p=B * splits: max(1, math.ceil(n / p))
                # K and V rows read (a physical block drawn twice by the random table is read
                # twice: the two reads are in different sequences, far apart in time)
                kv = sum(n * nkv * hd * esize * 2 for n in seq_lens)
                rest = {k: v for k, v in launch.args.items() if k not in ("key_cache_ptr", "value_cache_ptr")}
                cap.hbm[i] = kv + _storage_bytes(rest) + sum(active) * 4 * nkv  # + block-table reads
    elif fam == "copy_blocks":
        from conch.ops.vllm.copy_blocks import copy_blocks

        L, bs, nkv, hd = cfg["num_layers"], cfg["cache_block_size"], cfg["num_kv_heads"], cfg["head_dim"]
        nb, nm = cfg["num_blocks"], cfg["num_mappings"]
        caches = [[torch.empty(nb, bs * nkv * hd, dtype=dt) for _ in range(L)] for _ in range(2)]
        src = random.sample(range(nb), nm)
        dst = random.sample(sorted(set(range(nb)) - set(src)), 2 * nm)
        mapping = torch.tensor([(src[i // 2], dst[i]) for i in range(2 * nm)], dtype=torch.int64).view(-1, 2)
        launches, ops, _ = _capture(lambda: copy_blocks(caches[0], caches[1], mapping))
        cap = Captured(launches, ops)
        page = bs * nkv * hd
        for i, launch in enumerate(launches):
            if launch.name == "_copy_blocks_kernel":
                chunk = int(launch.args["cxpr_chunk_size"])
                cap.trips[i] = lambda kw, t=math.ceil(page / chunk): t
                # per layer, K and V: each source page read once (its two copies run in adjacent
                # programs, the second read hits L2) and each destination page written once
                cap.hbm[i] = L * 2 * (nm + 2 * nm) * page * esize + mapping.numel() * 8 + 2 * L * 8
    elif fam == "reshape_and_cache":
        from conch.ops.vllm.reshape_and_cache import reshape_and_cache

        T, bs, nkv, hd, nb = cfg["num_tokens"], cfg["cache_block_size"], cfg["num_kv_heads"], cfg["head_dim"], \
            cfg["num_blocks"]
        slots = torch.tensor(random.sample(range(bs * nb), T), dtype=torch.long)
        kv = torch.empty(T, 2, nkv, hd, dtype=dt)
        key, value = kv.unbind(dim=1)
        kc = torch.empty(nb, bs, nkv, hd, dtype=dt)
        vc = torch.empty_like(kc)
        scales = (torch.full((1,), 2.0), torch.full((1,), 3.0))
        launches, ops, _ = _capture(lambda: reshape_and_cache(key, value, kc, vc, slots, cfg["kv_cache_dtype"],
                                                              *scales))
        cap = Captured(launches, ops)
        for i, launch in enumerate(launches):
            # the new K and V rows are read once and scattered into the caches once
            cap.hbm[i] = 2 * kv.numel() * esize + slots.numel() * 8
    else:
        raise ValueError(f"unknown conch family {fam!r}")
    return cap


def _arg(launch, i):
    """Name of the ``i``-th argument of a launch's kernel."""
    from tritonsparse.sass.compile import jit_function

    return jit_function(launch.kernel).arg_names[i]


def _loop_bound(kernel_name: str) -> str | None:
    """The argument the hot loop of a Liger MoE kernel runs over (read from its source
    text at run time: ``for k in tl.range(0, <bound>, BLOCK_K)``)."""
    import inspect
    import re

    from liger_kernel.ops import fused_moe_kernels as fk

    fn = getattr(fk, kernel_name, None)
    if fn is None:
        return None
    from tritonsparse.sass.compile import jit_function

    src = inspect.getsource(jit_function(fn).fn)
    m = re.search(r"for \w+ in tl\.range\((?:0, )?(?:triton\.cdiv\()?(\w+)", src)
    return m.group(1) if m else None


# -- modeling ----------------------------------------------------------------------------------
def _storage_bytes(args: dict) -> int:
    """Compulsory DRAM bytes of a launch: each distinct tensor storage among its arguments once."""
    import torch

    seen, total = set(), 0
    for v in args.values():
        if isinstance(v, torch.Tensor):
            st = v.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def model_launch(launch, trips_fn=None, gpu=None, max_configs: int = 8, arch: int = 90, keep_summaries=None,
                 hbm_bytes: float | None = None) -> list[dict]:
    """Compile every config the launch's autotuner would time (at most ``max_configs``),
    count its SASS and model it with ``gpu``'s constants. One record per config, with the
    model's terms (seconds) so the constants can be refitted without compiling again.
    ``hbm_bytes``: the launch's compulsory DRAM bytes (default: every distinct tensor
    storage among its arguments, once)."""
    from tritonsparse.sass import model as M
    from tritonsparse.sass.compile import compile_spec, disassemble, resource_usage
    from tritonsparse.sass.parse import summarize

    gpu = gpu or M.H100_SXM
    hbm = _storage_bytes(launch.args) if hbm_bytes is None else hbm_bytes
    recs = []
    for cfg in launch.configs()[:max_configs]:
        compiled = compile_spec(launch.specialization(cfg, arch=arch))
        usage = resource_usage(compiled.asm["cubin"])
        summ = summarize(disassemble(compiled.asm["cubin"]))
        g = launch.grid_for(cfg)
        trips = int(trips_fn(cfg.kwargs)) if (trips_fn is not None and summ.loop_counts) else (1 if summ.loop_counts else 0)
        kw = dict(regs=usage["regs"], shared=max(usage["shared"], compiled.metadata.shared), warps=cfg.num_warps,
                  ctas=g[0] * g[1] * g[2], useful_fmas=0, hbm_bytes=hbm, trips=trips)
        t = M.kernel_time(summ, gpu=gpu, **kw)
        if keep_summaries is not None:
            keep_summaries.append((summ, kw))
        rec = {"kind": "kernel", "kernel": launch.name, "config": json.dumps(cfg.kwargs, sort_keys=True),
               "warps": cfg.num_warps, "stages": cfg.num_stages, "regs": usage["regs"], "shared": kw["shared"],
               "ctas": kw["ctas"], "occupancy": t.occupancy, "waves": t.waves, "trips": t.trips,
               "loop_instr": summ.loop_counts.get("total", 0) if summ.loop_counts else 0, "hbm_bytes": hbm,
               "modeled_us": t.total * 1e6, "bound": t.bound}
        for n in TERM_NAMES:
            rec[f"t_{n}"] = t.terms.get(n, "")
        recs.append(rec)
    return recs


# -- the model re-stated over its terms (for refitting without compiling) ------------------
PARAMS = ("hbm_efficiency", "launch_floor_s", "mem_latency_cycles", "l2_bw", "tensor_scale")
# physically plausible ranges (a fit outside them would be the fit explaining a mechanism the
# model lacks): HBM 60-100% of peak; 1-10 us per launch (kernel launch + the Python launcher
# under do_bench); one trip's dependent load chain 200-1500 cycles (L2 hit .. HBM miss + queueing);
# L2 3-10 TB/s; tensor cores at 25-150% of the dense-peak rate the model assumes
BOUNDS = {"hbm_efficiency": (0.6, 1.0), "launch_floor_s": (1e-6, 10e-6), "mem_latency_cycles": (200.0, 1500.0),
          "l2_bw": (3e12, 10e12), "tensor_scale": (0.25, 1.5)}


def reference_params(gpu=None) -> dict:
    """The model's own constants (what the report uses), as fit parameters."""
    from tritonsparse.sass import model as M

    gpu = gpu or M.H100_SXM
    return {"hbm_efficiency": gpu.hbm_efficiency, "launch_floor_s": gpu.launch_floor_s,
            "mem_latency_cycles": gpu.mem_latency_cycles, "l2_bw": gpu.l2_bw, "tensor_scale": 1.0}


def gpu_with(params: dict, gpu=None):
    """The model's GPU with fitted ``params`` (``tensor_scale`` multiplies every tensor-core rate)."""
    from tritonsparse.sass import model as M

    gpu = gpu or M.H100_SXM
    bad = [k for k in params if k not in PARAMS]
    if bad:
        raise ValueError(f"params: unknown constant(s) {bad}; expected {PARAMS}")
    p = {**reference_params(gpu), **params}
    return M.with_constants(gpu, hbm_efficiency=p["hbm_efficiency"], launch_floor_s=p["launch_floor_s"],
                            mem_latency_cycles=p["mem_latency_cycles"], l2_bw=p["l2_bw"],
                            tensor_fma_per_clk={k: v * p["tensor_scale"] for k, v in gpu.tensor_fma_per_clk.items()})


_GPU_CACHE: dict = {}


def _gpu_with_cached(params: dict, gpu):
    key = (gpu.name, tuple(sorted(params.items())))
    if key not in _GPU_CACHE:
        _GPU_CACHE[key] = gpu_with(params, gpu)
    return _GPU_CACHE[key]


def launch_seconds(rec: dict, params: dict, gpu=None) -> float:
    """One config's modeled seconds under ``params``, from its terms at the reference
    constants: HBM, L2 and tensor terms rescale, the latency term is re-derived from its
    waves x trips x (latency + loop instructions), the launch floor is added. Equal to
    ``model.kernel_time`` with :func:`gpu_with` (checked by the tests)."""
    from tritonsparse.sass import model as M

    gpu = gpu or M.H100_SXM
    if rec["kind"] == "torch_op":
        return M.torch_op_time(float(rec["hbm_bytes"]), _gpu_with_cached(params, gpu), float(rec.get("flops") or 0),
                               rec.get("dtype") or "fp32")
    ref = reference_params(gpu)
    terms = {}
    for n in TERM_NAMES:
        v = rec[f"t_{n}"]
        if v == "" or v is None:
            continue
        terms[n] = float(v)
    if not terms:
        return math.inf
    terms["HBM"] = float(rec["hbm_bytes"]) / (gpu.hbm_bw * params["hbm_efficiency"])
    if "L2" in terms:
        terms["L2"] *= ref["l2_bw"] / params["l2_bw"]
    if "tensor pipe" in terms:
        terms["tensor pipe"] /= params["tensor_scale"]
    if "latency" in terms:
        terms["latency"] = (int(rec["waves"]) * int(rec["trips"]) * (params["mem_latency_cycles"] + int(rec["loop_instr"]))
                            / gpu.clock_hz)
    return max(terms.values()) + params["launch_floor_s"]


def point_seconds(recs: list[dict], params: dict) -> float:
    """A point's modeled seconds: per launch the fastest of its configs, summed, plus its torch ops."""
    best: dict = {}
    for r in recs:
        key = (r["kind"], int(r["launch"]))
        t = launch_seconds(r, params)
        best[key] = min(best.get(key, math.inf), t)
    return sum(best.values())


def log_errors(pred: dict, measured: dict) -> dict:
    """|log(modeled / measured)| per point id."""
    return {k: abs(math.log(pred[k] / measured[k])) for k in pred}


def fit(recs_by_point: dict, measured: dict, points: list[str], start: dict | None = None, passes: int = 4,
        grid: int = 25, groups: dict | None = None, free: tuple = PARAMS) -> dict:
    """Constants minimizing the mean |log(modeled/measured)| over ``points`` (each group of
    ``groups``, point -> family, weighted equally, so a family with many points does not
    dominate): coordinate descent on a log grid within ``BOUNDS`` over the constants in
    ``free``. Constants no point depends on, and those not free, keep their start."""
    if not points:
        raise ValueError("fit: no points to fit on")
    params = dict(start or reference_params())
    groups = groups or {k: k for k in points}
    size = {}
    for k in points:
        size[groups[k]] = size.get(groups[k], 0) + 1

    def loss(p):
        return sum(abs(math.log(point_seconds(recs_by_point[k], p) / measured[k])) / size[groups[k]] for k in points)

    best = loss(params)
    bad = [k for k in free if k not in PARAMS]
    if bad:
        raise ValueError(f"free: unknown constant(s) {bad}; expected a subset of {PARAMS}")
    for _ in range(passes):
        improved = False
        for name in free:
            lo, hi = BOUNDS[name]
            for i in range(grid):
                v = lo * (hi / lo) ** (i / (grid - 1))
                trial = {**params, name: v}
                val = loss(trial)
                if val < best - 1e-12:
                    best, params, improved = val, trial, True
        if not improved:
            break
    return params


def stats(errors: list[float]) -> tuple[float, float]:
    """(median, 90th percentile) of a list of errors (nearest-rank percentile)."""
    if not errors:
        return (math.nan, math.nan)
    s = sorted(errors)
    med = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
    p90 = s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]
    return med, p90


def regime_of(family: str, compulsory_bytes: float, gpu=None) -> str:
    """The point's regime, from its inputs only: gather + tensor cores for the MoE family,
    latency-bound when its compulsory bytes take < ``LATENCY_BOUND_S`` at HBM peak, else memory-bound."""
    from tritonsparse.sass import model as M

    gpu = gpu or M.H100_SXM
    if family in GATHER_FAMILIES:
        return "tensor-core/gather"
    return "latency-bound" if compulsory_bytes / gpu.hbm_bw < LATENCY_BOUND_S else "memory-bound"


# -- I/O ------------------------------------------------------------------------------------
def _write(path, rows, columns):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_launches(path: str = LAUNCHES_CSV) -> dict:
    """Launch records of the committed CSV, grouped by point id."""
    out: dict = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["point"], []).append(r)
    return out


def evaluate(published: list[dict], recs_by_point: dict) -> tuple[list[dict], list[dict]]:
    """Fit per fold (held-out by family) and on all families; returns (point rows, summary rows)."""
    pts = [p for p in published if p["id"] in recs_by_point]
    measured = {p["id"]: float(p["median_ms"]) * 1e-3 for p in pts}
    fam = {p["id"]: p["family"] for p in pts}
    ref = reference_params()
    fits = {}
    for fold, fams in FOLDS.items():
        train = [k for k in measured if fam[k] not in fams]
        fits[fold] = fit(recs_by_point, measured, train, groups=fam) if train else dict(ref)
    fits["all"] = fit(recs_by_point, measured, list(measured), groups=fam)
    # the same fitting only the two constants streaming kernels pin down (HBM efficiency,
    # launch floor); latency, L2 and tensor rate stay the model's own (see the README)
    for fold, fams in FOLDS.items():
        train = [k for k in measured if fam[k] not in fams]
        fits[f"{fold}, {TWO}"] = (fit(recs_by_point, measured, train, groups=fam, free=TWO_PARAMS)
                                  if train else dict(ref))
    fits[f"all, {TWO}"] = fit(recs_by_point, measured, list(measured), groups=fam, free=TWO_PARAMS)
    # sensitivity to the weighting: every point weighs the same (a family of one then weighs little)
    fits[f"all, {TWO}, {PER_POINT}"] = fit(recs_by_point, measured, list(measured), free=TWO_PARAMS)
    rows = []
    for p in pts:
        k = p["id"]
        fold = next(f for f, fams in FOLDS.items() if p["family"] in fams)
        comp = _compulsory(recs_by_point[k])
        rows.append({"point": k, "family": p["family"], "mode": p["mode"], "x_name": p["x_name"],
                     "x_value": p["x_value"], "fold": fold, "regime": regime_of(p["family"], comp),
                     "compulsory_bytes": int(comp), "measured_us": measured[k] * 1e6,
                     "modeled_ref_us": point_seconds(recs_by_point[k], ref) * 1e6,
                     "modeled_heldout_us": point_seconds(recs_by_point[k], fits[fold]) * 1e6,
                     "modeled_fit_all_us": point_seconds(recs_by_point[k], fits["all"]) * 1e6,
                     "modeled_heldout_2c_us": point_seconds(recs_by_point[k], fits[f"{fold}, {TWO}"]) * 1e6,
                     "modeled_fit_all_2c_us": point_seconds(recs_by_point[k], fits[f"all, {TWO}"]) * 1e6})
    summary = []
    for name, p in fits.items():
        fold = name.split(",")[0]
        summary.append({"what": f"fit:{name}", "trained_on": ",".join(sorted(
            {fam[k] for k in measured if (fold == "all" or fam[k] not in FOLDS[fold])})), **p})
    for col, label in (("modeled_ref_us", "reference constants"), ("modeled_heldout_us", "held-out (2-fold by family)"),
                       ("modeled_heldout_2c_us", f"held-out, {TWO}"),
                       ("modeled_fit_all_2c_us", f"in-sample, {TWO}"),
                       ("modeled_fit_all_us", "in-sample (fit on all)")):
        families = tuple(f"family:{f}" for f in sorted({r["family"] for r in rows}))
        for regime in REGIMES + ("all",) + families:
            def keep(r, regime=regime):
                return regime in ("all", r["regime"], f"family:{r['family']}")

            errs = [abs(math.log(r[col] / r["measured_us"])) for r in rows if keep(r)]
            med, p90 = stats(errs)
            bias = sorted(math.log(r[col] / r["measured_us"]) for r in rows if keep(r)) or [math.nan]
            summary.append({"what": f"error:{label}", "regime": regime, "n": len(errs), "median_abs_log": med,
                            "p90_abs_log": p90, "median_log_ratio": stats_signed(bias),
                            "families": ",".join(sorted({r["family"] for r in rows if keep(r)}))})
    return rows, summary


def stats_signed(vals: list[float]) -> float:
    """Median of signed log ratios (> 0: the model is slow, i.e. pessimistic)."""
    s = sorted(v for v in vals if not math.isnan(v))
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2 if s else math.nan


def _compulsory(recs: list[dict]) -> float:
    """Compulsory bytes of a point: each launch's (first config's) bytes plus its torch ops'."""
    seen, total = set(), 0.0
    for r in recs:
        key = (r["kind"], int(r["launch"]))
        if key not in seen:
            seen.add(key)
            total += float(r["hbm_bytes"])
    return total


POINT_COLUMNS = ["point", "family", "mode", "x_name", "x_value", "fold", "regime", "compulsory_bytes", "measured_us",
                 "modeled_ref_us", "modeled_heldout_us", "modeled_fit_all_us", "modeled_heldout_2c_us",
                 "modeled_fit_all_2c_us"]
SUMMARY_COLUMNS = ["what", "trained_on", *PARAMS, "regime", "n", "median_abs_log", "p90_abs_log", "median_log_ratio",
                   "families"]


def plot(points_csv: str = POINTS_CSV, out_png: str = PLOT_PNG) -> str:
    """Scatter of modeled (held-out and reference constants) against measured time, from the CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(points_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    colors = {"memory-bound": "tab:blue", "latency-bound": "tab:orange", "tensor-core/gather": "tab:red"}
    for regime, c in colors.items():
        for source, marker in (("Liger", "o"), ("conch", "s")):
            rs = [r for r in rows if r["regime"] == regime and (r["family"] in CONCH_FAMILIES) == (source == "conch")]
            if not rs:
                continue
            m = [float(r["measured_us"]) for r in rs]
            ax.scatter(m, [float(r["modeled_ref_us"]) for r in rs], s=14 if marker == "o" else 40, marker=marker,
                       facecolors="none", edgecolors=c, alpha=0.6, label=f"{regime} ({source}): reference constants")
            ax.scatter(m, [float(r["modeled_heldout_2c_us"]) for r in rs], s=14 if marker == "o" else 40,
                       marker=marker, color=c, label=f"{regime} ({source}): held-out fit ({TWO})")
    allv = [float(r[k]) for r in rows for k in ("measured_us", "modeled_ref_us", "modeled_heldout_2c_us")]
    lo, hi = min(allv) / 1.5, max(allv) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f in (2, 0.5):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (published do_bench median; circles Liger-Kernel, squares conch), µs")
    ax.set_ylabel("modeled (tritonsparse.sass roofline, sm_90 SASS), µs")
    ax.set_title("SASS model vs published H100 timings (dotted: x2, x0.5)")
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


WRITE_ONLY_OPS = {"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "fill", "zero", "new_zeros",
                  "new_ones", "new_full"}


def build_records(published: list[dict], max_configs: int = 8, progress: bool = True, families=None) -> list[dict]:
    """Capture, compile and model every published point; one row per launch config / torch op."""
    from tritonsparse.sass import model as M

    out = []
    for p in published:
        if families and p["family"] not in families:
            continue
        try:
            captured = capture_point(p)
        except SkipPoint as e:
            print(f"{p['id']}: skipped ({e})", flush=True)
            continue
        for pid, cap in captured:
            for li, launch in enumerate(cap.launches):
                for rec in model_launch(launch, cap.trips.get(li), max_configs=max_configs, hbm_bytes=cap.hbm.get(li)):
                    out.append({"point": pid, "launch": li, **rec})
            for oi, op in enumerate(cap.torch_ops):
                # operators that only write (a zero fill) read nothing of their input tensor
                b = op.bytes_out if op.name in WRITE_ONLY_OPS else op.bytes_in + op.bytes_out
                flops, dt = getattr(op, "flops", 0), getattr(op, "dtype", "") or "fp32"
                out.append({"point": pid, "launch": oi, "kind": "torch_op", "kernel": f"torch:{op.name}",
                            "hbm_bytes": b, "flops": flops, "dtype": dt,
                            "modeled_us": M.torch_op_time(b, flops=flops, dtype=dt) * 1e6, "bound": "torch op"})
            if progress:
                n = sum(1 for r in out if r["point"] == pid and r["kind"] == "kernel")
                print(f"{pid}: {len(cap.launches)} launches ({n} configs), {len(cap.torch_ops)} torch ops, "
                      f"modeled {point_seconds([r for r in out if r['point'] == pid], reference_params()) * 1e6:.1f} us, "
                      f"measured {float(p['median_ms']) * 1e3:.1f} us", flush=True)
    return out


LATENCY_SWEEP = (300.0, 600.0, 1000.0, 1500.0)
CONCLUSION_ROLES = ("fwd", "dx", "dw", "bwd", "topk")  # the issue-8 problems re-modeled (conv is not an issue-8 target)


def conclusions(params: dict, band: float, out_csv: str, max_configs: int | None = None,
                alt_params: dict | None = None) -> list[dict]:
    """Re-model the project's own issue-8 problems (the report's cases) with the reference
    and the fitted constants: the sparse op, the dense op, their ratio, and the ratio's
    range when the sparse op's modeled time may be off by ``band`` (a |log| error; the
    dense cuBLAS figure is not calibrated by these data); for the fp32 forward also the
    ratio at each memory latency of ``LATENCY_SWEEP``; with ``alt_params`` (another fit,
    e.g. weighted per point) its columns ``*_alt``. Compiles the project's kernels
    (Triton's cache makes reruns fast)."""
    from tritonsparse.sass import model as M
    from tritonsparse.sass import report as R

    fitted = gpu_with(params)
    rows = []
    for p in R.issue8_cases():
        if p.role not in CONCLUSION_ROLES:
            continue
        res = R.analyze(p, gpu=M.H100_SXM, max_configs=max_configs)
        row = {"problem": p.label}
        gpus = [("ref", M.H100_SXM), ("fit", fitted)] + ([("alt", gpu_with(alt_params))] if alt_params else [])
        for name, gpu in gpus:
            res_g = R.analyze(p, gpu=gpu, max_configs=max_configs) if name != "ref" else res
            s = R.op_summary(p, res_g, gpu)
            row[f"sparse_{name}_us"] = s["modeled"] * 1e6
            row[f"dense_{name}_us"] = s["dense"] * 1e6
            row["dense_kind"] = s["dense_kind"]
            row[f"speedup_{name}"] = s["dense"] / s["modeled"]
        if p.role == "fwd" and p.dtype == "fp32":  # the conclusion that hinges on one constant
            for lat in LATENCY_SWEEP:
                g = gpu_with({**params, "mem_latency_cycles": lat})
                s = R.op_summary(p, R.analyze(p, gpu=g, max_configs=max_configs), g)
                row[f"speedup_fit_lat{int(lat)}"] = s["dense"] / s["modeled"]
        row["band_abs_log"] = band
        # the band is the sparse op's; the dense cuBLAS figure is not calibrated by these data
        row["speedup_fit_low"] = row["speedup_fit"] * math.exp(-band)
        row["speedup_fit_high"] = row["speedup_fit"] * math.exp(band)
        rows.append(row)
        print(f"{p.label}: dense/sparse {row['speedup_ref']:.2f}x (reference) -> {row['speedup_fit']:.2f}x (fitted), "
              f"[{row['speedup_fit_low']:.2f}x, {row['speedup_fit_high']:.2f}x] with the held-out p90 error", flush=True)
    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    _write(out_csv, rows, cols)
    return rows


def output_paths(out_dir: str | None, repo_results: bool) -> dict:
    """Where a run writes: ``out_dir`` (default ``./calibration_results``), or the
    checkout's ``benchmarks/results`` and ``plots`` with ``repo_results`` (an explicit
    ``out_dir`` still wins)."""
    if out_dir is None and repo_results:
        res, plots = RESULTS_DIR, PLOTS_DIR
    else:
        res = plots = os.path.abspath(out_dir or DEFAULT_OUT_DIR)
    return {"launches": os.path.join(res, LAUNCHES_NAME), "points": os.path.join(res, POINTS_NAME),
            "summary": os.path.join(res, SUMMARY_NAME), "conclusions": os.path.join(res, CONCLUSIONS_NAME),
            "plot": os.path.join(plots, PLOT_NAME)}


def main(argv=None):
    """The command line (see the module doc and ``--help``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extract", metavar="CSV", help="regenerate the Liger published CSV from Liger's benchmark CSV")
    ap.add_argument("--commit", help="the Liger-Kernel commit the --extract CSV was read from")
    ap.add_argument("--refit-only", action="store_true", help="fit and plot from a launch CSV (default: the committed one)")
    ap.add_argument("--install", action="store_true", help="pip install the published packages --no-deps into --target")
    ap.add_argument("--target", help="directory for --install (added to sys.path)")
    ap.add_argument("--families", nargs="*",
                    help="capture only these families; the other families' records are kept from --launches-in")
    ap.add_argument("--max-configs", type=int, default=8, help="configs per launch to compile (default 8)")
    ap.add_argument("--out-dir", default=None, help=f"folder of the outputs (default: ./{DEFAULT_OUT_DIR})")
    ap.add_argument("--repo-results", action="store_true",
                    help="write into the checkout's benchmarks/results/ and plots/ (results meant to be committed)")
    ap.add_argument("--launches-in", default=LAUNCHES_CSV,
                    help="launch records read by --refit-only and --families (default: the committed CSV)")
    ap.add_argument("--conclusions", action="store_true",
                    help="also re-model the project's issue-8 problems with the fitted constants")
    args = ap.parse_args(argv)
    if args.extract:
        if not args.commit:
            ap.error("--extract needs --commit")
        print(f"{extract_published(args.extract, args.commit)} rows -> {PUBLISHED_CSV}")
        return 0
    out = output_paths(args.out_dir, args.repo_results)
    published = read_published()
    if args.families:
        unknown = sorted(set(args.families) - set(FAMILY_OF.values()))
        if unknown:
            ap.error(f"--families: unknown {unknown}; expected some of {sorted(set(FAMILY_OF.values()))}")
    if args.refit_only:
        recs_by_point = read_launches(args.launches_in)
        if os.path.abspath(args.launches_in) != os.path.abspath(out["launches"]):
            _write(out["launches"], [r for rs in recs_by_point.values() for r in rs], LAUNCH_COLUMNS)
    else:
        if os.environ.get("TRITON_INTERPRET") == "1":
            ap.error("unset TRITON_INTERPRET: the kernels are compiled, not interpreted")
        fams = set(args.families or FAMILY_OF.values())
        if fams - set(CONCH_FAMILIES):
            ensure_liger(args.install, args.target)
        if fams & set(CONCH_FAMILIES):
            ensure_conch(args.install, args.target)
        recs = build_records(published, args.max_configs, families=args.families)
        if args.families:  # keep the other families' records
            fam_of = {p["id"]: p["family"] for p in published}
            kept = [r for pid, rs in read_launches(args.launches_in).items() if fam_of.get(pid) not in fams for r in rs]
            recs = kept + recs
        _write(out["launches"], recs, LAUNCH_COLUMNS)
        recs_by_point = read_launches(out["launches"])
    rows, summary = evaluate(published, recs_by_point)
    _write(out["points"], rows, POINT_COLUMNS)
    _write(out["summary"], summary, SUMMARY_COLUMNS)
    for s in summary:
        if s["what"].startswith("error") and s.get("n"):
            print(f"{s['what']:40s} {s['regime']:28s} n={s['n']:3d} median |log| {s['median_abs_log']:.3f} "
                  f"p90 {s['p90_abs_log']:.3f} (median log ratio {s['median_log_ratio']:+.3f})")
        elif s["what"].startswith("fit"):
            print(s["what"], {k: f"{s[k]:.3g}" for k in PARAMS})
    try:
        print("plot:", plot(out["points"], out["plot"]))
    except ImportError:
        print("matplotlib not installed: no plot")
    if args.conclusions:  # with the recommended calibration: HBM efficiency and launch floor fitted
        fit_all = next(s for s in summary if s["what"] == f"fit:all, {TWO}")
        band = next(s["p90_abs_log"] for s in summary
                    if s["what"] == f"error:held-out, {TWO}" and s["regime"] == "all")
        alt = next(s for s in summary if s["what"] == f"fit:all, {TWO}, {PER_POINT}")
        conclusions({k: fit_all[k] for k in PARAMS}, band, out["conclusions"],
                    alt_params={k: alt[k] for k in PARAMS})
    print("outputs:", os.path.dirname(out["points"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

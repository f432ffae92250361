"""The SASS hot-loop report: for a named problem, every config the autotuner's prune
would time, compiled for sm_90 with the runtime's specialization, its hot loop counted
and its launch modeled on an H100 SXM; CSV rows and the README table.

    python -m tritonsparse.sass fwd --in 3072 --out 768 --K 307 --batch 256 --dtype fp32
    python -m tritonsparse.sass --cases issue8 --csv benchmarks/results/kernel_report_h100.csv
    python -m tritonsparse.sass --readme-table benchmarks/results/kernel_report_h100.csv

All times are **modeled** (:mod:`tritonsparse.sass.model`); counts are exact for the binary.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
from dataclasses import dataclass

from . import model as M
from .problems import LLAMA_DOWN, LLAMA_UP, VIT_FC1, VIT_FC2, Problem, launches

# columns of the CSV, in order
COLUMNS = [
    "problem", "role", "in", "out", "K", "Kx", "batch", "dtype", "index_dtype", "launch", "kernel", "config",
    "warps", "stages", "arch", "chosen", "regs", "stack", "local", "shared", "occupancy", "ctas", "trips",
    "loop_instr", "ffma", "hfma2", "hmma", "hgmma", "fp32_other", "int", "uniform", "cvt", "ldg128", "ldg64",
    "ldg32", "ldg16", "lds", "sts", "shfl", "bar", "spill", "instr_per_fma", "modeled_us", "bound",
    "modeled_dense_us", "dense_kind", "modeled_dense_tf32_us", "lower_bound_us", "lower_bound_kind",
    "useful_fmas", "hbm_bytes", "torch_ops", "torch_ops_us", "modeled_op_us",
]


@dataclass
class ConfigResult:
    """One compiled config of one launch: its SASS counts, resources and modeled time."""

    problem: Problem
    launch_i: int
    kernel: str
    config: dict
    warps: int
    stages: int
    arch: int
    usage: dict
    counts: dict
    time: M.KernelTime
    loops: int

    @property
    def instr_per_fma(self) -> float:
        """Warp instructions of the hot loop per 32 useful multiply-adds (one FFMA's worth)."""
        work = self.time.per_trip
        return self.counts.get("total", 0) * self.warps / (work / 32) if work else math.inf


def _bytes(p: Problem) -> tuple[float, float]:
    """(compulsory DRAM bytes of the sparse op, of the dense op of the same shape)."""
    e, ie = M.elem_bytes(p.dtype), M.elem_bytes(p.index_dtype)
    n, i, K, B = p.out_features, p.in_features, p.K, p.batch
    if p.role == "fwd":
        return n * K * (e + ie) + B * i * e + B * n * e, i * n * e + B * i * e + B * n * e
    if p.role == "dx":  # values, their row ids (int32) and column pointers; dY in, dX out
        return n * K * (e + 4) + 4 * (i + 1) + B * n * e + B * i * e, i * n * e + B * i * e + B * n * e
    if p.role == "dw":
        return n * K * (ie + e) + B * i * e + B * n * e, i * n * e + B * i * e + B * n * e
    if p.role == "bwd":  # dX's and dValues' bytes, dY read once
        (sx, dx_), (sw, dw_) = _bytes(p.with_(role="dx")), _bytes(p.with_(role="dw"))
        return sx + sw - B * n * e, dx_ + dw_ - B * n * e
    if p.role == "topk":
        return B * (i + n) * e + n * K * 12, B * (i + n) * e + n * i * 4
    hw2 = p.hw * p.hw
    io = B * i * hw2 * e + B * n * hw2 * e
    return io + n * K * (e + ie), io + n * i * 9 * e


def _gather_slice(p: Problem, cfg: dict) -> float | None:
    """Bytes of the gathered operand a CTA's loads range over (see ``model.kernel_time``)."""
    e = M.elem_bytes(p.dtype)
    bb = min(cfg.get("BLOCK_B", p.batch), p.batch)
    if p.role == "fwd":
        return p.in_features * bb * e
    if p.role == "dx":
        return p.out_features * bb * e
    if p.role == "dw":
        return p.in_features * bb * e
    if p.role.startswith("conv"):  # a pixel tile spans a few image rows, plus the 3x3 halo
        tile = min(int(cfg.get("BLOCK_P", p.hw * p.hw)), p.hw * p.hw)
        rows_spanned = min(p.hw, -(-tile // p.hw) + 2)
        return p.in_features * rows_spanned * (p.hw + 2) * e
    return None


# Kernels that do none of the op's multiply-adds: a reduction of fp32 partial sums (read
# from L2, where the kernel before wrote them). {kernel name: f(problem, launch args, config
# kwargs) -> (bytes one CTA loads, compulsory output bytes)}; the trips of the loop follow
# from the first and the loop's loads in the SASS (the compiler unrolls it).
def _reduce_cost(p: Problem, args: dict, kw: dict) -> tuple[int, float]:
    return int(args["splits"]) * kw["BLOCK"] * 4, int(args["numel"]) * M.elem_bytes(p.dtype)


_REDUCE_KERNELS = {"_dw_reduce_kernel": _reduce_cost}


def launch_role(p: Problem, kernel_name: str) -> str:
    """The role a launch of ``p`` serves: ``p.role``, except in a ``bwd`` problem, where a
    CSR gather or a group dX kernel (and its column reduction) serves ``dx`` and every
    other launch ``dw``."""
    if p.role != "bwd":
        return p.role
    name = kernel_name.lower()
    return "dx" if any(s in name for s in ("csr_gather", "dx", "column_reduce")) else "dw"


def analyze(p: Problem, arch: int = 90, gpu: M.GPU = M.H100_SXM, fp_fusion=None, configs=None,
            max_configs: int | None = None) -> list[ConfigResult]:
    """Compile, count and model every pruned config of every launch the library makes for ``p``.

    ``configs``: optional list of config kwargs dicts to keep (default: the autotuner's
    prune); ``max_configs``: keep only the first that many of each launch's configs."""
    if max_configs is not None and (isinstance(max_configs, bool) or not isinstance(max_configs, int) or max_configs < 1):
        raise ValueError(f"max_configs must be a positive int or None, got {max_configs!r}")
    from .compile import compile_spec, disassemble, resource_usage
    from .parse import summarize

    out = []
    got = launches(p)
    if not got:
        return []  # the op runs on PyTorch operators alone (see torch_ops)
    ctas_all = []
    for launch in got:
        cfgs = launch.configs()
        ctas_all.append(launch.grid_for(cfgs[0]))
    # the work of each role (a bwd problem: dX's and dValues') is shared by its launches by grid size
    subs = [p.with_(role=launch_role(p, launch.name)) for launch in got]
    total_first: dict = {}
    for launch, sub, g in zip(got, subs, ctas_all):
        if launch.name not in _REDUCE_KERNELS:
            total_first[sub.role] = total_first.get(sub.role, 0) + g[0] * g[1] * g[2]
    for li, launch in enumerate(got):
        cfgs = launch.configs()
        if configs is not None:
            cfgs = [c for c in cfgs if c.kwargs in configs] or cfgs
        if max_configs is not None:
            cfgs = cfgs[:max_configs]
        g0, sub = ctas_all[li], subs[li]
        reduce_cost = _REDUCE_KERNELS.get(launch.name)
        if reduce_cost is None:
            share = (g0[0] * g0[1] * g0[2]) / total_first[sub.role]  # this launch's share of its role's work
            fmas, hbm_l = int(sub.useful_fmas * share), _bytes(sub)[0] * share
        for cfg in cfgs:
            spec = launch.specialization(cfg, arch=arch, fp_fusion=fp_fusion)
            compiled = compile_spec(spec)
            usage = resource_usage(compiled.asm["cubin"])
            summ = summarize(disassemble(compiled.asm["cubin"]))
            g = launch.grid_for(cfg)
            if reduce_cost is None:
                trips, slice_bytes = _model_trips(launch, cfg), _gather_slice(sub, cfg.kwargs)
            else:  # no multiply-adds: the loop's trips are the CTA's loads over one trip's
                cta_bytes, hbm_l = reduce_cost(p, launch.args, cfg.kwargs)
                per_trip = cfg.num_warps * (summ.loop_counts or {}).get("ldg_bytes", 0)
                trips, fmas, slice_bytes = max(1, math.ceil(cta_bytes / per_trip)) if per_trip else None, 0, None
            t = M.kernel_time(summ, regs=usage["regs"], shared=max(usage["shared"], compiled.metadata.shared),
                              warps=cfg.num_warps, ctas=g[0] * g[1] * g[2], useful_fmas=fmas,
                              hbm_bytes=hbm_l, gather_slice_bytes=slice_bytes, gpu=gpu, trips=trips)
            out.append(ConfigResult(p, li, launch.name, dict(cfg.kwargs), cfg.num_warps, cfg.num_stages, arch, usage,
                                    summ.loop_counts or {}, t, len(summ.loops)))
    return out


def _model_trips(launch, cfg):
    """Hot-loop trips per CTA when the kernel's module can tell them from the launch's
    arguments (``model_trips(args)``: a loop whose trips depend on the data, not on the
    multiply-adds, e.g. the top-k selection's bisection); None otherwise."""
    import importlib

    from .compile import jit_function

    fn = getattr(importlib.import_module(jit_function(launch.kernel).fn.__module__), "model_trips", None)
    return fn(launch.full_args(cfg)) if fn is not None else None


def best_per_launch(results: list[ConfigResult]) -> list[ConfigResult]:
    """The modeled-fastest config of each launch (what the autotuner would pick if the model were right)."""
    best: dict[int, ConfigResult] = {}
    for r in results:
        if r.launch_i not in best or r.time.total < best[r.launch_i].time.total:
            best[r.launch_i] = r
    return [best[i] for i in sorted(best)]


def torch_ops(p: Problem) -> list:
    """The data-moving PyTorch operators the library runs for ``p`` besides its kernels."""
    from .problems import capture

    return capture(p)[1]


def op_summary(p: Problem, results: list[ConfigResult], gpu: M.GPU = M.H100_SXM, ops=None) -> dict:
    """Modeled op time (each launch's best config, plus the PyTorch operators around the
    kernels, each memory-bound with its own launch floor), dense times and the lower bound."""
    best = best_per_launch(results)
    ops = torch_ops(p) if ops is None else ops
    t_ops = sum(M.torch_op_time(o.bytes_in + o.bytes_out, gpu, o.flops, o.dtype) for o in ops)
    t_kernels = sum(r.time.total for r in best)
    t = t_kernels + t_ops
    hbm = _bytes(p)[0]
    dense_kind = "tf32" if p.role == "topk" else ("fp32" if p.dtype == "fp32" else p.dtype)
    # dense: one cuBLAS call per GEMM (bwd: dX and dW, each with its own launch)
    parts = [p.with_(role="dx"), p.with_(role="dw")] if p.role == "bwd" else [p]
    dense = sum(M.dense_time(q.dense_fmas, dense_kind, _bytes(q)[1], gpu) for q in parts)
    dense_tf32 = sum(M.dense_time(q.dense_fmas, "tf32", _bytes(q)[1], gpu) for q in parts) if p.dtype == "fp32" else dense
    gather = 0.0 if p.role == "topk" else M.elem_bytes(p.dtype)
    fma_flops = gpu.ffma_flops * (2 if p.dtype != "fp32" else 1)
    if p.role == "topk":
        fma_flops = gpu.dense_flops["tf32"]
    lb, lb_kind = M.lower_bound(p.useful_fmas, hbm, gather, fma_flops, gpu)
    return {"modeled": t, "kernels": t_kernels, "torch_ops": t_ops, "torch_op_names": [o.name for o in ops],
            "dense": dense, "dense_kind": dense_kind, "dense_tf32": dense_tf32, "lower_bound": lb,
            "lower_bound_kind": lb_kind, "best": best, "hbm_bytes": hbm}


def rows(p: Problem, results: list[ConfigResult], gpu: M.GPU = M.H100_SXM) -> list[dict]:
    """CSV rows (``COLUMNS``) of one problem's results: one per compiled config, or one
    row marked ``(PyTorch operators only)`` when the op launches no Triton kernel."""
    s = op_summary(p, results, gpu)
    chosen = {id(r) for r in s["best"]}
    common = {
        "problem": p.label, "role": p.role, "in": p.in_features, "out": p.out_features, "K": p.K, "Kx": p.Kx,
        "batch": p.batch, "dtype": p.dtype, "index_dtype": p.index_dtype,
        "modeled_dense_us": round(s["dense"] * 1e6, 2), "dense_kind": s["dense_kind"],
        "modeled_dense_tf32_us": round(s["dense_tf32"] * 1e6, 2),
        "lower_bound_us": round(s["lower_bound"] * 1e6, 2), "lower_bound_kind": s["lower_bound_kind"],
        "useful_fmas": p.useful_fmas, "hbm_bytes": int(s["hbm_bytes"]),
        "torch_ops": " ".join(s["torch_op_names"]), "torch_ops_us": round(s["torch_ops"] * 1e6, 2),
        "modeled_op_us": round(s["modeled"] * 1e6, 2),
    }
    if not results:
        return [{**{k: "" for k in COLUMNS}, **common, "kernel": "(PyTorch operators only)", "chosen": 1,
                 "bound": "PyTorch operators"}]
    out = []
    for r in results:
        c = r.counts
        out.append({
            **common, "launch": r.launch_i,
            "kernel": r.kernel, "config": ",".join(str(v) for v in r.config.values()), "warps": r.warps,
            "stages": r.stages, "arch": r.arch, "chosen": int(id(r) in chosen), **{k: r.usage[k] for k in
                                                                                    ("regs", "stack", "local", "shared")},
            "occupancy": r.time.occupancy, "ctas": r.time.ctas, "trips": r.time.trips,
            "loop_instr": c.get("total", 0), "ffma": c.get("ffma", 0), "hfma2": c.get("hfma2", 0),
            "hmma": c.get("hmma", 0), "hgmma": c.get("hgmma", 0), "fp32_other": c.get("fp32", 0),
            "int": c.get("int", 0), "uniform": c.get("uniform", 0), "cvt": c.get("cvt", 0),
            "ldg128": c.get("ldg128", 0), "ldg64": c.get("ldg64", 0), "ldg32": c.get("ldg32", 0),
            "ldg16": c.get("ldg16", 0), "lds": c.get("lds", 0), "sts": c.get("sts", 0), "shfl": c.get("shfl", 0),
            "bar": c.get("bar", 0), "spill": c.get("spill", 0),
            "instr_per_fma": round(r.instr_per_fma, 2) if math.isfinite(r.instr_per_fma) else "",
            "modeled_us": round(r.time.total * 1e6, 2), "bound": r.time.bound,
        })
    return out


# -- the issue-8 cases ----------------------------------------------------------------------
def _srigl_k(K, in_features):
    return min(in_features, 2 * K)  # gradient_topk's k in an SRigL update (dst/updates.py)


def issue8_cases() -> list[Problem]:
    """The problems behind issue 8's targets (90% sparse ViT-B MLP, Llama-3-8B MLP, topk)."""
    cases = []
    for shape in (VIT_FC1, VIT_FC2):
        for role in ("fwd", "dx", "dw", "bwd"):
            cases.append(Problem(role, batch=256, dtype="fp32", index_dtype="int32", **shape))
    for shape in (VIT_FC1, VIT_FC2):  # the same layers in a chain: x and dY batch-major (batch_major_out)
        for role in ("fwd", "bwd"):
            cases.append(Problem(role, batch=256, dtype="fp32", index_dtype="int32", batch_major=True, **shape))
    cases.append(Problem("fwd", batch=16, dtype="bf16", index_dtype="int16", **VIT_FC2))
    for shape in (LLAMA_UP, LLAMA_DOWN):
        cases.append(Problem("fwd", batch=1, dtype="bf16", index_dtype="int16", **shape))
    for shape in (VIT_FC1, VIT_FC2):
        cases.append(Problem("topk", shape["in_features"], shape["out_features"],
                             _srigl_k(shape["K"], shape["in_features"]), 256, dtype="fp32"))
    cases.append(Problem("conv_fwd", 64, 64, 58, 32, dtype="fp32", hw=56))
    return cases


def group_cases() -> list[Problem]:
    """Issue 13's targets: the group-shared (G=64) gather-MMA kernels, bf16, 90% sparse, on
    the Llama-3-8B MLP (forward, dX in both modes, dValues) and the ViT-B MLP (forward),
    batch 256 and 4096; each forward also with x batch-major and y written so
    (``batch_major_out``: a chain of group layers, no transpose)."""
    cases = []
    for batch in (256, 4096):
        for shape in (LLAMA_UP, LLAMA_DOWN):
            for role in ("fwd", "dx", "dw"):
                cases.append(Problem(role, batch=batch, dtype="bf16", index_dtype="int16", G=64, **shape))
            cases.append(Problem("dx", batch=batch, dtype="bf16", index_dtype="int16", G=64, dx_mode="atomic", **shape))
        for shape in (VIT_FC1, VIT_FC2):
            cases.append(Problem("fwd", batch=batch, dtype="bf16", index_dtype="int16", G=64, **shape))
    for batch in (256, 4096):
        for shape in (LLAMA_UP, LLAMA_DOWN, VIT_FC1, VIT_FC2):
            cases.append(Problem("fwd", batch=batch, dtype="bf16", index_dtype="int16", G=64, batch_major=True, **shape))
    return cases


def smoke_cases() -> list[Problem]:
    """Small problems for CI: each kernel role once, compiles only a few configs."""
    return [Problem("fwd", 256, 128, 26, 64, dtype="fp32"), Problem("dx", 256, 128, 26, 64, dtype="fp32"),
            Problem("dw", 256, 128, 26, 64, dtype="fp32")]


def run_cases(cases, csv_path=None, gpu=M.H100_SXM, arch=90, progress=True, max_configs=None) -> list[dict]:
    """Analyze every case; write the CSV when ``csv_path`` is given; returns the rows."""
    all_rows = []
    for p in cases:
        res = analyze(p, arch=arch, gpu=gpu, max_configs=max_configs)
        all_rows += rows(p, res, gpu)
        if progress:
            s = op_summary(p, res, gpu)
            print(f"[report] {p.label}: modeled {s['modeled'] * 1e6:.1f} us, dense {s['dense'] * 1e6:.1f} us "
                  f"({s['dense_kind']})", file=sys.stderr, flush=True)
    if csv_path:
        _write_csv(csv_path, all_rows)
    return all_rows


def _write_csv(path, rows_):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows_)


# -- the README tables -----------------------------------------------------------------------
def read_csv(path) -> list[dict]:
    """Rows of a report CSV (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ops(rows_):
    """{problem label: chosen rows (one per launch)}, in first-seen order."""
    ops = {}
    for r in rows_:
        if r["chosen"] == "1":
            ops.setdefault(r["problem"], []).append(r)
    return ops


def _f(x):
    return float(x) if x not in ("", None) else math.nan


def kernel_table(rows_) -> str:
    """Markdown: per problem, the modeled-best config's hot loop and modeled times."""
    head = ("| problem | kernel, tile (warps) | regs / occ. | hot loop per iteration | warp instr / FMA | "
            "modeled kernel | bound | + torch ops | modeled op | modeled dense | lower bound |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, rs in _ops(rows_).items():
        for i, r in enumerate(rs):
            loop = ", ".join(f"{r[k]} {n}" for k, n in (
                ("ffma", "FFMA"), ("hfma2", "HFMA2"), ("hmma", "HMMA"), ("hgmma", "HGMMA"),
                ("fp32_other", "other FP32"), ("int", "int"), ("ldg128", "LDG.128"), ("ldg64", "LDG.64"),
                ("ldg32", "LDG.32"), ("ldg16", "LDG.U16"), ("lds", "LDS"), ("sts", "STS"), ("shfl", "SHFL"),
                ("bar", "BAR")) if r[k] not in ("0", ""))
            ipf = r["instr_per_fma"] or "-"
            dense = f"{_f(r['modeled_dense_us']):.1f} µs {r['dense_kind']}"
            if r["dtype"] == "fp32" and r["role"] != "topk":
                dense += f" ({_f(r['modeled_dense_tf32_us']):.1f} TF32)"
            if i == 0:
                ops = r["torch_ops"] or "none"
                extra = f"{_f(r['torch_ops_us']):.1f} µs ({ops})" if r["torch_ops"] else "none"
                op = f"{_op_time(rs):.1f} µs"
                lb = f"{_f(r['lower_bound_us']):.1f} µs ({r['lower_bound_kind']})"
            else:
                label, extra, op, dense, lb = "″", "", "", "", ""
            kern = f"{r['kernel'].strip('_')} {r['config']} (w{r['warps']})" if r["config"] else r["kernel"]
            regs = f"{r['regs']} / {r['occupancy']}" if r["regs"] else "-"
            kt = f"{_f(r['modeled_us']):.1f} µs" if r["modeled_us"] else "-"
            lines.append(f"| {label} | {kern} | {regs} | {loop or '-'} | {ipf} | {kt} | {r['bound']} | {extra} | {op} | "
                         f"{dense} | {lb} |")
    return "\n".join(lines)


def _op_time(rs):
    """Modeled op time (µs): the chosen kernels plus the PyTorch operators around them."""
    return _f(rs[0]["modeled_op_us"])


def step_roles(have) -> tuple:
    """The problems a training step sums, given ``have(role)``: the forward and the one
    backward that computes dX and dValues together (``bwd``, what training runs: one dY
    copy); from a CSV without it, ``dx`` + ``dw`` (which charge the dY copy twice); ()
    when neither is there."""
    for roles in (("fwd", "bwd"), ("fwd", "dx", "dw")):
        if all(have(r) for r in roles):
            return roles
    return ()


CHAIN_SUFFIX = " in a batch-major chain"  # the targets' name for a layer whose x and dY come batch-major


def is_chain(label: str) -> bool:
    """Whether a report problem is a layer in a batch-major chain (``Problem.batch_major``)."""
    return label.endswith(" batch-major")


def targets_table(rows_) -> str:
    """Markdown: each issue-8 target, the modeled figure and what bounds it."""
    ops = _ops(rows_)

    def find(role, shape, batch, dtype, chain=False):
        for label, rs in ops.items():
            r = rs[0]
            if (r["role"], int(r["in"]), int(r["out"]), int(r["batch"]), r["dtype"], is_chain(label)) == (
                    role, shape["in_features"], shape["out_features"], batch, dtype, chain):
                return rs
        return None

    lines = ["| target (modeled, H100 SXM, 90% sparse) | modeled figure | met | what bounds it |", "|---|---|---|---|"]
    for (shape, name), chain in itertools.product(((VIT_FC1, "768→3072"), (VIT_FC2, "3072→768")), (False, True)):
        rs = find("fwd", shape, 256, "fp32", chain)
        name += CHAIN_SUFFIX if chain else ""
        if rs:
            r = rs[0]
            sp = _f(r["modeled_dense_us"]) / _op_time(rs)
            ipf = _f(r["instr_per_fma"])
            clean = int(r["shfl"]) == 0 and int(r["bar"]) == 0
            ok = sp >= 2 and ipf <= 3.6 and clean
            lines.append(f"| fwd fp32 B=256 {name}: ≥ 2x fp32 SGEMM, ≤ 3.6 instr/FMA, no SHFL/BAR | "
                         f"{sp:.2f}x SGEMM ({_op_time(rs):.1f} vs {_f(r['modeled_dense_us']):.1f} µs), "
                         f"{ipf:.1f} instr/FMA, {r['shfl']} SHFL, {r['bar']} BAR | {'yes' if ok else 'no'} | "
                         f"{r['bound']} |")
    for (shape, name), chain in itertools.product(((VIT_FC1, "768→3072"), (VIT_FC2, "3072→768")), (False, True)):
        roles = step_roles(lambda role: find(role, shape, 256, "fp32", chain) is not None)
        parts = [find(role, shape, 256, "fp32", chain) for role in roles]
        name += CHAIN_SUFFIX if chain else ""
        if roles:
            t = sum(_op_time(rs) for rs in parts)
            d = sum(_f(rs[0]["modeled_dense_us"]) for rs in parts)
            bounds = "; ".join(f"{role}: {', '.join(sorted({r['bound'] for r in rs}))}" for role, rs in zip(roles, parts))
            lines.append(f"| training step fp32 B=256 {name} (fwd+dX+dValues): ≥ 1.5x 3 dense SGEMMs | "
                         f"{d / t:.2f}x ({t:.1f} vs {d:.1f} µs) | {'yes' if d / t >= 1.5 else 'no'} | {bounds} |")
    for shape, name in ((LLAMA_UP, "4096→14336"), (LLAMA_DOWN, "14336→4096")):
        rs = find("fwd", shape, 1, "bf16")
        if rs:
            sp = _f(rs[0]["modeled_dense_us"]) / _op_time(rs)
            lines.append(f"| fwd bf16 B=1 {name}: ≥ 4x dense | {sp:.2f}x ({_op_time(rs):.1f} vs "
                         f"{_f(rs[0]['modeled_dense_us']):.1f} µs) | {'yes' if sp >= 4 else 'no'} | {rs[0]['bound']} |")
    for label, rs in ops.items():
        r = rs[0]
        if r["role"] == "topk":
            spills = max(int(x["stack"] or 0) + int(x["local"] or 0) for x in rows_ if x["problem"] == label)
            ratio = _op_time(rs) / _f(r["modeled_dense_us"])
            ok = spills == 0 and ratio <= 2
            lines.append(f"| gradient_topk {r['in']}→{r['out']} k={r['K']}: 0 spills, ≤ 2x dense TF32 GEMM | "
                         f"{ratio:.2f}x the GEMM ({_op_time(rs):.1f} vs {_f(r['modeled_dense_us']):.1f} µs), "
                         f"max stack+local {spills} B{', ' + r['kernel'] if not r['config'] else ''} | "
                         f"{'yes' if ok else 'no'} | {r['bound']} |")
    return "\n".join(lines)


def readme_table(path) -> str:
    """Both README tables from a report CSV."""
    rs = read_csv(path)
    return targets_table(rs) + "\n\n" + kernel_table(rs)


def _print_results(p, res, gpu):
    s = op_summary(p, res, gpu)
    print(f"{p.label}  (all times modeled, {gpu.name})")
    for r in res:
        c = r.counts
        mark = "*" if r in s["best"] else " "
        ipf = f"{r.instr_per_fma:.2f}" if math.isfinite(r.instr_per_fma) else "-"
        print(f"{mark} {r.kernel} {r.config} w{r.warps} s{r.stages}: regs {r.usage['regs']} stack {r.usage['stack']} "
              f"occ {r.time.occupancy} ctas {r.time.ctas} trips {r.time.trips} | loop {c.get('total', 0)} instr: "
              f"FFMA {c.get('ffma', 0)} HFMA2 {c.get('hfma2', 0)} HMMA {c.get('hmma', 0)} HGMMA {c.get('hgmma', 0)} "
              f"FP32 {c.get('fp32', 0)} int {c.get('int', 0)} LDG.128/64/32/16 {c.get('ldg128', 0)}/"
              f"{c.get('ldg64', 0)}/{c.get('ldg32', 0)}/{c.get('ldg16', 0)} LDS {c.get('lds', 0)} STS {c.get('sts', 0)} "
              f"SHFL {c.get('shfl', 0)} BAR {c.get('bar', 0)} | {ipf} instr/FMA | {r.time.total * 1e6:.1f} us "
              f"({r.time.bound})")
    print(f"op: modeled {s['modeled'] * 1e6:.1f} us; dense {s['dense_kind']} {s['dense'] * 1e6:.1f} us"
          f" (TF32 {s['dense_tf32'] * 1e6:.1f} us); lower bound {s['lower_bound'] * 1e6:.1f} us ({s['lower_bound_kind']})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", help="fwd, dx, dw, bwd (dX and dValues in one backward), topk, conv_fwd, conv_dw (one named problem)")
    ap.add_argument("--in", dest="in_features", type=int)
    ap.add_argument("--out", dest="out_features", type=int)
    ap.add_argument("--K", type=int, help="fan-in (topk: k)")
    ap.add_argument("--Kx", type=int, default=0, help="topk: excluded columns per row")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--hw", type=int, default=0, help="conv: input height = width")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--index-dtype", default="int32")
    ap.add_argument("--gpu", default="h100", choices=sorted(M.GPUS))
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--G", type=int, default=1, help="fwd/dx/dw/bwd: rows per shared index row (group-shared pattern)")
    ap.add_argument("--batch-major", action="store_true", help="a layer in a chain: x and dY come batch-major, y and dX leave so (batch_major_out)")
    ap.add_argument("--cases", choices=["issue8", "groups", "smoke"], help="run a set of problems")
    ap.add_argument("--csv", help="write the rows to this CSV")
    ap.add_argument("--max-configs", type=int, help="only the first N pruned configs of each launch (smoke runs)")
    ap.add_argument("--readme-table", metavar="CSV", help="print the README tables from a report CSV")
    args = ap.parse_args(argv)
    if args.readme_table:
        print(readme_table(args.readme_table))
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    gpu = M.GPUS[args.gpu]
    if args.cases:
        cases = {"issue8": issue8_cases, "groups": group_cases, "smoke": smoke_cases}[args.cases]()
        run_cases(cases, args.csv, gpu, args.arch, max_configs=args.max_configs)
        if args.csv:
            print(readme_table(args.csv))
        return 0
    if not args.role or None in (args.in_features, args.out_features, args.K, args.batch):
        ap.error("give a role and --in --out --K --batch, or --cases, or --readme-table")
    try:
        p = Problem(args.role, args.in_features, args.out_features, args.K, args.batch, args.dtype, args.index_dtype,
                    Kx=args.Kx, hw=args.hw, G=args.G, batch_major=args.batch_major)
    except ValueError as e:
        ap.error(str(e))
    res = analyze(p, arch=args.arch, gpu=gpu, max_configs=args.max_configs)
    _print_results(p, res, gpu)
    if args.csv:
        _write_csv(args.csv, rows(p, res, gpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())

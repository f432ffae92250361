"""The SASS hot-loop report and H100 roofline model (a thin wrapper of ``python -m tritonsparse.sass``).

    python benchmarks/kernel_report.py fwd --in 3072 --out 768 --K 307 --batch 256 --dtype fp32
    python benchmarks/kernel_report.py --cases issue8 --csv benchmarks/results/kernel_report_h100_sm90.csv
    python benchmarks/kernel_report.py --readme-table benchmarks/results/kernel_report_h100_sm90.csv

No GPU needed: kernels are compiled for sm_90 with the runtime's specialization and
read as SASS; every time it prints is **modeled** (see ``tritonsparse/sass/model.py``).
Run with ``TRITON_INTERPRET`` unset.

``--readme-table`` prints the README's two tables. The first restates issue 8's targets
as "modeled (reference constants) | calibrated (fitted constants) ± the calibration's
held-out p90 error": the calibrated figures come from
``benchmarks/results/calibration_h100_conclusions.csv`` and the band from
``calibration_h100_summary.csv`` (both written by ``benchmarks/calibrate_model.py
--refit-only --conclusions --repo-results``; ``--calibration-dir`` reads another folder).
Where the calibration re-modeled other code than the report CSV's (its reference-constants
time differs by more than 2%), the cell also gives the calibration's own reference figure,
so the two columns are never compared across code versions unawares.
"""
import argparse
import csv
import itertools
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tritonsparse.sass import report as R  # noqa: E402

CALIBRATION_DIR = os.path.join(ROOT, "benchmarks", "results")
CONCLUSIONS_NAME = "calibration_h100_conclusions.csv"
SUMMARY_NAME = "calibration_h100_summary.csv"
BAND_WHAT = "error:held-out, HBM + floor only"  # the recommended calibration's held-out error (calibrate_model.TWO)
STALE_REL = 0.02  # a conclusions row whose reference time is off by more than this is from other code


def _num(x) -> float:
    return float(x) if x not in ("", None) else math.nan


def read_calibration(cal_dir: str = CALIBRATION_DIR) -> tuple[dict, float]:
    """({problem label: conclusions row}, band): the calibrated re-modeling of the issue-8
    problems and the held-out p90 |log(modeled / measured)| of the recommended fit."""
    with open(os.path.join(cal_dir, CONCLUSIONS_NAME), newline="") as f:
        rows = {r["problem"]: r for r in csv.DictReader(f)}
    with open(os.path.join(cal_dir, SUMMARY_NAME), newline="") as f:
        band = [_num(r["p90_abs_log"]) for r in csv.DictReader(f) if r["what"] == BAND_WHAT and r["regime"] == "all"]
    if not band:
        raise ValueError(f"{cal_dir}/{SUMMARY_NAME}: no '{BAND_WHAT}' row for regime 'all'")
    return rows, band[0]


class _Target:
    """One issue-8 target: the problems it sums, the goal and its direction."""

    def __init__(self, name: str, labels: list, goal: float, speedup: bool, extra: str = "", structural: bool = True):
        self.name, self.labels, self.goal, self.speedup, self.extra = name, labels, goal, speedup, extra
        self.structural = structural  # the target's conditions the calibration does not change (SASS, spills)


def _targets(rows: list) -> tuple[list, dict]:
    """The issue-8 targets the report CSV's problems cover, and its chosen rows per problem."""
    ops = R._ops(rows)  # {problem: the chosen config's row of each launch}
    key = {label: (rs[0]["role"], int(rs[0]["in"]), int(rs[0]["out"]), int(rs[0]["batch"]), rs[0]["dtype"],
                   R.is_chain(label)) for label, rs in ops.items()}

    def find(role, shape, batch, dtype, chain=False):
        want = (role, shape["in_features"], shape["out_features"], batch, dtype, chain)
        return next((label for label, k in key.items() if k == want), None)

    out = []
    vit = ((R.VIT_FC1, "768→3072"), (R.VIT_FC2, "3072→768"))
    for (shape, name), chain in itertools.product(vit, (False, True)):
        label = find("fwd", shape, 256, "fp32", chain)
        name += R.CHAIN_SUFFIX if chain else ""
        if label:
            r = ops[label][0]
            ipf, clean = _num(r["instr_per_fma"]), int(r["shfl"]) == 0 and int(r["bar"]) == 0
            out.append(_Target(f"fwd fp32 B=256 {name}: ≥ 2x fp32 SGEMM, ≤ 3.6 instr/FMA, no SHFL/BAR", [label], 2.0,
                               True, f"; {ipf:.1f} instr/FMA, {r['shfl']} SHFL, {r['bar']} BAR", ipf <= 3.6 and clean))
    for (shape, name), chain in itertools.product(vit, (False, True)):
        roles = R.step_roles(lambda role: find(role, shape, 256, "fp32", chain) is not None)  # fwd + bwd
        labels = [find(role, shape, 256, "fp32", chain) for role in roles]
        name += R.CHAIN_SUFFIX if chain else ""
        if roles:
            out.append(_Target(f"training step fp32 B=256 {name} (fwd+dX+dValues): ≥ 1.5x 3 dense SGEMMs",
                               labels, 1.5, True))
    for shape, name in ((R.LLAMA_UP, "4096→14336"), (R.LLAMA_DOWN, "14336→4096")):
        label = find("fwd", shape, 1, "bf16")
        if label:
            out.append(_Target(f"fwd bf16 B=1 {name}: ≥ 4x dense", [label], 4.0, True))
    for label, rs in ops.items():
        r = rs[0]
        if r["role"] == "topk":
            spills = max(int(x["stack"] or 0) + int(x["local"] or 0) for x in rows if x["problem"] == label)
            out.append(_Target(f"gradient_topk {r['in']}→{r['out']} k={r['K']}: 0 spills, ≤ 2x dense TF32 GEMM",
                               [label], 2.0, False, f"; max stack+local {spills} B", spills == 0))
    return out, ops


def _verdict(lo: float, hi: float, goal: float, speedup: bool) -> str:
    """'yes' when the whole band meets the goal, 'no' when none of it does, else 'within the band'."""
    ok_lo, ok_hi = (lo >= goal, hi >= goal) if speedup else (hi <= goal, lo <= goal)
    return "yes" if ok_lo else ("no" if not ok_hi else "within the band")


def calibrated_targets_table(rows: list, calibration: dict, band: float) -> str:
    """Markdown: each issue-8 target as "modeled (reference constants) | calibrated (fitted
    constants) ± p90 band", the verdict of each and what bounds it (from the report CSV)."""
    targets, ops = _targets(rows)
    lines = [f"| target (H100 SXM, 90% sparse) | modeled, reference constants | met | calibrated, fitted constants "
             f"(p90 band ×/÷ {math.exp(band):.2f}) | met (calibrated) | what bounds it |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        rs = [ops[label] for label in t.labels]
        sparse = sum(_num(r[0]["modeled_op_us"]) for r in rs)
        dense = sum(_num(r[0]["modeled_dense_us"]) for r in rs)
        ratio = dense / sparse if t.speedup else sparse / dense
        unit = "x dense" if t.speedup else "x the GEMM"
        ref = f"{ratio:.2f}{unit} ({sparse:.1f} vs {dense:.1f} µs){t.extra}"
        met = "yes" if t.structural and (ratio >= t.goal if t.speedup else ratio <= t.goal) else "no"
        cal = [calibration.get(label) for label in t.labels]
        if any(c is None for c in cal):
            cal_txt, cal_met = "not in the calibration CSV", "-"
        else:
            s_fit = sum(_num(c["sparse_fit_us"]) for c in cal)
            d_fit = sum(_num(c["dense_fit_us"]) for c in cal)
            r_fit = d_fit / s_fit if t.speedup else s_fit / d_fit
            lo, hi = r_fit * math.exp(-band), r_fit * math.exp(band)
            cal_txt = f"{r_fit:.2f}{unit} ({lo:.2f}-{hi:.2f}) ({s_fit:.1f} vs {d_fit:.1f} µs)"
            cal_met = _verdict(lo, hi, t.goal, t.speedup) if t.structural else "no"
            s_ref = sum(_num(c["sparse_ref_us"]) for c in cal)
            if abs(s_ref - sparse) > STALE_REL * sparse:  # the calibration ran on other code than the report CSV
                d_ref = sum(_num(c["dense_ref_us"]) for c in cal)
                cal_txt += (f"; its own reference-constants figure: "
                            f"{(d_ref / s_ref if t.speedup else s_ref / d_ref):.2f}{unit} ({s_ref:.1f} µs)")
        bounds = ", ".join(f"{r[0]['role']}: {r[0]['bound']}" for r in rs) if len(rs) > 1 else rs[0][0]["bound"]
        lines.append(f"| {t.name} | {ref} | {met} | {cal_txt} | {cal_met} | {bounds} |")
    return "\n".join(lines)


def readme_tables(report_csv: str, cal_dir: str = CALIBRATION_DIR) -> str:
    """The README's tables: the calibrated targets table and the report's per-problem table."""
    rows = R.read_csv(report_csv)
    calibration, band = read_calibration(cal_dir)
    per_problem = R.kernel_table(rows).split("\n", 1)
    # the sparse times carry the calibration's error; the dense cuBLAS figures are not calibrated by its data
    for col in ("modeled kernel", "modeled op"):
        per_problem[0] = per_problem[0].replace(f"| {col} |", f"| {col} (×/÷ {math.exp(band):.2f} at p90) |")
    return calibrated_targets_table(rows, calibration, band) + "\n\n" + "\n".join(per_problem)


def main(argv=None):
    """``--readme-table`` here; every other option goes to ``python -m tritonsparse.sass``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--readme-table" not in argv:
        return R.main(argv)
    ap = argparse.ArgumentParser(description="print the README tables (targets with their calibrated error)")
    ap.add_argument("--readme-table", metavar="CSV", required=True, help="a kernel report CSV")
    ap.add_argument("--calibration-dir", default=CALIBRATION_DIR,
                    help="folder of calibration_h100_conclusions.csv and calibration_h100_summary.csv")
    args = ap.parse_args(argv)
    print(readme_tables(args.readme_table, args.calibration_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

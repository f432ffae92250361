"""Smoke test of benchmarks/bench_gradient_topk.py: ``--quick`` on the CPU (CSV columns and
rows, the Triton kernel skipped and never interpreted, the CSV in ./bench_results of the
current folder by default, not in the checkout), and ``--help``."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gradient_topk.py"


def _load():
    return load_script(SCRIPT)


def test_quick_csv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITONSPARSE_BACKEND", "TRITON_INTERPRET")}
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1",
                          "--min-time", "0"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bench_results"]
    files = list((tmp_path / "bench_results").glob("gradient_topk_cpu_quick_*.csv"))
    assert len(files) == 1 and (tmp_path / res.stdout.strip()).resolve() == files[0].resolve()
    assert "[gradient_topk] 1/" in res.stderr  # progress lines

    mod = _load()
    rows = list(csv.DictReader(open(files[0])))
    assert list(rows[0].keys()) == mod.FIELDS
    shapes, batches, dtypes = (len(mod.QUICK[k].split(",")) for k in ("shapes", "batches", "dtypes"))
    assert len(rows) == shapes * batches * dtypes * len(mod.METHODS)
    assert {r["method"] for r in rows} == set(mod.METHODS) and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for r in rows:
        assert r["device_type"] == "cpu" and r["threads"] == "1"
        assert r["torch_version"] and r["triton_version"] and r["device_name"]
        in_f = int(r["in_features"])
        assert int(r["k"]) == round(0.1 * in_f) and int(r["exclude_k"]) == round(0.1 * in_f)
        assert float(r["input_mem_mib"]) > 0
        if r["method"] == "fused_triton":  # never time the interpreter
            assert r["status"].startswith("skipped: no GPU") and not r["median_ms"]
        else:
            assert r["status"] == "ok"
            assert float(r["q25_ms"]) <= float(r["median_ms"]) <= float(r["q75_ms"]) and int(r["reps"]) >= 5
            assert r["peak_mem_mib"] == ""  # CUDA-only measurement
            assert float(r["score_rel_err"]) < (1e-5 if r["dtype"] == "fp32" else 2e-2)


def test_help_and_bad_arguments(capsys):
    mod = _load()
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--quick" in out and "--out-dir" in out
    with pytest.raises(SystemExit) as e:
        mod.main(["--methods", "cusparse"])
    assert e.value.code != 0 and "methods" in capsys.readouterr().err

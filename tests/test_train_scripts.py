"""The scripts: the README demo (acceptance: an SRigL MLP on digits reaches >= 90% test
accuracy at 90% sparsity on CPU, its condensed layers equal their dense counterparts)
and a smoke run of the training-step benchmark on a tiny grid (so it never rots)."""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(relpath):
    spec = importlib.util.spec_from_file_location(Path(relpath).stem, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_reaches_90_percent(tmp_path, monkeypatch):
    import tempfile

    # by default the run goes to a new temporary folder, never into the checkout or the cwd
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    s = _load("examples/demo.py").run(progress=False)
    assert Path(s["out"]).parent == tmp_path / "tmp" and (Path(s["out"]) / "metrics.json").is_file()
    assert list((tmp_path / "cwd").iterdir()) == []
    assert s["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert s["test_acc"] >= 0.90, s
    assert s["train_time_s"] < 120
    assert s["max_err_condensed_vs_dense_layer"] < 1e-4 and s["max_err_export"] < 1e-4


def test_bench_train_step_quick(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output: ./bench_results, not the checkout
    out = _load("benchmarks/bench_train_step.py").main(["--quick", "--device", "cpu", "--threads", "1"])
    assert Path(out).resolve().parent == tmp_path / "bench_results"
    rows = list(csv.DictReader(open(out)))
    assert [r["config"] for r in rows] == ["dense", "rigl", "srigl", "rigl+wide", "srigl+wide"]
    assert all(float(r["median_ms"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)
    dense, srigl_wide = float(rows[0]["gflops_per_example"]), float(rows[4]["gflops_per_example"])
    assert srigl_wide == pytest.approx(dense, rel=0.05)  # iso-FLOP (uniform densities, dense stem/head)

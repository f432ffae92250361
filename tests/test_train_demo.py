"""Acceptance: the README demo trains an SRigL MLP on digits to >= 90% test accuracy at
90% sparsity on CPU, with condensed layers equal to their dense counterparts."""
import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_demo_reaches_90_percent(tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    s = demo.run(out=str(tmp_path / "demo"), plots_dir=None, progress=False)
    assert s["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert s["test_acc"] >= 0.90, s
    assert s["train_time_s"] < 120
    assert s["max_err_condensed_vs_dense_layer"] < 1e-4 and s["max_err_export"] < 1e-4

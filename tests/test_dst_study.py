"""Smoke test of benchmarks/dst_study.py on a tiny grid (the full study is run by hand)."""
import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("dst_study", ROOT / "benchmarks" / "dst_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def test_study_tiny_grid(study, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    assert study.main(["--out", str(tmp_path), "--tag", "smoke", "--sparsities", "0.95", "--seeds", "1",
                       "--steps", "8", "--width", "24", "--delta-t", "4", "--no-progress"]) == 0
    (csv_path,) = tmp_path.glob("dst_study_smoke_*.csv")
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 2 * (1 + 5)  # per task: dense once + 5 methods at one sparsity
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and 0.0 < float(r["active_frac"]) <= 1.0
        if r["method"] in ("dense", "static", "set", "srigl-noablation"):
            assert float(r["active_frac"]) == 1.0  # only SRigL (and RigL's empty rows) drop neurons
    assert (tmp_path / f"{csv_path.stem}.png").stat().st_size > 10_000
    assert "| srigl |" in capsys.readouterr().out
    assert study.main(["--plot-only", str(csv_path), "--out", str(tmp_path / "re")]) == 0  # re-plot old results
    assert (tmp_path / "re" / f"{csv_path.stem}.png").exists()


def test_study_rejects_bad_arguments(study, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--methods", "dense,magic", "--out", str(tmp_path)])
    assert e.value.code == 2 and "magic" in capsys.readouterr().err

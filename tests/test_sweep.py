"""Smoke test of benchmarks/sweep.py: the whole script on a tiny grid (CSV, plots,
re-plotting, README table, spread of each timing, default output folder, --help), so it
never rots."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "sweep.py"


def _load():
    return load_script(SCRIPT)


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITONSPARSE_BACKEND"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=110, cwd=ROOT)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    res = _run("--quick", "--shapes", "64x96", "--sparsities", "0.5,0.9", "--batches", "1,4",
               "--min-time", "0", "--threads", "1", "--no-progress",
               "--out-dir", str(out / "results"), "--plot-dir", str(out / "plots"))
    assert res.returncode == 0, res.stderr
    files = list((out / "results").glob("sweep_*.csv"))
    assert len(files) == 1
    return out, res, files[0]


def test_csv_is_tidy_and_complete(sweep):
    _, res, path = sweep
    mod = _load()
    assert path.name.startswith("sweep_cpu_custom_")  # names the device and the grid
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0].keys()) == mod.FIELDS
    # dense once per (dtype, mode, batch); six sparse methods per sparsity
    assert len(rows) == 2 * 2 * 2 * (1 + 2 * 6)
    assert {r["device_type"] for r in rows} == {"cpu"} and {r["threads"] for r in rows} == {"1"}
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        assert float(r["q25_ms"]) <= float(r["median_ms"]) <= float(r["q75_ms"])
        rel = (float(r["q75_ms"]) - float(r["q25_ms"])) / float(r["median_ms"])
        assert float(r["iqr_rel"]) == pytest.approx(rel, rel=1e-2, abs=1e-3)
        assert r["noisy"] == ("yes" if float(r["iqr_rel"]) > 0.2 else "no")
        assert r["index_dtype"] == ("" if r["method"] == "dense" else "int16")
        assert float(r["gbps"]) > 0 and float(r["tflops"]) > 0
        assert r["torch_version"] and r["triton_version"] and r["device_name"]
    measured = {(r["method"], r["dtype"]) for r in ok}
    assert {("dense", "fp32"), ("condensed_torch", "fp32"), ("torch_csr", "fp32"), ("structured", "bf16"),
            ("condensed_torch", "bf16")} <= measured
    # the blocked CPU layout is an inference layout: timed forward, skipped (saying why) in training
    blocked = [r for r in rows if r["method"] == "blocked_torch"]
    assert all(r["status"] == "ok" for r in blocked if r["mode"] == "forward")
    assert all(r["status"].startswith("skipped: an inference layout") for r in blocked if r["mode"] == "train")
    # never time the interpreter: without a GPU the Triton methods are skipped, and say why
    for r in rows:
        if r["method"] in ("condensed_triton", "csr_triton"):
            assert r["status"].startswith("skipped: no GPU")
    assert "skipped" in res.stderr and "no GPU" in res.stderr
    # a warning says how many timings are noisy, exactly when some are
    assert ("WARNING" in res.stderr) == any(r["noisy"] == "yes" for r in ok)
    # the sanity check of each forward against the dense product
    assert all(float(r["max_rel_err"]) < 3e-2 for r in ok if r["max_rel_err"])


def test_plots_and_replot(sweep, tmp_path):
    out, res, path = sweep
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    kinds = ["speedup_vs_sparsity_64x96_forward", "speedup_vs_sparsity_64x96_train", "speedup_vs_batch_s90_forward",
             "speedup_vs_batch_s90_train", "bandwidth_b1_forward"]
    assert plots == sorted(f"{path.stem}_{k}.png" for k in kinds)
    assert _load().main(["--plot-only", str(path), "--plot-dir", str(tmp_path)]) == 0  # old results re-plot
    assert len(list(tmp_path.glob("*.png"))) == len(kinds)


def test_readme_table(sweep, capsys):
    _, _, path = sweep
    assert _load().main(["--readme-table", str(path)]) == 0
    text = capsys.readouterr().out
    assert "at 90% sparsity" in text and "CPU" in text and "| dense (ms) |" in text
    assert text.count("| 64->96 |") == 2 * 2 * 2
    assert "Not measured:" in text and "`condensed_triton`" in text


def test_help_and_bad_arguments(capsys):
    mod = _load()
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--quick" in out and "--plot-only" in out
    with pytest.raises(SystemExit) as e:
        mod.main(["--dtypes", "fp64"])
    assert e.value.code != 0 and "dtypes" in capsys.readouterr().err


def test_cost_model():
    mod = _load()
    import torch

    p = mod.Problem(64, 96, 0.75, torch.float32, torch.device("cpu"), mod.make_pattern(64, 96, 0.75, "cpu"))
    assert p.fan_in == 16 and p.nnz == 96 * 16
    flops, nbytes = p.cost("condensed_torch", 8, "forward")
    assert flops == 2 * 8 * 96 * 16
    assert nbytes == 96 * 16 * (4 + 2) + 4 * 8 * (64 + 96)  # values + int16 indices, x and y
    assert p.cost("dense", 8, "train")[0] == 3 * 2 * 8 * 64 * 96


def _row(method, median, q25, q75, **kw):
    base = dict(device_type="cpu", device_name="cpu", threads="1", torch_version="t", triton_version="t",
                dtype="fp32", in_features=8, out_features=8, batch=1, sparsity=0.9, method=method, mode="forward",
                status="ok", median_ms=median, q25_ms=q25, q75_ms=q75)
    base.update(kw)
    return base


def test_readme_table_marks_noisy_ratios(tmp_path):
    mod = _load()
    rows = [_row("dense", 1.0, 0.95, 1.05, sparsity=0.0, batch=1), _row("condensed_torch", 0.5, 0.4, 0.7, batch=1),
            _row("dense", 2.0, 1.0, 3.0, sparsity=0.0, batch=2), _row("condensed_torch", 1.0, 0.99, 1.01, batch=2),
            _row("dense", 1.0, 0.99, 1.01, sparsity=0.0, batch=4), _row("condensed_torch", 0.5, 0.49, 0.51, batch=4)]
    path = mod.write_csv(rows, tmp_path / "t.csv")  # no noisy column: computed from the quartiles
    text = mod.readme_table(path)
    assert "| 8->8 | fp32 | forward | 1 | 1 | 2.00x* |" in text  # the sparse timing is noisy (60%)
    assert "| 8->8 | fp32 | forward | 2 | 2* | 2.00x* |" in text  # the dense one is (100%)
    assert "| 8->8 | fp32 | forward | 4 | 1 | 2.00x |" in text
    assert "(2 of 3 ratios; computed from the CSV's quartiles" in text and "20%" in text
    for r in rows:
        r["noisy"] = "no"  # the CSV's own column wins (a run with another --noisy-above)
    assert "*" not in mod.readme_table(mod.write_csv(rows, tmp_path / "u.csv")).split("\n\n")[1]


def test_default_output_is_not_the_checkout(tmp_path, monkeypatch):
    """Without --out-dir the CSV and its plots go to ./sweep_results in the current folder;
    benchmarks/results/ and plots/ of the checkout only with --repo-results."""
    import torch

    mod = _load()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRITONSPARSE_BACKEND", raising=False)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--shapes", "16x24", "--sparsities", "0.5", "--batches", "2", "--dtypes", "fp32",
                         "--modes", "forward", "--methods", "dense,condensed_torch", "--min-time", "0",
                         "--threads", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    files = sorted(p.name for p in (tmp_path / "sweep_results").iterdir())
    assert len(files) == 1 + 3 and files[0].endswith(".csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep_results"]


def test_llm_shapes_in_the_gpu_grid(capsys):
    mod = _load()
    for grid in (mod.FULL, mod.LLM):
        assert {(4096, 14336), (14336, 4096)} <= set(mod.parse_shapes(grid["shapes"]))
    assert "14336" not in mod.QUICK["shapes"]  # the CPU quick grid leaves them out
    assert set(mod.parse_list(mod.LLM["batches"], int)) <= set(range(1, 17)) and "bf16" in mod.LLM["dtypes"]
    from tritonsparse import default_index_dtype
    import torch

    assert default_index_dtype(14336) == torch.int16  # int16 indices for both LLM shapes
    with pytest.raises(SystemExit):
        mod.main(["--llm", "--quick"])
    assert "pick one" in capsys.readouterr().err

"""benchmarks/calibrate_model.py: the published figures carry their source, the fit is
held out by family, the re-stated model equals the model, and the committed results
follow from the committed launch records. Compiles run only where Triton can build for
sm_90 (TRITON_INTERPRET unset in a subprocess); the Liger capture only when the optional
extra ``.[calibrate]`` is installed."""
import csv
import importlib.util
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("calibrate_model", os.path.join(ROOT, "benchmarks",
                                                                                 "calibrate_model.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["calibrate_model"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


cm = _load()


def test_published_rows_name_their_source_and_gpu():
    rows = cm.read_published()
    assert len(rows) >= 40
    for r in rows:
        assert r["source_repo"] == "linkedin/Liger-Kernel"
        assert r["source_file"] == "benchmark/data/all_benchmark_data.csv"
        assert len(r["source_commit"]) == 40
        assert r["gpu_name"] == "NVIDIA H100 80GB HBM3"
        assert float(r["median_ms"]) > 0
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
    fams = {r["family"] for r in rows}
    assert fams == set(cm.FAMILY_OF.values())
    assert fams & set(cm.GATHER_FAMILIES), "the gather regime needs at least one published point"


def test_folds_split_families_not_rows():
    a, b = (set(v) for v in cm.FOLDS.values())
    assert not a & b
    assert a | b == set(cm.FAMILY_OF.values())


def test_extract_keeps_only_h100_speed_rows(tmp_path):
    src = tmp_path / "all.csv"
    cols = ["kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name",
            "x_label", "x_value", "y_value_50", "y_value_20", "y_value_80", "extra_benchmark_config_str", "gpu_name",
            "timestamp", "liger_version"]
    base = dict(kernel_name="relu_squared", kernel_provider="liger", kernel_operation_mode="forward",
                metric_name="speed", metric_unit="ms", x_name="N", x_label="N", x_value="128", y_value_50="0.01",
                y_value_20="0.009", y_value_80="0.011", extra_benchmark_config_str="{}", gpu_name=cm.H100_NAME,
                timestamp="t", liger_version="0.7.0")
    rows = [base, {**base, "gpu_name": "NVIDIA A100-SXM4-80GB"}, {**base, "metric_name": "memory"},
            {**base, "kernel_provider": "torch"}, {**base, "kernel_operation_mode": "full"}]
    with open(src, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "pub.csv"
    assert cm.extract_published(str(src), "a" * 40, str(out)) == 1
    with pytest.raises(ValueError, match="commit"):
        cm.extract_published(str(src), "HEAD", str(out))


def test_stats_and_fit_recover_known_constants():
    # synthetic records: one memory-bound launch per point; measured = model at known constants
    recs, measured = {}, {}
    truth = {**cm.reference_params(), "hbm_efficiency": 0.7, "launch_floor_s": 5e-6}
    for i, b in enumerate([1e6, 1e7, 1e8, 1e9]):
        rec = {"kind": "kernel", "launch": 0, "hbm_bytes": b, "waves": 1, "trips": 0, "loop_instr": 0,
               **{f"t_{n}": "" for n in cm.TERM_NAMES}, "t_issue": 1e-7, "t_HBM": 0.0}
        recs[f"p{i}"] = [rec]
        measured[f"p{i}"] = cm.point_seconds([rec], truth)
    got = cm.fit(recs, measured, list(recs), grid=61, passes=6)
    err = [abs(math.log(cm.point_seconds(recs[k], got) / measured[k])) for k in recs]
    assert max(err) < 0.03
    assert abs(got["hbm_efficiency"] - 0.7) < 0.05
    assert cm.stats([0.1, 0.2, 0.3, 0.4]) == (0.25, 0.4)
    with pytest.raises(ValueError, match="no points"):
        cm.fit(recs, measured, [])


def test_committed_results_follow_from_committed_launches():
    """The points and summary CSVs are what the fit gives on the committed launch records."""
    published = cm.read_published()
    recs = cm.read_launches()
    missing = {p["id"] for p in published} - set(recs)
    # only points whose capture this host cannot hold (SkipPoint) may be missing
    assert all(m.startswith("tvd/backward/") for m in missing), missing
    assert len(missing) <= 3
    rows, summary = cm.evaluate(published, recs)
    with open(cm.POINTS_CSV, newline="") as f:
        committed = {r["point"]: r for r in csv.DictReader(f)}
    for r in rows:
        c = committed[r["point"]]
        assert c["regime"] == r["regime"]
        for col in ("modeled_ref_us", "modeled_heldout_us", "modeled_fit_all_us", "modeled_heldout_2c_us",
                    "modeled_fit_all_2c_us"):
            assert float(c[col]) == pytest.approx(r[col], rel=1e-4)
    for what in ("error:held-out (2-fold by family)", f"error:held-out, {cm.TWO}"):
        heldout = {s["regime"]: s for s in summary if s["what"] == what}
        assert set(cm.REGIMES) <= {k for k, s in heldout.items() if s["n"] > 0}
        for s in heldout.values():
            if s["n"]:
                assert 0 <= s["median_abs_log"] <= s["p90_abs_log"] < 5
    # the constants a partial fit leaves alone stay the model's own
    two = next(s for s in summary if s["what"] == f"fit:all, {cm.TWO}")
    ref = cm.reference_params()
    assert all(two[k] == ref[k] for k in cm.PARAMS if k not in cm.TWO_PARAMS)


_STANDIN = r'''
import json, sys, math
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch, triton, triton.language as tl
import calibrate_model as cm
from tritonsparse.sass import model as M
from tritonsparse.sass.compile import capture_launches

@triton.jit
def _rows_scale(x_ptr, y_ptr, n_rows, n_cols, rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(pid * rows_per_program, tl.minimum((pid + 1) * rows_per_program, n_rows)):
        x = tl.load(x_ptr + r * n_cols + cols, mask=cols < n_cols, other=0.0)
        acc = tl.fma(x, x, acc)
    tl.store(y_ptr + pid * n_cols + cols, acc, mask=cols < n_cols)

x = torch.empty(4096, 512); y = torch.empty(132, 512)
launches = capture_launches(lambda: _rows_scale[(132,)](x, y, 4096, 512, 32, BLOCK=512))
keep = []
recs = cm.model_launch(launches[0], lambda kw: 32, keep_summaries=keep)
for r in recs:
    r["launch"] = 0
summ, kw = keep[0]
out = []
for p in [cm.reference_params(), {**cm.reference_params(), "hbm_efficiency": 0.6, "launch_floor_s": 6e-6,
          "mem_latency_cycles": 900.0, "l2_bw": 3e12, "tensor_scale": 0.5}]:
    direct = M.kernel_time(summ, gpu=cm.gpu_with(p), **kw).total
    out.append([direct, cm.point_seconds(recs, p), recs[0]["trips"], recs[0]["t_latency"] != ""])
print(json.dumps(out))
'''


def test_restated_model_equals_model_on_a_compiled_standin(tmp_path):
    """Compile a tiny published-kernel stand-in (a row loop, as Liger's norm backward has)
    for sm_90 and check that the refit's re-stated model equals ``model.kernel_time``."""
    pytest.importorskip("triton")
    script = tmp_path / "standin.py"
    script.write_text(_STANDIN)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), ROOT], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "nvdisasm" in proc.stderr):
        pytest.skip("no sm_90 toolchain in this triton wheel")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    for direct, restated, trips, has_latency in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert trips == 32 and has_latency
        assert restated == pytest.approx(direct, rel=1e-9)


def test_capture_a_published_kernel_when_liger_is_installed():
    pytest.importorskip("liger_kernel")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/benchmarks');"
            "import calibrate_model as cm;"
            "p = {'family': 'relu_squared', 'mode': 'backward', 'x_value': '128', 'x_name': 'N', 'id': 't',"
            " 'extra_config': '{\"M\": 64, \"dtype\": \"torch.bfloat16\"}'};"
            "[(pid, cap)] = cm.capture_point(p); print(len(cap.launches), cap.launches[0].name)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, name = proc.stdout.split()[-2:]
    assert n == "1" and "relu_squared_backward" in name


def test_torch_op_records_follow_the_model():
    from tritonsparse.sass import model as M

    for b in (1e5, 2e8):
        rec = {"kind": "torch_op", "launch": 0, "hbm_bytes": b, "flops": 0, "dtype": "fp32"}
        for p in (cm.reference_params(), {**cm.reference_params(), "hbm_efficiency": 0.7, "l2_bw": 4e12,
                                          "launch_floor_s": 5e-6}):
            assert cm.launch_seconds(rec, p) == pytest.approx(M.torch_op_time(b, cm.gpu_with(p)), rel=1e-12)
    with pytest.raises(ValueError, match="unknown constant"):
        cm.gpu_with({"clock": 1.0})

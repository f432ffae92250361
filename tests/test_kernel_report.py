"""The SASS hot-loop report (``tritonsparse.sass``): parsing and counting checked on
hand-written SASS and on probe kernels whose SASS is known, the roofline model's
arithmetic, bad input, and a smoke run of the report CLI on a tiny problem.

Compiling needs ``TRITON_INTERPRET`` unset, which the suite sets at import: compile steps
run in subprocesses (the Triton file cache keeps reruns fast).
"""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from tritonsparse.sass import model as M
from tritonsparse.sass.parse import count, find_loops, hot_loop, load_width_bits, parse, summarize
from tritonsparse.sass.problems import Problem

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the Triton NVIDIA backend ships for Linux")


def _run(args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


# -- parsing and counting on hand-written SASS -------------------------------------------
_SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD.SHL.U32 R2, R0, 0x4, RZ ;
.L_x_0:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/              @!P0 LDG.E.U16 R8, desc[UR4][R2.64+0x10] ;
        /*0040*/                   LDG.E R9, desc[UR4][R2.64+0x20] ;
.L_x_1:
        /*0050*/                   FFMA R10, R4, R5, R10 ;
        /*0060*/                   HFMA2 R11, R8, R8, R11 ;
        /*0070*/                   FMUL R12, R6, R7 ;
        /*0080*/                   SHFL.BFLY PT, R13, R12, 0x1, 0x1f ;
        /*0090*/                   ISETP.GE.AND P1, PT, R0, 0x10, PT ;
        /*00a0*/                   NOP ;
        /*00b0*/               @P1 BRA `(.L_x_1) ;
        /*00c0*/                   LDS.64 R14, [R0] ;
        /*00d0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00e0*/                   IADD3 R2, R2, 0x40, RZ ;
        /*00f0*/               @P0 BRA `(.L_x_0) ;
        /*0100*/                   STG.E.64 desc[UR4][R2.64], R10 ;
        /*0110*/                   EXIT ;
.L_x_2:
        /*0120*/                   BRA `(.L_x_2) ;
"""


def test_parse_finds_nested_loops_and_the_inner_hot_one():
    instrs, labels = parse(_SASS)
    assert len(instrs) == 19 and labels == {".L_x_0": 0x20, ".L_x_1": 0x50, ".L_x_2": 0x120}
    loops = find_loops(instrs, labels)
    assert [(lp.start, lp.end, lp.depth) for lp in loops] == [(0x50, 0xB0, 1), (0x20, 0xF0, 0)]  # BRA self: no loop
    hot = hot_loop(loops)
    assert (hot.start, hot.end) == (0x50, 0xB0)
    c = count(hot.body)
    assert (c["ffma"], c["hfma2"], c["fp32"], c["shfl"], c["int"], c["control"]) == (1, 1, 1, 1, 1, 1)
    assert c["total"] == 6  # the NOP takes no issue slot here
    assert c["fma_lanes"] == 32 + 64 and c["fmul_lanes"] == 32


def test_count_global_loads_by_width_and_bytes():
    instrs, labels = parse(_SASS)
    outer = find_loops(instrs, labels)[1]
    c = count(outer.body)
    assert (c["ldg128"], c["ldg16"], c["ldg32"], c["ldg64"]) == (1, 1, 1, 0)
    assert c["ldg_bytes"] == 32 * (16 + 2 + 4)
    assert (c["lds"], c["bar"], c["lds_bytes"]) == (1, 1, 32 * 8)
    assert load_width_bits(instrs[-3]) == 64  # STG.E.64
    s = summarize(_SASS)
    assert s.kernel_counts["stg"] == 1 and s.outside_hot == s.kernel_counts["total"] - 6


def test_parse_rejects_text_without_sass():
    with pytest.raises(ValueError, match="no SASS"):
        parse("hello")
    with pytest.raises(TypeError, match="sass"):
        parse(b"bytes")


# -- counting on compiled probe kernels --------------------------------------------------
@linux_only
def test_counting_on_probe_kernels_with_known_sass():
    got = json.loads(_run(["-m", "tritonsparse.sass.probe"]).strip().splitlines()[-1])
    fma = got["fma_chain"]
    # ptxas unrolls the loop of four dependent FMAs by 4 and keeps a remainder loop
    assert fma["loops"] == 2
    hot = fma["hot"]
    assert hot["ffma"] == 16 and hot["fma_lanes"] == 16 * 32
    assert hot["ldg"] == hot["shfl"] == hot["bar"] == hot["fp32"] == hot["spill"] == 0
    assert hot["total"] == 19  # 16 FFMA, the counter's add and compare, the branch
    st = got["stream_sum"]
    hot = st["hot"]
    assert hot["ldg128"] == 4 and hot["ldg32"] == hot["ldg64"] == 0 and hot["ldg_bytes"] == 4 * 512
    assert hot["fp32"] == 4 * hot["ldg128"] and hot["ffma"] == 0  # four FADD per 128-bit row slice
    assert "stride:D" in st["spec"]  # the divisibility hint of the runtime's specialization
    assert fma["usage"]["local"] == 0 and st["usage"]["stack"] == 0


# -- the model -----------------------------------------------------------------------------
def test_occupancy_limits():
    h = M.H100_SXM
    assert M.occupancy(h, regs=96, warps=4, shared=1024) == 5  # 96 regs: 12288 per CTA
    assert M.occupancy(h, regs=32, warps=4, shared=0) == 16  # thread limit: 2048 / 128
    assert M.occupancy(h, regs=255, warps=8, shared=0) == 1
    assert M.occupancy(h, regs=32, warps=1, shared=0) == 32  # CTA limit
    assert M.occupancy(h, regs=32, warps=4, shared=100 * 1024) == 2  # shared memory
    with pytest.raises(ValueError, match="warps"):
        M.occupancy(h, regs=32, warps=0, shared=0)


def test_dense_time_and_lower_bound():
    h = M.H100_SXM
    fmas = 256 * 768 * 3072
    t = M.dense_time(fmas, "fp32", 0, h)
    assert t == pytest.approx(2 * fmas / 50e12 + h.launch_floor_s)
    assert M.dense_time(fmas, "tf32", 0, h) < t
    lb, which = M.lower_bound(fmas // 10, hbm_bytes=1e6, gather_bytes_per_fma=4, gpu=h)
    assert which == "gather floor" and lb == pytest.approx(fmas // 10 * 4 / h.l1_bw)
    assert h.ffma_flops == pytest.approx(66.9e12, rel=0.01)  # 132 SMs x 128 lanes x 2 x 1.98 GHz
    with pytest.raises(ValueError, match="dtype"):
        M.dense_time(fmas, "int8", 0, h)
    with pytest.raises(ValueError, match="no constant"):
        M.with_constants(h, l3_bw=1.0)
    assert M.with_constants(h, l2_bw=7e12).l2_bw == 7e12


def test_kernel_time_terms_follow_the_counts():
    s = summarize(_SASS)
    common = dict(regs=64, shared=0, warps=4, useful_fmas=132 * 4 * 128 * 96, hbm_bytes=0.0)
    t = M.kernel_time(s, ctas=132 * 4, **common)
    # 96 useful FMA lanes per warp per trip (FFMA + HFMA2; the FMUL is not an FMA), 4 warps per CTA
    assert t.per_trip == 4 * 96 and t.trips == math.ceil(132 * 4 * 128 * 96 / (132 * 4 * t.per_trip))
    t2 = M.kernel_time(s, ctas=132 * 8, **{**common, "useful_fmas": 2 * common["useful_fmas"]})
    assert t2.terms["issue"] == pytest.approx(2 * t.terms["issue"], rel=0.02)
    assert t.bound in t.terms and t.total == pytest.approx(max(t.terms.values()) + M.H100_SXM.launch_floor_s)
    with pytest.raises(ValueError, match="ctas"):
        M.kernel_time(s, ctas=0, **common)


# -- problems and bad input ------------------------------------------------------------------
def test_problem_validation_names_the_argument():
    with pytest.raises(ValueError, match="role"):
        Problem("backward", 8, 8, 2, 4)
    with pytest.raises(ValueError, match="dtype"):
        Problem("fwd", 8, 8, 2, 4, dtype="fp8")
    with pytest.raises(ValueError, match="index_dtype"):
        Problem("fwd", 8, 8, 2, 4, index_dtype="uint8")
    with pytest.raises(ValueError, match="batch"):
        Problem("fwd", 8, 8, 2, 0)
    with pytest.raises(ValueError, match="K=9"):
        Problem("fwd", 8, 8, 9, 4)
    with pytest.raises(ValueError, match="hw"):
        Problem("conv_fwd", 8, 8, 9, 4)
    p = Problem("fwd", 768, 3072, 77, 256)
    assert p.useful_fmas == 256 * 3072 * 77 and p.dense_fmas == 256 * 768 * 3072


def test_fake_pointer_rejects_bad_dtype():
    from tritonsparse.sass.compile import FakePtr

    with pytest.raises(ValueError, match="dtype"):
        FakePtr("float33")
    with pytest.raises(TypeError, match="dtype"):
        FakePtr(3)
    assert FakePtr("bf16", 4).data_ptr() % 16 == 4


def test_readme_tables_from_a_csv(tmp_path):
    from tritonsparse.sass import report as R

    base = {k: "0" for k in R.COLUMNS}
    rows = []
    for role, t, dense in (("fwd", "10", "26"), ("dx", "12", "26"), ("dw", "14", "26")):
        rows.append({**base, "problem": f"{role} 768->3072", "role": role, "in": "768", "out": "3072", "K": "77",
                     "batch": "256", "dtype": "fp32", "index_dtype": "int32", "kernel": "_k", "config": "64,2,32",
                     "warps": "4", "chosen": "1", "regs": "90", "occupancy": "5", "ffma": "32", "instr_per_fma": "3.2",
                     "modeled_us": t, "modeled_op_us": t, "torch_ops": "", "torch_ops_us": "0", "bound": "issue", "modeled_dense_us": dense, "dense_kind": "fp32",
                     "modeled_dense_tf32_us": "6", "lower_bound_us": "7", "lower_bound_kind": "gather floor"})
    rows.append({**rows[0], "chosen": "0", "modeled_us": "99"})
    path = tmp_path / "r.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=R.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    text = R.readme_table(str(path))
    assert "| fwd fp32 B=256 768→3072" in text and "2.60x SGEMM" in text and "| yes |" in text
    assert "2.17x (36.0 vs 78.0 µs)" in text  # the training step: 3 x 26 over 10 + 12 + 14
    assert "32 FFMA" in text and "99" not in text  # only the chosen config's row


@linux_only
def test_report_cli_smoke(tmp_path):
    """The report runs end to end on a tiny problem (first pruned config of each launch)."""
    path = tmp_path / "report.csv"
    out = _run(["-m", "tritonsparse.sass", "--cases", "smoke", "--max-configs", "1", "--csv", str(path)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["role"] for r in rows} == {"fwd", "dx", "dw"}
    for r in rows:
        assert int(r["regs"]) > 0 and int(r["stack"]) == 0 and float(r["modeled_us"]) > 0
        assert int(r["loop_instr"]) > 0 and int(r["trips"]) >= 1
    assert "modeled kernel" in out
    bad = subprocess.run([sys.executable, "-m", "tritonsparse.sass", "fwd", "--in", "8"], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert bad.returncode == 2 and "--batch" in bad.stderr


@linux_only
def test_gradient_topk_at_srigl_k_launches_only_spill_checked_builds():
    """At SRigL's k for the 90% ViT-B MLP (k = 2K: 154 and 614, no exclusions) gradient_topk
    launches no fused kernel wider than the widest buffer the AOT sweep builds and checks
    for spills (``MAX_KERNEL_KP``); past it the op takes the GEMM path: one ``mm`` and one
    selection kernel (``topk_select``) at a width its AOT specs build, nothing else."""
    script = (
        "import json\n"
        "from tritonsparse.kernels.gradient_topk import MAX_KERNEL_KP\n"
        "from tritonsparse.kernels.topk_select import AOT_SPECS\n"
        "from tritonsparse.sass.problems import Problem, capture\n"
        "built = sorted({(s[2]['BLOCK_D'], s[2]['KP'], s[2]['THREADS']) for s in AOT_SPECS})\n"
        "out = {}\n"
        "for i, o, k in ((768, 3072, 154), (3072, 768, 614), (3072, 768, 100)):\n"
        "    launches, ops = capture(Problem('topk', i, o, k, 256))\n"
        "    out[k] = {'kp': [l.args.get('KP') for l in launches], 'ops': [x.name for x in ops],\n"
        "              'names': [l.name for l in launches], 'max': MAX_KERNEL_KP,\n"
        "              'sel': [[l.args['BLOCK_D'], l.args['KP'], l.args['THREADS']] in [list(b) for b in built]\n"
        "                      for l in launches if l.name == '_topk_select_kernel']}\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(_run(["-c", script], timeout=300).strip().splitlines()[-1])
    for k in ("154", "614"):
        g = got[k]
        assert g["names"] == ["_topk_select_kernel"] and g["ops"] == ["mm"] and g["sel"] == [True], (k, g)
    assert got["100"]["kp"] == [128] and got["100"]["names"] == ["_gradient_topk_kernel"]  # the fused kernel's widest



@linux_only
def test_capture_models_the_cuda_steady_state_not_the_cpu_checks():
    """The report runs the library on CPU tensors, but a GPU range-checks an indices tensor
    once per version, not per call: the captured steady state must not charge the CPU's
    per-call ``aminmax``, while a plain CPU call outside the report still checks."""
    script = (
        "import json, torch\n"
        "from tritonsparse import condensed_matmul\n"
        "from tritonsparse.sass.problems import Problem, capture\n"
        "_, ops = capture(Problem('fwd', 64, 32, 8, 16))\n"
        "values, indices = torch.randn(32, 8), torch.randint(0, 64, (32, 8), dtype=torch.int32)\n"
        "condensed_matmul(torch.randn(4, 64), values, indices)\n"
        "indices.data[0, 0] = 64\n"  # behind the version counter
        "try:\n"
        "    condensed_matmul(torch.randn(4, 64), values, indices)\n"
        "    err = ''\n"
        "except ValueError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps({'ops': [o.name for o in ops], 'err': err}))\n"
    )
    got = json.loads(_run(["-c", script], timeout=300).strip().splitlines()[-1])
    assert "aminmax" not in got["ops"] and "clone" in got["ops"], got  # the batch-major copy of x stays
    assert "out of range" in got["err"]  # the CPU's per-call check still runs outside the report


@linux_only
def test_bwd_capture_holds_one_dy_copy_and_both_kernels():
    """A training step's backward computes dX and dValues in ONE call: the ``bwd`` problem
    captures that call, so it holds the launches of ``dx`` and ``dw`` together but the
    batch-major copy of dY (a ``clone``) once, where ``dx`` + ``dw`` charge it twice.
    Batch 96 makes dValues split the batch (partial sums to reduce)."""
    script = (
        "import json\n"
        "from tritonsparse.sass.problems import Problem, capture\n"
        "out = {}\n"
        "for role in ('dx', 'dw', 'bwd'):\n"
        "    got, ops = capture(Problem(role, 1024, 64, 12, 96))\n"
        "    out[role] = {'launches': [g.name for g in got], 'ops': [o.name for o in ops]}\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(_run(["-c", script], timeout=300).strip().splitlines()[-1])
    dx, dw, bwd = got["dx"], got["dw"], got["bwd"]
    assert sorted(bwd["launches"]) == sorted(dx["launches"] + dw["launches"]), got
    assert any("csr_gather" in n for n in bwd["launches"]) and any("dw" in n for n in bwd["launches"]), got
    assert dx["ops"].count("clone") == 1 and dw["ops"].count("clone") == 1, got
    assert bwd["ops"].count("clone") == 1, got  # dY made batch-major once
    assert sorted(bwd["ops"] + ["clone"]) == sorted(dx["ops"] + dw["ops"]), got
    # what is left around the kernels: the dY copy; no index_select of the values (dX reads
    # them through the permutation), no sum or cast of the partials (the reduce kernel)
    assert bwd["ops"] == ["clone"], got
    assert "_dw_reduce_kernel" in bwd["launches"], got


def test_bwd_problem_counts_both_products():
    """The bwd problem's work is dX's plus dValues' (and two dense GEMMs), and its launches
    are told apart by kernel: the CSR gather serves dX, the rest dValues."""
    from tritonsparse.sass.report import launch_role, step_roles

    p = Problem("bwd", 768, 3072, 77, 256)
    assert p.useful_fmas == Problem("dx", 768, 3072, 77, 256).useful_fmas + Problem("dw", 768, 3072, 77, 256).useful_fmas
    assert p.dense_fmas == 2 * 256 * 768 * 3072
    assert launch_role(p, "_csr_gather_kernel") == "dx" and launch_role(p, "_condensed_dw_kernel") == "dw"
    assert launch_role(p, "_group_dx_kernel") == "dx" and launch_role(p, "_column_reduce_kernel") == "dx"
    assert launch_role(p, "_dw_reduce_kernel") == "dw" and launch_role(Problem("dx", 768, 3072, 77, 256), "x") == "dx"
    assert step_roles(lambda r: True) == ("fwd", "bwd")
    assert step_roles(lambda r: r != "bwd") == ("fwd", "dx", "dw")
    assert step_roles(lambda r: r == "fwd") == ()

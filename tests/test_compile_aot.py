"""Every Triton kernel, with every autotune config, builds ahead of time for sm_80 and
sm_90 (no GPU needed) with the runtime's specialization and uses no local memory (no
register spills); and the hot loops of the sm_90 builds have the structure the
performance work needs (issue 8): no shuffles or barriers in the forward and dX loops,
128-bit gathers when the batch tile is 16 or wider.

Runs ``python -m tritonsparse._aot`` once, in a subprocess because the interpreter, which
the rest of the suite turns on, replaces the kernels at import time; the structural tests
read the SASS counts that sweep wrote (``--json``), so nothing is compiled twice.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the Triton NVIDIA backend ships for Linux")

FWD = "tritonsparse.kernels.condensed_fwd"
DX = "tritonsparse.kernels.csr_gather"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "builds.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    proc = subprocess.run(
        [sys.executable, "-m", "tritonsparse._aot", "--arch", "80", "90", "--jobs", jobs, "--json", str(path)],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    builds = json.loads(path.read_text()) if path.exists() else []
    return proc, builds


def _sm90(builds, module):
    got = [b for b in builds if b.get("module") == module and b.get("arch") == 90 and b.get("ok")]
    assert got, f"no sm_90 build of {module} in the sweep"
    return got


def test_every_kernel_config_builds_without_spills(sweep):
    proc, builds = sweep
    report = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, "\n".join(report[-40:]) + proc.stderr[-2000:]
    assert report and "builds without spills" in report[-1]
    built, total = report[-1].split()[0].split("/")
    assert built == total and int(total) >= 100  # every kernel file registered its configs
    assert len(builds) == int(total)
    # the runtime's specialization reached the builds: aligned pointers, unit strides constant
    fwd = _sm90(builds, FWD)
    assert all("xT_ptr:D" in b["spec"] for b in fwd), fwd[0]["spec"]


def _loop_table(builds, key):
    return "\n".join(f"{b['kernel']} {b['dtypes']} {b['config']} w{b['warps']}: {key}={b['hot_loop'].get(key)}"
                     for b in builds)


@pytest.mark.parametrize("module", [FWD, DX], ids=["forward", "dX"])
def test_forward_and_dx_hot_loops_have_no_shuffle_or_barrier(sweep, module):
    """The K reduction stays in registers: no SHFL or BAR inside the hot loop (issue 8)."""
    builds = _sm90(sweep[1], module)
    bad = [b for b in builds if not b["hot_loop"] or b["hot_loop"]["shfl"] or b["hot_loop"]["bar"]]
    assert not bad, f"{len(bad)}/{len(builds)} builds reduce inside the loop:\n" + _loop_table(bad, "shfl")


@pytest.mark.parametrize("module", [FWD, DX], ids=["forward", "dX"])
def test_gathers_are_128_bit_from_batch_16(sweep, module):
    """At batch >= 16 (batch tile >= 16, batch and row stride divisible by 16) the gathers of
    the batch-contiguous operand compile to 128-bit loads."""
    from tritonsparse.kernels._configs import FP32_ONLY_TILES

    def pruned_for_16_bit(b):  # the prune never launches these tiles on a 16-bit x (64-bit vectors there)
        c = b["config"]
        tile = (c.get("BLOCK_N"), c.get("BLOCK_K"), c.get("BLOCK_B"), c.get("UNROLL"), b["warps"])
        return tile in FP32_ONLY_TILES and b["dtypes"].split("/")[0] in ("bf16", "fp16")

    builds = [b for b in _sm90(sweep[1], module) if b["config"].get("BLOCK_B", 0) >= 16 and not pruned_for_16_bit(b)]
    assert builds
    bad = [b for b in builds if not b["hot_loop"] or b["hot_loop"]["ldg128"] == 0]
    assert not bad, f"{len(bad)}/{len(builds)} builds gather without 128-bit loads:\n" + _loop_table(bad, "ldg128")

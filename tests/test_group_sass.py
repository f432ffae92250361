"""Structural SASS checks of the group-shared gather-MMA kernels (sm_90, the runtime's
specialization, via the SASS report): the hot loop runs tensor-core MMA, gathers with
128-bit loads, has no shuffles, and nothing spills. Compiles run in a subprocess
(the suite turns the interpreter on)."""
import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json
from tritonsparse.sass.problems import Problem
from tritonsparse.sass.report import analyze, rows
out = {}
for role in ("fwd", "dx", "dw"):
    p = Problem(role, 512, 256, 40, 256, dtype="bf16", index_dtype="int16", G=64)
    out[role] = rows(p, analyze(p, max_configs=1))
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the Triton NVIDIA backend ships for Linux")
def test_group_kernels_hot_loops_use_tensor_cores():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for role, rows in got.items():
        mma = [r for r in rows if r["kernel"] != "_column_reduce_kernel"]
        assert mma, role
        for r in rows:
            assert int(r["stack"]) == 0 and int(r["local"]) == 0, (role, r["kernel"])
            assert int(r["shfl"]) == 0, (role, r["kernel"])
        for r in mma:
            assert int(r["hmma"]) + int(r["hgmma"]) > 0, (role, r["config"])  # tensor cores in the hot loop
            assert int(r["ffma"]) == 0, (role, r["config"])
    assert int(got["fwd"][0]["ldg128"]) > 0  # the gathered xT rows load 16 bytes at a time

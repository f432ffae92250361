"""Every Triton kernel, with every autotune config, builds ahead of time for sm_80 and
sm_90 (no GPU needed) and uses no local memory (no register spills).

Runs ``python -m tritonsparse._aot`` in a subprocess because the interpreter, which the
rest of the suite turns on, replaces the kernels at import time.
"""
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform != "linux", reason="the Triton NVIDIA backend ships for Linux")
def test_every_kernel_config_builds_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    proc = subprocess.run(
        [sys.executable, "-m", "tritonsparse._aot", "--arch", "80", "90", "--jobs", jobs],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    report = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, "\n".join(report[-40:]) + proc.stderr[-2000:]
    assert report and "builds without spills" in report[-1]
    built, total = report[-1].split()[0].split("/")
    assert built == total and int(total) >= 100  # every kernel file registered its configs

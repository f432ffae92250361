"""Probe kernels whose SASS is known, to check the counting (``tests/test_kernel_report.py``).

``_fma_chain``: 128 fp32 lanes on 4 warps (one element per thread), a loop of
``n_iter`` trips, each trip four dependent ``tl.fma``: 4 FFMA per trip and no loads.
``_stream_sum``: 512 fp32 lanes on 4 warps (four contiguous elements per thread), a loop
that adds one row of x per trip: one 128-bit global load and 4 FADD per trip.

    python -m tritonsparse.sass.probe   # prints the hot-loop counts as JSON
"""
from __future__ import annotations

import json
import sys

import triton
import triton.language as tl


@triton.jit
def _fma_chain(x_ptr, y_ptr, n_iter, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(n_iter):
        acc = tl.fma(acc, a, 1.0)
        acc = tl.fma(acc, a, 2.0)
        acc = tl.fma(acc, a, 3.0)
        acc = tl.fma(acc, a, 4.0)
    tl.store(y_ptr + offs, acc)


@triton.jit
def _stream_sum(x_ptr, y_ptr, n_rows, stride, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(n_rows):
        acc += tl.load(x_ptr + r * stride + offs)
    tl.store(y_ptr + offs, acc)


def probe_counts(arch: int = 90) -> dict:
    """{probe name: {"loops": n, "hot": hot-loop counts, "usage": resources}} for both probes."""
    from .compile import FakePtr, compile_spec, disassemble, resource_usage, specialize
    from .parse import summarize

    cases = {
        "fma_chain": (_fma_chain, {"x_ptr": FakePtr("fp32"), "y_ptr": FakePtr("fp32"), "n_iter": 7, "BLOCK": 128}),
        "stream_sum": (_stream_sum, {"x_ptr": FakePtr("fp32"), "y_ptr": FakePtr("fp32"), "n_rows": 7,
                                     "stride": 512, "BLOCK": 512}),
    }
    out = {}
    for name, (fn, args) in cases.items():
        spec = specialize(fn, args, arch=arch, num_warps=4, num_stages=1)
        compiled = compile_spec(spec)
        summ = summarize(disassemble(compiled.asm["cubin"]))
        out[name] = {"loops": len(summ.loops), "hot": summ.loop_counts, "usage": resource_usage(compiled.asm["cubin"]),
                     "spec": spec.describe()}
    return out


if __name__ == "__main__":
    json.dump(probe_counts(int(sys.argv[1]) if len(sys.argv) > 1 else 90), sys.stdout)
    print()

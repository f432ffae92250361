"""Ahead-of-time build check: compile every Triton kernel with every autotune config for
real GPU targets, without a GPU, and read the cubin's register and local-memory use.

Each kernel file lists ``AOT_SPECS``: ``(autotuner, signature, constexprs)`` tuples in
``triton.compiler.ASTSource`` form; every config's kwargs and num_warps/num_stages are
merged in here. A kernel that passes in the interpreter but would not build (or would
spill registers to local memory) on sm_80/sm_90 fails this check.

    python -m tritonsparse._aot [--arch 80 90] [--jobs 2]

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor


def _kernel_modules():
    import tritonsparse.kernels as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"tritonsparse.kernels.{info.name}")
        if hasattr(mod, "AOT_SPECS"):
            names.append(mod.__name__)
    return names


def _jobs(archs):
    jobs = []
    for name in _kernel_modules():
        mod = importlib.import_module(name)
        for spec_i, (tuner, _sig, _const) in enumerate(mod.AOT_SPECS):
            for cfg_i in range(len(tuner.configs)):
                for arch in archs:
                    jobs.append((name, spec_i, cfg_i, arch))
    return jobs


def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_one(job):
    """Compile one (module, spec, config, arch); returns a result dict."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, spec_i, cfg_i, arch = job
    tuner, sig, const = importlib.import_module(name).AOT_SPECS[spec_i]
    cfg = tuner.configs[cfg_i]
    fn = tuner.fn
    label = f"{fn.__name__} {'/'.join(v[1:] for v in sig.values() if v.startswith('*'))} {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages} sm_{arch}"
    try:
        compiled = triton.compile(
            ASTSource(fn, sig, {**const, **cfg.kwargs}),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
        )
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
        regs, stack, shared, local = (int(g) for g in m.groups())
        ok = stack == 0 and local == 0
        return {"label": label, "ok": ok, "regs": regs, "stack": stack, "local": local, "shared": shared, "error": ""}
    except Exception as e:  # report, don't stop the sweep
        return {"label": label, "ok": False, "regs": -1, "stack": -1, "local": -1, "shared": -1, "error": repr(e)[:300]}


def compile_all(archs=(80, 90), jobs=2, progress=True):
    todo = _jobs(archs)
    results = []
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for i, r in enumerate(ex.map(compile_one, todo, chunksize=4), 1):
            results.append(r)
            if progress and (i % 50 == 0 or i == len(todo)):
                print(f"[aot] {i}/{len(todo)} compiled", file=sys.stderr, flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--verbose", action="store_true", help="print every kernel/config")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    results = compile_all(args.arch, args.jobs)
    bad = [r for r in results if not r["ok"]]
    for r in results if args.verbose else bad:
        print(f"{'OK  ' if r['ok'] else 'FAIL'} regs={r['regs']:>3} stack={r['stack']} local={r['local']} {r['label']} {r['error']}")
    print(f"{len(results) - len(bad)}/{len(results)} kernel builds without spills; max registers "
          f"{max((r['regs'] for r in results), default=0)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Ahead-of-time build check: compile every Triton kernel with every autotune config for
real GPU targets, without a GPU, and read the cubin's register and local-memory use.

Each kernel file lists ``AOT_SPECS``: ``(autotuner, signature, constexprs[, values])``
tuples; ``signature`` gives the pointer and int types (``triton.compiler.ASTSource``
form), ``constexprs`` the fixed compile-time arguments. Every config's kwargs and
num_warps/num_stages are merged in.

The build uses the **runtime's specialization** (what the JIT does for a real call):
16-byte-aligned pointers and ints divisible by 16 get ``tt.divisibility=16``, an int equal
to 1 becomes a constant. The int values come from, in order: the optional 4th element
``values`` ({param: representative runtime value}); the launch the library makes for a
representative problem (``tritonsparse.sass.problems.REPRESENTATIVE``: the ViT-B MLP at
batch 256 and small convs, captured on CPU tensors); otherwise a plain int (no hint).
Pointers are 16-byte aligned unless the representative launch passes an unaligned one
(e.g. ``crow[1:]``). A kernel that passes in the interpreter but would not build, or
would spill registers to local memory, on sm_80/sm_90 fails this check.

    python -m tritonsparse._aot [--arch 80 90] [--jobs 2] [--verbose] [--json builds.json]

``--json`` also writes, per build, the kernel, dtypes, config and the hot-loop counts of
its SASS (``tritonsparse.sass.parse``): the structural checks of the test suite read them,
so one compile sweep serves both.

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from concurrent.futures import ProcessPoolExecutor

_PLAIN_INT = 7  # neither 1 nor divisible by 16: no specialization


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


def _spec(name, spec_i):
    entry = importlib.import_module(name).AOT_SPECS[spec_i]
    if len(entry) not in (3, 4):
        raise ValueError(f"{name}.AOT_SPECS[{spec_i}] must be (kernel, signature, constexprs[, values])")
    tuner, sig, const = entry[:3]
    values = dict(entry[3]) if len(entry) == 4 else {}
    return tuner, sig, const, values


def representative_values() -> dict:
    """{kernel name: {int param: value, pointer param: 16-byte aligned?}} from the launches
    the library makes for the representative problems (captured, nothing runs)."""
    from tritonsparse.sass.compile import jit_function
    from tritonsparse.sass.problems import REPRESENTATIVE, launches

    out: dict = {}
    for prob in REPRESENTATIVE:
        for launch in launches(prob):
            name = jit_function(launch.kernel).__name__
            if name in out:
                continue
            vals = {}
            for k, v in launch.args.items():
                if hasattr(v, "data_ptr"):
                    vals[k] = ("ptr", v.data_ptr() % 16 == 0)
                elif isinstance(v, int) and not isinstance(v, bool):
                    vals[k] = v
            out[name] = vals
    return out


def _jobs(archs):
    jobs = []
    for name in _kernel_modules():
        mod = importlib.import_module(name)
        for spec_i, entry in enumerate(mod.AOT_SPECS):
            tuner = entry[0]
            for cfg_i in range(len(getattr(tuner, "configs", [None]))):
                for arch in archs:
                    jobs.append((name, spec_i, cfg_i, arch))
    return jobs


def build_args(jit, sig: dict, const: dict, values: dict, captured: dict) -> tuple[dict, str]:
    """Named arguments for :func:`tritonsparse.sass.compile.specialize` and where the ints
    came from (``values``, ``captured`` or ``plain``)."""
    from tritonsparse.sass.compile import FakePtr

    args, source = {}, "plain"
    for p in jit.arg_names:
        if p in const:
            args[p] = const[p]
            continue
        if p not in sig:
            continue  # a constexpr the config supplies
        ty = sig[p]
        cap = captured.get(p)
        if ty.startswith("*"):
            aligned = cap[1] if isinstance(cap, tuple) else True
            args[p] = FakePtr(ty[1:], 0 if aligned else 4)
        elif ty.startswith("fp") or ty.startswith("bf"):
            args[p] = 1.5
        elif ty in ("i1", "u1"):
            args[p] = True
        else:
            if p in values:
                v, source = int(values[p]), "values"
            elif isinstance(cap, int):
                v = cap
                source = "captured" if source == "plain" else source
            else:
                v = _PLAIN_INT
            if ty in ("i64", "u64") and abs(v) < 2**31:
                v = v + 2**32 * 16  # keeps v % 16 and the 64-bit type
            args[p] = v
    return args, source


def compile_one(job, captured_all=None):
    """Compile one (module, spec, config, arch) with the runtime's specialization; returns a result dict."""
    from tritonsparse.sass.compile import compile_spec, disassemble, jit_function, resource_usage, specialize
    from tritonsparse.sass.parse import summarize

    name, spec_i, cfg_i, arch = job
    label = f"{name} spec {spec_i} config {cfg_i} sm_{arch}"
    info = {"module": name, "spec_i": spec_i, "cfg_i": cfg_i, "arch": arch}
    try:
        tuner, sig, const, values = _spec(name, spec_i)
        configs = getattr(tuner, "configs", None)
        cfg = configs[cfg_i] if configs else None
        jit = jit_function(tuner)
        captured = (captured_all or {}).get(jit.__name__, {})
        args, source = build_args(jit, sig, const, values, captured)
        kw = dict(cfg.kwargs) if cfg is not None else {}
        args.update(kw)
        warps = cfg.num_warps if cfg is not None else 4
        stages = cfg.num_stages if cfg is not None else 3
        dts = "/".join(v[1:] for v in sig.values() if v.startswith("*"))
        label = f"{jit.__name__} {dts} {kw} w{warps} s{stages} sm_{arch} [{source}]"
        spec = specialize(tuner, args, arch=arch, num_warps=warps, num_stages=stages)
        compiled = compile_spec(spec)
        use = resource_usage(compiled.asm["cubin"])
        ok = use["stack"] == 0 and use["local"] == 0
        summ = summarize(disassemble(compiled.asm["cubin"]))
        info.update(kernel=jit.__name__, dtypes=dts, config=kw, warps=warps, stages=stages,
                    constexprs={k: v for k, v in const.items()}, loops=len(summ.loops),
                    hot_loop=summ.loop_counts, kernel_instructions=summ.kernel_counts["total"])
        return {"label": label, "ok": ok, **use, "error": "", "spec": spec.describe(), **info}
    except Exception as e:  # report, don't stop the sweep
        return {"label": label, "ok": False, "regs": -1, "stack": -1, "local": -1, "shared": -1,
                "error": repr(e)[:300], "spec": "", **info}


def _compile_job(args):
    return compile_one(*args)


def compile_all(archs=(80, 90), jobs=2, progress=True):
    """Compile every kernel x config x arch; returns one result dict per build."""
    captured = representative_values()
    todo = [(job, captured) for job in _jobs(archs)]
    results = []
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for i, r in enumerate(ex.map(_compile_job, todo, chunksize=4), 1):
            results.append(r)
            if progress and (i % 50 == 0 or i == len(todo)):
                print(f"[aot] {i}/{len(todo)} compiled", file=sys.stderr, flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--verbose", action="store_true", help="print every kernel/config and its specialization")
    ap.add_argument("--json", help="write every build's resources and hot-loop counts to this file")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    results = compile_all(args.arch, args.jobs)
    bad = [r for r in results if not r["ok"]]
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(results, f, default=str)
    for r in results if args.verbose else bad:
        print(f"{'OK  ' if r['ok'] else 'FAIL'} regs={r['regs']:>3} stack={r['stack']} local={r['local']} "
              f"{r['label']} {r['error']}" + (f"\n      {r['spec']}" if args.verbose and r["spec"] else ""))
    print(f"{len(results) - len(bad)}/{len(results)} kernel builds without spills; max registers "
          f"{max((r['regs'] for r in results), default=0)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

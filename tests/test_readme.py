"""The README as a new user reads it: every ```python snippet runs as written (each in a
fresh namespace, in an empty current folder, on the CPU torch path: the Triton
interpreter would only be slower), the command lines in its ```bash blocks use options
that exist, and the default output folders of its commands are outside what git tracks."""
import re
import shlex
from pathlib import Path

import pytest
import torch

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    """(id, code) of each fenced block in ``lang``; the id names the section it sits in."""
    found = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", README, re.S | re.M):
        heads = re.findall(r"^#+ (.+)$", README[: m.start()], re.M)
        section = re.sub(r"[^A-Za-z0-9]+", "-", heads[-1] if heads else "top").strip("-").lower()
        found.append((f"{section}-{len(found)}", m.group(1)))
    return found


SNIPPETS = _blocks("python")


def _commands():
    """The command lines of the ```bash blocks, continuation lines joined, comments cut."""
    lines = []
    for _, code in _blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                if part.strip():
                    lines.append(shlex.split(part.strip()))
    return lines


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 4 and len(_commands()) >= 6


@pytest.mark.parametrize("code", [c for _, c in SNIPPETS], ids=[i for i, _ in SNIPPETS])
def test_python_snippet_runs(code, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "README.md snippet", "exec"), {"__name__": "readme_snippet"})  # noqa: S102
    finally:
        torch.set_num_threads(threads)
    assert list(tmp_path.iterdir()) == [], "a README snippet wrote files"


def test_command_lines_use_existing_options():
    from tritonsparse.train.cli import build_parser

    sweep = load_script(ROOT / "benchmarks" / "sweep.py").build_parser()
    seen = set()
    for argv in _commands():
        if argv[:3] == ["python", "-m", "tritonsparse.train"]:
            args = build_parser().parse_args(argv[3:])  # exits (fails the test) on an unknown option
            assert args.out.startswith("runs/")  # inside the git-ignored runs/ of the current folder
            seen.add("train")
        elif argv[:2] == ["python", "benchmarks/sweep.py"]:
            sweep.parse_args(argv[2:])
            seen.add("sweep")
        elif argv[:2] == ["python", "-m"]:  # another module entry point: it must exist
            import importlib.util

            assert importlib.util.find_spec(argv[2]) is not None, argv[2]
            seen.add(argv[2])
        elif argv[0] in ("python", "bash"):
            script = next(a for a in argv[1:] if not a.startswith("-"))
            assert (ROOT / script).is_file(), script
            seen.add(script)
    assert {"train", "sweep", "examples/demo.py", "tests/run.sh"} <= seen


def test_default_outputs_are_git_ignored():
    """The trainer, sweep and benchmarks write by default into runs/, sweep_results/ and
    bench_results/ of the current folder (the demo into a temp folder); run from the
    checkout, git ignores them, so the README's commands add nothing to ``git status``."""
    from tritonsparse.train import TrainConfig

    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {"/runs/", "/sweep_results/", "/bench_results/"} <= ignored
    cfg = TrainConfig()
    assert cfg.out.startswith("runs/") and cfg.plots_dir is None
    assert "default: ./sweep_results" in load_script(ROOT / "benchmarks" / "sweep.py").build_parser().format_help()

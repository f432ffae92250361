"""The trainer when things go wrong: divergence, a kill while writing, a corrupt
checkpoint, an existing run in --out, and what the command-line user sees."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonsparse.train import CheckpointError, DivergenceError, TrainConfig, train
from tritonsparse.train import _io
from tritonsparse.train.cli import main

from test_train import _cpu_path  # noqa: F401 - autouse: the torch path, one thread

ROOT = Path(__file__).resolve().parents[1]


def _cfg(out, **kw):
    # synthetic set: 512 training examples, 8 steps per epoch at batch 64
    base = dict(model="mlp", dataset="synthetic", hidden=(32, 32), epochs=1, batch_size=64, delta_t=2,
                sparsity=0.75, device="cpu", out=str(out), plots=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


_FAST = ["--dataset", "synthetic", "--hidden", "16,16", "--batch-size", "64", "--device", "cpu", "--no-plots",
         "--no-progress", "--sparsity", "0.75", "--delta-t", "2"]


# -- item 3: divergence --------------------------------------------------------------------
def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    with pytest.raises(DivergenceError, match=r"loss is (nan|inf) at step \d+ \(epoch 1, batch \d+/8\)"):
        train(_cfg(tmp_path / "run", lr=1e6))


def test_cli_divergence_is_one_line_rc1(tmp_path, capsys):
    rc = main(_FAST + ["--lr", "1e6", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "diverged" in err and "step" in err and "--skip-nonfinite" in err


def test_skip_nonfinite_counts_and_keeps_weights_finite(tmp_path):
    res = train(_cfg(tmp_path / "run", lr=1e6, skip_nonfinite=True))
    last = res.final
    assert last["skipped_steps"] > 0 and last["skipped_steps_total"] == last["skipped_steps"]
    assert "skipped_dst_updates" in last
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    saved = json.loads((res.out / "metrics.json").read_text())
    assert saved[-1]["skipped_steps"] == last["skipped_steps"]


def test_skip_nonfinite_skips_an_inf_gradient_with_a_finite_loss(tmp_path, monkeypatch):
    """The step whose backward gives inf (loss finite) is skipped: no optimizer step, the
    weights stay as they were; the other steps train as usual."""
    from types import SimpleNamespace

    from tritonsparse.train import trainer

    calls = []

    class InfGradOnThirdStep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, loss):
            return loss.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("inf") if len(calls) == 3 else g

    def loss_fn(*args, **kw):
        calls.append(1)
        return InfGradOnThirdStep.apply(torch.nn.functional.cross_entropy(*args, **kw))

    monkeypatch.setattr(trainer, "F", SimpleNamespace(cross_entropy=loss_fn))
    res = train(_cfg(tmp_path / "run", max_steps=5, skip_nonfinite=True))
    assert res.final["skipped_steps"] == 1 and res.final["step"] == 5
    assert res.dst.step_count == 5  # the DST schedule goes on, as the lr schedule does
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_skip_nonfinite_gives_up_when_every_step_is_skipped(tmp_path):
    # lr 1e30: after the first step every loss is inf/nan and skipping changes nothing
    with pytest.raises(DivergenceError, match="in a row"):
        train(_cfg(tmp_path / "run", lr=1e30, epochs=3, skip_nonfinite=True))


# -- item 10: atomic files, previous checkpoint, corrupt checkpoint -------------------------
def test_checkpoint_kept_and_weights_only(tmp_path):
    res = train(_cfg(tmp_path / "run", epochs=2, max_steps=4, batch_size=256))
    out = res.out
    cur = torch.load(out / "checkpoint.pt", weights_only=True)
    prev = torch.load(out / "checkpoint.prev.pt", weights_only=True)
    assert (cur["epoch"], prev["epoch"]) == (2, 1)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_kill_while_writing_keeps_the_old_files(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(out, epochs=2, max_steps=4, batch_size=256, stop_after_epochs=1))
    before = {f: (out / f).read_bytes() for f in ("checkpoint.pt", "metrics.json", "metrics.csv", "layers.csv")}

    def killed(fd):
        raise KeyboardInterrupt  # the process dies after writing part of the new file

    monkeypatch.setattr(_io.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, epochs=2, max_steps=4, batch_size=256, resume=True))
    monkeypatch.undo()
    assert {f: (out / f).read_bytes() for f in before} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    torch.set_num_threads(1)
    assert train(_cfg(out, epochs=2, max_steps=4, batch_size=256, resume=True)).final["epoch"] == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_checkpoint_names_it_and_the_previous(tmp_path, damage):
    out = tmp_path / "run"
    train(_cfg(out, epochs=3, max_steps=6, batch_size=256, stop_after_epochs=2))
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 3], "empty": b"", "garbage": b"not a checkpoint" * 10}[damage])
    with pytest.raises(CheckpointError) as e:
        train(_cfg(out, epochs=3, max_steps=6, batch_size=256, resume=True))
    msg = str(e.value)
    assert str(ckpt) in msg and str(out / "checkpoint.prev.pt") in msg and "(epoch 1)" in msg
    # following the message's advice resumes from the previous epoch
    os.replace(out / "checkpoint.prev.pt", ckpt)
    res = train(_cfg(out, epochs=3, max_steps=6, batch_size=256, resume=True))
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_corrupt_checkpoint_without_previous(tmp_path):
    out = tmp_path / "run"
    train(_cfg(out, max_steps=2))
    (out / "checkpoint.pt").write_bytes(b"\x80\x02")
    with pytest.raises(CheckpointError, match="no previous checkpoint"):
        train(_cfg(out, max_steps=2, resume=True))


def test_checkpoint_with_unsafe_objects_is_refused(tmp_path):
    """weights_only=True: a checkpoint holding arbitrary objects is not unpickled."""
    import numpy as np

    out = tmp_path / "run"
    train(_cfg(out, max_steps=2))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # what older versions stored: numpy objects
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="other than tensors and plain values"):
        train(_cfg(out, max_steps=2, resume=True))


# -- item 11: a fresh run refuses an existing run -------------------------------------------
def test_fresh_run_refuses_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(out, max_steps=2))
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(_cfg(out, max_steps=2))
    assert main(_FAST + ["--max-steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err
    res = train(_cfg(out, max_steps=3, overwrite=True))
    assert [h["step"] for h in res.history] == [3]
    assert not (out / "checkpoint.prev.pt").exists()  # nothing of the old run is left
    with pytest.raises(ValueError, match="overwrite"):
        train(_cfg(out, resume=True, overwrite=True))


# -- item 12: nothing written outside --out --------------------------------------------------
def test_plots_only_into_out_by_default(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = train(_cfg(tmp_path / "run", max_steps=2, plots=True))
    assert (res.out / "training_curves.png").is_file()
    assert list(cwd.iterdir()) == []


# -- item 13: the command line ----------------------------------------------------------------
def test_help_shows_defaults_and_prog(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: tritonsparse-train")
    for default in ("(default: 0.1)", "(default: srigl)", "(default: 256,256,256)", "(default: 0.9)"):
        assert default in " ".join(text.split()), default


@pytest.mark.parametrize("args,match", [(["--sparsity", "1.5"], "sparsity"), (["--epochs", "0"], "epochs"),
                                        (["--method", "dense", "--ift", "wide"], "ift"),
                                        (["--dataset", "cifar10"], "data-dir")])
def test_bad_settings_are_one_line_rc2(tmp_path, capsys, args, match):
    assert main(args + ["--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tritonsparse-train: error:") and match in err


def test_module_cli_in_a_log_file(tmp_path):
    """``python -m tritonsparse.train`` with stderr to a file: its own prog name, no
    progress bar redrawn into the log, and a bad setting as one line with exit code 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tritonsparse.train", *_FAST, "--epochs", "2", "--max-steps", "6",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):])["step"] == 6
    r = subprocess.run([sys.executable, "-m", "tritonsparse.train", "--lr", "-1", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "python -m tritonsparse.train: error: lr must be > 0, got -1.0"

"""The trainer: every method x Sparse-IFT kind, conv models, resume, CLI, data."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from tritonsparse.train import TrainConfig, load_dataset, train
from tritonsparse.train.cli import main

SPARSE_METHODS = ["static", "set", "rigl", "srigl"]
KINDS = ["none", "wide", "parallel", "factorized", "doped"]


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp_path, **kw):
    base = dict(model="mlp", dataset="synthetic", hidden=(32, 32), epochs=1, max_steps=4, batch_size=32,
                delta_t=2, sparsity=0.75, device="cpu", out=str(tmp_path / "run"), plots=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_every_method_and_ift(tmp_path, method, kind):
    res = train(_cfg(tmp_path, method=method, ift=kind, gamma_sal=0.9))
    last = res.final
    assert last["step"] == 4 and np.isfinite(last["train_loss"]) and 0 <= last["test_acc"] <= 1
    assert last["layers"], "sparse layers are reported"
    assert 0.5 < last["sparsity"] < 0.95
    assert last["flops_per_example"] < last["dense_flops_per_example"]
    if method != "rigl":
        assert all(s["fan_in"] >= 1 for s in last["layers"].values())


def test_dense(tmp_path):
    res = train(_cfg(tmp_path, method="dense"))
    assert res.final["sparsity"] == 0.0 and res.final["layers"] == {}
    assert res.final["flops_per_example"] == pytest.approx(res.final["dense_flops_per_example"], rel=1e-3)


@pytest.mark.parametrize("model,kind", [("resnet18", "wide"), ("resnet18", "doped"), ("vit", "parallel")])
def test_conv_and_vit_models(tmp_path, model, kind):
    cfg = _cfg(tmp_path, model=model, ift=kind, method="srigl", max_steps=2, batch_size=8, synthetic_shape=(3, 8, 8),
               width=16 if model == "resnet18" else 24)
    res = train(cfg)
    assert res.final["step"] == 2 and np.isfinite(res.final["train_loss"])
    from tritonsparse.nn import CondensedLinear

    assert any(isinstance(m, CondensedLinear) for m in res.model.modules())


def test_outputs_and_plots(tmp_path):
    res = train(_cfg(tmp_path, epochs=2, max_steps=None, batch_size=128, plots=True, plots_dir=str(tmp_path / "plots")))
    out = res.out
    for f in ("metrics.csv", "metrics.json", "layers.csv", "checkpoint.pt", "training_curves.png", "active_neurons.png"):
        assert (out / f).is_file(), f
    assert (tmp_path / "plots" / "run_active_neurons.png").is_file()
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "test_acc", "sparsity", "active_neurons", "step_time_ms", "peak_mem_mb", "layers"):
        assert key in history[-1]
    assert set(history[-1]["layers"]["hidden.0"]) >= {"active_neurons", "fan_in", "density"}


@pytest.mark.parametrize("method", ["srigl", "rigl"])
def test_resume_equals_uninterrupted(tmp_path, method):
    kw = dict(method=method, epochs=3, max_steps=None, batch_size=64, delta_t=3)
    full = train(_cfg(tmp_path / "a", **kw))
    train(_cfg(tmp_path / "b", stop_after_epochs=1, **kw))
    resumed = train(_cfg(tmp_path / "b", resume=True, **kw))
    assert len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"] and a["layers"] == b["layers"]
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(_cfg(tmp_path, resume=True))
    train(_cfg(tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="sparsity"):
        train(_cfg(tmp_path, max_steps=1, sparsity=0.5, resume=True))


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--dataset", "synthetic", "--hidden", "16,16", "--max-steps", "2", "--method", "set", "--ift", "parallel",
               "--sparsity", "0.5", "--distribution", "uniform", "--schedule", "step", "--out", str(out),
               "--plots-dir", "", "--no-plots", "--no-progress", "--device", "cpu", "--batch-size", "32"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert (out / "metrics.csv").is_file()


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "tritonsparse.train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--method", "--ift", "--sparsity", "--distribution", "--resume", "--gamma-sal", "--t-end", "--max-steps"):
        assert flag in r.stdout


@pytest.mark.parametrize("kw,match", [(dict(method="magic"), "method"), (dict(sparsity=1.0), "sparsity"),
                                      (dict(ift="tall"), "ift"), (dict(method="dense", ift="wide"), "ift"),
                                      (dict(dataset="mnist"), "dataset"), (dict(batch_size=0), "batch_size")])
def test_bad_config(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_cfg(tmp_path, **kw))


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data-dir"):
        load_dataset("cifar100", None)


def test_cifar_pickle_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(range(4))}, f)
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.num_classes == 10
    x, y = data.batch("train", torch.arange(4), "cpu", torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3]


def test_digits():
    data = load_dataset("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797

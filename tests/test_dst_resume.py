"""Resume: save mid-training, load in a fresh process, continue; the result equals an
uninterrupted run. Run as a script, this file is the worker of that fresh process."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tritonsparse.dst import DynamicSparsity, sparsify

TOTAL = 24


def _build(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 20), nn.ReLU(),
                          nn.Linear(20, 4))
    sparsify(model, 0.8, method=method, distribution="erk")
    opt = torch.optim.Adam(model.parameters(), lr=0.01) if method == "rigl" else \
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dst = DynamicSparsity(model, opt, method=method, total_steps=TOTAL, delta_t=3, alpha=0.4, gamma_sal=0.3,
                          no_ablation=("5",))
    return model, opt, dst


def _train(model, opt, dst, start, stop):
    for step in range(start, stop):
        g = torch.Generator().manual_seed(1000 + step)
        for _ in range(2):  # two micro-batches per step
            x, y = torch.randn(5, 2, 5, 5, generator=g), torch.randint(0, 4, (5,), generator=g)
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        dst.step()


def _save(path, model, opt, dst):
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "dst": dst.state_dict()}, path)


def _worker(method, ckpt, out):
    os.environ["TRITONSPARSE_BACKEND"] = "torch"
    model, opt, dst = _build(method)
    sd = torch.load(ckpt, weights_only=False)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["opt"])
    dst.load_state_dict(sd["dst"])
    _train(model, opt, dst, dst.step_count, TOTAL)
    _save(out, model, opt, dst)


@pytest.mark.parametrize("method", ["srigl", "rigl", "set"])
def test_resume_in_fresh_process_matches_uninterrupted(method, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    model, opt, dst = _build(method)
    _train(model, opt, dst, 0, TOTAL)
    full = model.state_dict()

    model, opt, dst = _build(method)
    _train(model, opt, dst, 0, 11)  # step 12 ends in an update: capture must be re-armed
    _save(tmp_path / "mid.pt", model, opt, dst)
    env = dict(os.environ, TRITONSPARSE_BACKEND="torch")
    subprocess.run([sys.executable, __file__, method, str(tmp_path / "mid.pt"), str(tmp_path / "end.pt")],
                   check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    resumed = torch.load(tmp_path / "end.pt", weights_only=False)
    assert resumed["dst"]["step"] == TOTAL
    assert set(resumed["model"]) == set(full)
    for k, v in full.items():
        assert torch.equal(resumed["model"][k], v), k
    if method != "rigl":
        assert any(s["fan_in"] for s in dst.layer_stats().values())


if __name__ == "__main__":
    _worker(*sys.argv[1:4])

"""DynamicSparsity: gradient accumulation over the last n steps before an update, and
updates skipped (pattern kept, warned, counted) on NaN/inf gradients."""
import io
import warnings

import pytest
import torch
from torch import nn

from tritonsparse.dst import DynamicSparsity, sparsify


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _model(method="srigl", seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    sparsify(model, 0.7, method=method, distribution="uniform", seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt


def _batch(step):
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(6, 12, generator=g), torch.randint(0, 3, (6,), generator=g)


def _train(model, opt, dst, start, stop, poison=()):
    for step in range(start, stop):
        x, y = _batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        if step + 1 in poison:
            loss = loss * float("nan")
        loss.backward()
        opt.step()
        opt.zero_grad()
        dst.step()


def _patterns(model):
    return [(m.indices.clone(), m.active_mask.clone()) if hasattr(m, "indices") else m.mask.clone()
            for m in model.modules() if hasattr(m, "indices") or hasattr(m, "mask")]


def test_capture_window_and_summed_gradient():
    """With n = 3 and ΔT = 4 the hooks are armed on steps 2-4 of every window, and the
    concatenated (x, grad_output) give the sum of the three steps' dense gradients."""
    model, opt = _model()
    dst = DynamicSparsity(model, opt, total_steps=40, delta_t=4, grad_accumulation_n=3)
    layer = model[0]
    armed, summed = [], torch.zeros(16, 12)
    for step in range(8):
        armed.append(layer.capture_hook is not None)
        x, y = _batch(step)
        # reference: the gradient of the same loss with respect to the dense weight
        w = layer.to_dense_weight().detach().requires_grad_()
        h = torch.relu(nn.functional.linear(x, w, layer.bias.detach()))
        out = nn.functional.linear(h, model[2].to_dense_weight().detach(), model[2].bias.detach())
        nn.functional.cross_entropy(out, y).backward()
        if armed[-1] and step >= 4:
            summed += w.grad
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if step == 7:  # just before the update after step 8: what the capture holds
            cx, cg = dst._captures["0"].tensors()
            assert cx.shape[0] == 3 * 6
        if step < 7:
            dst.step()
    assert armed == [False, True, True, True] * 2
    torch.testing.assert_close(cg.t() @ cx, summed, rtol=1e-5, atol=1e-6)


def test_resume_inside_an_accumulation_window_is_exact(monkeypatch):
    import tritonsparse.dst.core as core
    seen = []  # the summed gradient every update ranks by

    def recording(x, g, tf32=False):
        seen.append(g.t() @ x)
        return real(x, g, tf32)

    real = core.gradient_candidates
    monkeypatch.setattr(core, "gradient_candidates", recording)
    model, opt = _model()
    dst = DynamicSparsity(model, opt, total_steps=30, delta_t=5, grad_accumulation_n=4)
    _train(model, opt, dst, 0, 18)
    ref, ref_seen = _patterns(model), seen[-2:]  # the layers' gradients at the update of step 15
    model2, opt2 = _model()
    dst2 = DynamicSparsity(model2, opt2, total_steps=30, delta_t=5, grad_accumulation_n=4)
    _train(model2, opt2, dst2, 0, 12)  # stop after step 12, inside the window 12-15 of the update at 15
    buf = io.BytesIO()
    torch.save({"m": model2.state_dict(), "o": opt2.state_dict(), "d": dst2.state_dict()}, buf)
    assert dst2.state_dict()["captures"], "the window's captures must be saved"
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    model3, opt3 = _model(seed=1)  # different init: everything must come from the state
    dst3 = DynamicSparsity(model3, opt3, total_steps=30, delta_t=5, grad_accumulation_n=4)
    model3.load_state_dict(state["m"])
    opt3.load_state_dict(state["o"])
    dst3.load_state_dict(state["d"])
    _train(model3, opt3, dst3, 12, 18)
    for a, b in zip(ref_seen, seen[-2:]):
        assert torch.equal(a, b)
    for a, b in zip(ref, _patterns(model3)):
        assert all(torch.equal(u, v) for u, v in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)
    for p, q in zip(model.parameters(), model3.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["srigl", "rigl"])
def test_non_finite_step_keeps_patterns_and_counts(method):
    model, opt = _model(method)
    dst = DynamicSparsity(model, opt, method=method, total_steps=40, delta_t=4, no_ablation=("2",))
    _train(model, opt, dst, 0, 4)  # one normal update at step 4
    assert dst.skipped_updates == 0
    before = _patterns(model)
    with pytest.warns(RuntimeWarning, match="step 8"):
        _train(model, opt, dst, 4, 8, poison=(8,))
    after = _patterns(model)
    for a, b in zip(before, after):
        assert all(torch.equal(u, v) for u, v in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)
    assert dst.skipped_updates == 2 and dst.last_skipped == ["0", "2"] and dst.last_update == {}
    assert dst.state_dict()["skipped_updates"] == 2
    fresh = DynamicSparsity(model, opt, method=method, total_steps=40, delta_t=4, no_ablation=("2",))
    fresh.load_state_dict(dst.state_dict())
    assert fresh.skipped_updates == 2


def test_nan_weights_skip_the_update():
    model, opt = _model("set")
    dst = DynamicSparsity(model, opt, method="set", total_steps=40, delta_t=2)
    with torch.no_grad():
        model[0].values[0] = float("inf")
    before = _patterns(model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dst.step()
        dst.step()
    assert dst.skipped_updates == 1 and dst.last_skipped == ["0"] and "0" not in dst.last_update and "2" in dst.last_update
    assert torch.equal(before[0][0], model[0].indices) and len(w) == 1


@pytest.mark.parametrize("bad,err", [(dict(grad_accumulation_n=0), ValueError), (dict(grad_accumulation_n=5), ValueError),
                                     (dict(grad_accumulation_n=2.0), ValueError), (dict(tf32=1), TypeError)])
def test_validation(bad, err):
    model, opt = _model()
    with pytest.raises(err, match=next(iter(bad))):
        DynamicSparsity(model, opt, total_steps=40, delta_t=4, **bad)

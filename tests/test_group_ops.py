"""Group-shared constant fan-in (G rows share one index row): the gather-MMA kernels (under
Triton's interpreter) and the plain-PyTorch path against fp64 references, on odd shapes.

bf16: Triton 3.9's interpreter computes ``tl.dot`` on bf16 operands from their raw bit
patterns (wrong). The launchers therefore set the kernels' ``WIDEN`` flag under the
interpreter for bf16, which widens both operands to fp32 right before ``tl.dot``: every
bf16 load, mask and store of the kernel still runs, and since a bf16 x bf16 product is
exact in fp32 and the accumulation is fp32 on tensor cores as well, the widened dot
computes what the GPU computes. fp16 and fp32 run the dot unwidened.
"""
import pytest
import torch

import tritonsparse
from tritonsparse import _triton
from tritonsparse.formats import CondensedWeight, pad_fan_in
from tritonsparse.group_ops import expand_group_indices, group_condensed_matmul

from helpers import assert_close, random_indices, reference_outputs

BACKENDS = ["triton", "torch"]

# (batch, in_features, n, G, K): G=1, G=n, K=1, K and batch tails, a group wider than a tile
SHAPES = [
    pytest.param(5, 37, 12, 4, 7, id="B5-in37-n12-G4-K7"),
    pytest.param(17, 40, 32, 32, 19, id="B17-in40-n32-G=n-K19"),
    pytest.param(3, 20, 6, 1, 1, id="B3-in20-n6-G1-K1"),
    pytest.param(1, 50, 40, 20, 33, id="B1-in50-n40-G20-K33"),
    pytest.param(33, 24, 18, 18, 16, id="B33-in24-n18-G=n-K16"),
]
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.float32, torch.float16, torch.bfloat16)]


def _use_backend(monkeypatch, backend):
    if backend == "triton" and not _triton.interpreting():
        pytest.skip("kernels on CPU need TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)


def _problem(batch, in_features, n, g, k, dtype, padded=True):
    idx = random_indices(n // g, k, in_features)
    values = torch.randn(n, k).to(dtype)
    if padded:  # the layout the format keeps: a [:, :K] view of rows padded to 16
        values, idx = pad_fan_in(values), pad_fan_in(idx)
    x = torch.randn(batch, in_features).to(dtype)
    bias = torch.randn(n).to(dtype)
    return x, values, idx, bias


def _check(x, values, idx, bias, g, dtype, x_ref=None, **kw):
    x_ref = x if x_ref is None else x_ref  # what the reference computes from
    x = x.clone().requires_grad_()
    values_p = values.detach().requires_grad_()
    bias = bias.clone().requires_grad_()
    y = group_condensed_matmul(x, values_p, idx, bias, **kw)
    grad = torch.randn_like(y)
    y.backward(grad)
    full = expand_group_indices(idx, g)
    ry, rgx, rgv, rgb = reference_outputs(x_ref, values_p, full, bias, grad)
    k = values.shape[1]
    assert y.dtype == dtype and y.shape == ry.shape
    assert_close(y, ry, dtype, k, "y")
    assert_close(x.grad, rgx, dtype, k * g, "dX")
    assert_close(values_p.grad, rgv, dtype, x.shape[0], "dValues")
    assert_close(bias.grad, rgb, dtype, x.shape[0], "dBias")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,in_features,n,g,k", SHAPES)
def test_matches_fp64_reference(monkeypatch, backend, dtype, batch, in_features, n, g, k):
    _use_backend(monkeypatch, backend)
    x, values, idx, bias = _problem(batch, in_features, n, g, k, dtype)
    _check(x, values, idx, bias, g, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_atomic_dx_and_tf32(monkeypatch, backend, dtype):
    _use_backend(monkeypatch, backend)
    x, values, idx, bias = _problem(19, 30, 24, 8, 21, dtype)
    _check(x, values, idx, bias, 8, dtype, dx_mode="atomic")
    if dtype == torch.float32:  # TF32 keeps 10 mantissa bits: compare at fp16-like tolerance
        xr = x.clone().requires_grad_()
        y = group_condensed_matmul(xr, values, idx, bias, tf32=True)
        ry = reference_outputs(x, values, expand_group_indices(idx, 8), bias, torch.ones_like(y))[0]
        assert_close(y, ry, torch.float16, 21, "y tf32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_slots_are_never_read(monkeypatch, backend):
    """inf in x's column that the pad slots point at, and inf/NaN in the pad values:
    the pads (storage columns past K) must not reach the result."""
    _use_backend(monkeypatch, backend)
    batch, in_features, n, g, k = 6, 21, 16, 8, 5
    x, values, idx, bias = _problem(batch, in_features, n, g, k, torch.float32, padded=False)
    hot = [c for c in range(in_features) if c not in idx.flatten().tolist()][0]
    x_ref = x.clone()  # no real slot reads column ``hot``: the exact result ignores it
    x[:, hot] = float("inf")
    vs = torch.full((n, 16), float("nan"))
    vs[:, k:] = float("inf")
    vs[:, :k] = values
    ist = torch.full((n // g, 16), hot, dtype=torch.int32)
    ist[:, :k] = idx
    _check(x, vs[:, :k], ist[:, :k], bias, g, torch.float32, x_ref=x_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_condensed_matmul_dispatches_groups(monkeypatch, backend):
    """``condensed_matmul`` with (n/G, K) indices is the group op; G=1 stays the per-row op."""
    _use_backend(monkeypatch, backend)
    x, values, idx, bias = _problem(4, 26, 12, 3, 6, torch.float32)
    y = tritonsparse.condensed_matmul(x, values, idx, bias)
    torch.testing.assert_close(y, group_condensed_matmul(x, values, idx, bias))
    per_row = tritonsparse.condensed_matmul(x, values.contiguous(), expand_group_indices(idx, 3).contiguous(), bias)
    torch.testing.assert_close(y, per_row, rtol=1e-5, atol=1e-5)


def test_leading_dims_and_empty(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, idx, bias = _problem(6, 10, 8, 4, 3, torch.float32)
    y = group_condensed_matmul(x.view(2, 3, 10), values, idx, bias)
    assert y.shape == (2, 3, 8)
    torch.testing.assert_close(y.reshape(6, 8), group_condensed_matmul(x, values, idx, bias))
    assert group_condensed_matmul(x[:0], values, idx, bias).shape == (0, 8)


def test_autocast_and_meta(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, idx, bias = _problem(4, 20, 8, 4, 5, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tritonsparse.condensed_matmul(x, values, idx, bias).dtype == torch.bfloat16
    meta = tritonsparse.condensed_matmul(x.to("meta"), values.to("meta"), idx.to("meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 8)


def test_torch_compile_traces_the_group_op(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, idx, bias = _problem(4, 16, 8, 4, 5, torch.float32)
    values = values.detach().requires_grad_()
    x.requires_grad_()
    bias.requires_grad_()

    def f(x, values, bias):
        return torch.relu(tritonsparse.condensed_matmul(x, values, idx, bias)).sum()

    loss = torch.compile(f, backend="aot_eager", fullgraph=True)(x, values, bias)
    loss.backward()
    got = (x.grad.clone(), values.grad.clone(), bias.grad.clone())
    for t in (x, values, bias):
        t.grad = None
    want = f(x, values, bias)
    want.backward()
    torch.testing.assert_close(loss, want)
    for a, b in zip(got, (x.grad, values.grad, bias.grad)):
        torch.testing.assert_close(a, b)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("case,exc,words", [
    ("n_not_multiple", ValueError, "not a multiple"),
    ("fan_in_differs", ValueError, "fan-in"),
    ("dx_mode", ValueError, "dx_mode"),
    ("tf32", TypeError, "tf32"),
    ("strided_values", ValueError, "values must have unit stride"),
    ("index_range", ValueError, "indices holds"),
    ("bias_rows", ValueError, "bias"),
    ("dtype", TypeError, "values has dtype"),
])
def test_bad_input(monkeypatch, case, exc, words):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, idx, bias = _problem(3, 20, 8, 4, 5, torch.float32, padded=False)
    kw = {}
    if case == "n_not_multiple":
        values = torch.randn(7, 5)
        bias = None
    elif case == "fan_in_differs":
        idx = idx[:, :4]
    elif case == "dx_mode":
        kw["dx_mode"] = "fast"
    elif case == "tf32":
        kw["tf32"] = 1
    elif case == "strided_values":
        values = torch.randn(8, 10)[:, ::2]
    elif case == "index_range":
        idx = idx.clone()
        idx[1, 2] = 20
    elif case == "bias_rows":
        bias = torch.randn(7)
    elif case == "dtype":
        values = values.double()
    with pytest.raises(exc, match=words):
        group_condensed_matmul(x, values, idx, bias, **kw)


# -- the format --------------------------------------------------------------------------------
def test_condensed_weight_groups_roundtrip():
    n, in_features, g, k = 12, 30, 4, 5
    idx = random_indices(n // g, k, in_features)
    dense = torch.zeros(n, in_features)
    dense.scatter_(1, expand_group_indices(idx, g).long(), torch.randn(n, k))
    cw = CondensedWeight.from_dense(dense, group_size=g)
    assert cw.group_size == g and cw.indices.shape == (n // g, k) and cw.fan_in == k
    assert cw.values.stride(0) % 16 == 0 and cw.indices.stride(0) % 16 == 0  # padded storage
    torch.testing.assert_close(cw.to_dense(), dense)
    torch.testing.assert_close(cw.to_csr().to_dense(), dense)
    auto = CondensedWeight.from_dense(dense, group_size="auto")
    assert auto.group_size % g == 0  # at least the groups it was built with
    flat = cw.ungrouped()
    assert flat.group_size == 1 and flat.indices.shape == (n, k)
    torch.testing.assert_close(flat.to_dense(), dense)
    assert flat.grouped(g).group_size == g
    x = torch.randn(3, in_features)
    torch.testing.assert_close(cw.matmul(x), x @ dense.t(), rtol=1e-5, atol=1e-5)
    assert "group_size=4" in repr(cw)


def test_condensed_weight_group_errors():
    dense = torch.zeros(6, 10)
    dense[:, :3] = 1.0
    dense[5, :3] = 0.0
    dense[5, 4:7] = 1.0  # row 5 has other columns than row 4
    with pytest.raises(ValueError, match="active row 5 does not share"):
        CondensedWeight.from_dense(dense, group_size=2)
    with pytest.raises(ValueError, match="does not divide"):
        CondensedWeight.from_dense(dense, group_size=4)
    with pytest.raises(ValueError, match="group_size must be"):
        CondensedWeight.from_dense(dense, group_size=0)
    assert CondensedWeight.from_dense(dense, group_size="auto").group_size == 1
    with pytest.raises(ValueError, match="not a multiple"):
        CondensedWeight(torch.randn(5, 3), torch.zeros(2, 3, dtype=torch.int32), shape=(5, 10))
    with pytest.raises(ValueError, match="must match"):
        CondensedWeight(torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.int32), shape=(4, 10))


# -- the layer ---------------------------------------------------------------------------------
def test_condensed_linear_groups(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    from tritonsparse.nn import CondensedLinear

    layer = CondensedLinear(20, 12, 5, group_size=4)
    assert layer.weight_indices.shape == (3, 5) and layer.weight_values.shape == (12, 5)
    assert layer.weight_values.stride(0) == 16 and layer.capacity >= 12 * 16 and layer.nnz_budget == 12 * 5
    dense = layer.to_dense_weight()
    assert ((dense != 0).sum(1) == 5).all()
    assert torch.equal(dense[0] != 0, dense[3] != 0)  # one group, one column set
    x = torch.randn(7, 20, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ dense.t() + layer.bias, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert layer.values.grad[: 12 * 16].view(12, 16)[:, 5:].abs().sum() == 0  # the pads get no gradient
    # state dict round trip into a fresh layer of the same group size
    other = CondensedLinear(20, 12, 5, group_size=4)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), y)
    # per-row indices with the group structure are accepted; others are not
    rows = expand_group_indices(layer.weight_indices, 4)
    layer.set_pattern(layer.weight_values.detach().clone(), rows)
    torch.testing.assert_close(layer.to_dense_weight(), dense)
    bad = rows.clone()
    bad[1] = (bad[1] + 1) % 20
    with pytest.raises(ValueError, match="group_size=4"):
        layer.set_pattern(layer.weight_values.detach().clone(), bad)
    with pytest.raises(ValueError, match="does not divide out_features"):
        CondensedLinear(20, 10, 5, group_size=4)
    assert "group_size=4" in repr(layer)
    from_cw = CondensedLinear.from_condensed(layer.condensed_weight())
    assert from_cw.group_size == 4
    torch.testing.assert_close(from_cw.to_dense_weight(), dense)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_condensed_linear_batch_major_out(monkeypatch, backend):
    """``batch_major_out=True``: the same y (and gradients) as the default, stored batch-major,
    so two chained group layers pass activations without a transpose (G = 1: test_batch_major.py)."""
    if backend == "triton" and not _triton.interpreting():
        pytest.skip("kernels on CPU need TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", backend)
    from tritonsparse.nn import CondensedLinear

    torch.manual_seed(0)
    a = CondensedLinear(24, 32, 7, group_size=16, batch_major_out=True)
    b = CondensedLinear(32, 16, 5, group_size=8, batch_major_out=True)
    a_ref = CondensedLinear(24, 32, 7, group_size=16)
    b_ref = CondensedLinear(32, 16, 5, group_size=8)
    a_ref.load_state_dict(a.state_dict())
    b_ref.load_state_dict(b.state_dict())
    x = torch.randn(5, 24)
    h = a(x)
    assert h.shape == (5, 32) and h.t().is_contiguous()
    y, y_ref = b(torch.relu(h)), b_ref(torch.relu(a_ref(x)))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(a.values.grad, a_ref.values.grad, rtol=1e-4, atol=1e-5)
    assert "batch_major_out=True" in repr(a)
    with pytest.raises(TypeError, match="batch_major_out"):
        CondensedLinear(24, 32, 8, group_size=16, batch_major_out=1)

@pytest.mark.skipif(not _triton.interpreting(), reason="kernels on CPU need TRITON_INTERPRET=1")
def test_forward_launcher_layouts():
    """The forward kernel reads x batch-major (xT) or row-major, and writes y or yT (n, B)."""
    from tritonsparse.kernels.group_mma import group_fwd

    x, values, idx, bias = _problem(9, 30, 16, 8, 11, torch.float32)
    ref = reference_outputs(x, values, expand_group_indices(idx, 8), bias, torch.zeros(9, 16))[0]
    for batch_major in (True, False):
        xin = x.t().contiguous() if batch_major else x
        yt = torch.full((16, 9), float("nan"))
        group_fwd(xin, values, idx, bias, yt, x_batch_major=batch_major, out_transposed=True)
        assert_close(yt.t(), ref, torch.float32, 11, "yT")
        y = torch.full((9, 16), float("nan"))
        group_fwd(xin, values, idx, bias, y, x_batch_major=batch_major)
        assert_close(y, ref, torch.float32, 11, "y")


@pytest.mark.skipif(not _triton.interpreting(), reason="kernels on CPU need TRITON_INTERPRET=1")
def test_launchers_run_under_the_tensors_device(monkeypatch):
    """Every group launch happens inside ``launch_device`` of its input (Triton launches on
    the current CUDA device, not the tensors'): recorded with a stand-in context."""
    import contextlib

    from tritonsparse.kernels import group_mma

    depth, launched_inside = [0], []

    @contextlib.contextmanager
    def recording(t):
        depth[0] += 1
        yield
        depth[0] -= 1

    real_pick = group_mma._pick

    def pick(pair, dtype, tf32):
        kernel = real_pick(pair, dtype, tf32)

        class Launch:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    launched_inside.append(depth[0] > 0)
                    return kernel[grid](*args, **kwargs)
                return run
        return Launch()

    monkeypatch.setattr(group_mma, "launch_device", recording)
    monkeypatch.setattr(group_mma, "_pick", pick)
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "triton")
    x, values, idx, bias = _problem(5, 20, 8, 4, 5, torch.float32)
    x = x.requires_grad_()
    values = values.detach().requires_grad_()
    group_condensed_matmul(x, values, idx, bias).sum().backward()
    assert len(launched_inside) >= 3 and all(launched_inside), launched_inside


# The steady-state PyTorch operators of the group forward, recorded as the SASS report records
# them (kernels intercepted, index patterns on the CUDA rule). Run in a subprocess: the
# launch interception needs Triton without its interpreter, which this suite turns on.
_HOST_OPS_SCRIPT = r"""
import json, torch
import tritonsparse._structure as structure
from tritonsparse.formats import pad_fan_in
from tritonsparse.group_ops import group_condensed_matmul
from tritonsparse.sass.compile import intercept_launches

checks = []
real_check = structure.check_indices_in_range
structure.check_indices_in_range = lambda *a: checks.append(1) or real_check(*a)

def problem(batch, in_features, n, g, k):
    idx = torch.stack([torch.randperm(in_features)[:k] for _ in range(n // g)]).int()
    return torch.randn(batch, in_features).bfloat16(), pad_fan_in(torch.randn(n, k).bfloat16()), pad_fan_in(idx)

def host_ops(x, values, idx, steps=2, **kw):
    for _ in range(steps):  # the first call checks the pattern; the steady state is the last
        ops = []
        with intercept_launches(ops) as launches:
            y = group_condensed_matmul(x, values, idx, **kw)
    return {"ops": [o.name for o in ops], "launches": [l.name for l in launches], "checks": len(checks),
            "y_batch_major": y.t().is_contiguous()}

out = {}
x, values, idx = problem(8, 40, 32, 16, 9)
out["row_major_x"] = host_ops(x, values, idx)
out["batch_major_x"] = host_ops(x.t().contiguous().t(), values, idx)
with torch.no_grad():
    idx[0, 0] = idx[0, 1]  # a write bumps the version: the next call checks again
out["after_write"] = host_ops(x, values, idx, steps=1)
with torch.no_grad():
    idx[0, 0] = 40  # out of range: caught at the next call
try:
    host_ops(x, values, idx, steps=1)
    out["bad_index"] = "no error"
except ValueError as e:
    out["bad_index"] = str(e)
x2, v2, i2 = problem(8, 32, 16, 8, 7)
y1 = group_condensed_matmul(x, values, pad_fan_in(torch.stack([torch.randperm(40)[:9] for _ in range(2)]).int()),
                            batch_major_out=True)
out["chained"] = host_ops(torch.relu(y1), v2, i2, batch_major_out=True)
from tritonsparse.sass.problems import Problem, capture
for bm in (False, True):  # the SASS report's view of the same two layouts
    launches, ops = capture(Problem("fwd", 64, 128, 16, 32, "bf16", "int16", G=64, batch_major=bm))
    out[f"report_batch_major={bm}"] = {"ops": [o.name for o in ops], "launches": [l.name for l in launches]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def host_ops():
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _HOST_OPS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cuda_rule_checks_once_per_version(host_ops):
    """On CUDA the range check runs once per version of the indices (no host sync in the
    steady state); a write bumps the version and the next call checks again, catching a
    bad index."""
    assert host_ops["row_major_x"]["checks"] == 1  # the first of the two calls only
    assert "aminmax" not in host_ops["row_major_x"]["ops"]
    assert host_ops["after_write"]["checks"] == 2 and "aminmax" in host_ops["after_write"]["ops"]
    assert "indices" in host_ops["bad_index"], host_ops["bad_index"]


def test_batch_major_x_needs_no_transpose(host_ops):
    """A row-major x costs one transpose (the xT the kernel gathers from); a batch-major x
    (a view of xT storage) is gathered from in place: the steady-state forward is the kernel
    alone. A batch-major output through an elementwise activation is such an x."""
    assert host_ops["row_major_x"]["launches"] == ["_group_fwd_kernel"]
    assert host_ops["row_major_x"]["ops"] == ["clone"], host_ops["row_major_x"]
    assert host_ops["batch_major_x"]["launches"] == ["_group_fwd_kernel"]
    assert host_ops["batch_major_x"]["ops"] == [], host_ops["batch_major_x"]
    assert host_ops["chained"]["ops"] == [] and host_ops["chained"]["y_batch_major"], host_ops["chained"]
    assert host_ops["report_batch_major=False"] == {"ops": ["clone"], "launches": ["_group_fwd_kernel"]}
    assert host_ops["report_batch_major=True"] == {"ops": [], "launches": ["_group_fwd_kernel"]}


def test_report_problem_batch_major_needs_a_linear_role():
    from tritonsparse.sass.problems import Problem

    with pytest.raises(ValueError, match="batch_major"):
        Problem("topk", 64, 128, 16, 32, "fp32", batch_major=True)
    assert Problem("fwd", 64, 128, 16, 32, G=64, batch_major=True).label.endswith("G=64 batch-major")
    assert Problem("bwd", 64, 128, 16, 32).label.endswith("fp32/int32")
    assert Problem("bwd", 64, 128, 16, 32, batch_major=True).label.endswith("fp32/int32 batch-major")


def test_cpu_rule_checks_every_call(monkeypatch):
    """CPU tensors (the torch path, the interpreter) keep the check on every call, so a write
    that bypasses the version counter is still caught."""
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, idx, _ = _problem(4, 20, 8, 4, 5, torch.float32)
    group_condensed_matmul(x, values, idx)
    idx.data[0, 0] = 99  # .data: no version bump
    with pytest.raises(ValueError, match="indices"):
        group_condensed_matmul(x, values, idx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_batch_major_out(monkeypatch, backend, dtype):
    """batch_major_out: y is a view of (n, B) storage with the same values and gradients,
    for a row-major and a batch-major output gradient, and with leading dims."""
    _use_backend(monkeypatch, backend)
    x, values, idx, bias = _problem(6, 30, 16, 8, 11, dtype)
    y = group_condensed_matmul(x, values, idx, bias, batch_major_out=True)
    assert y.shape == (6, 16) and y.t().is_contiguous()
    ref = reference_outputs(x, values, expand_group_indices(idx, 8), bias, torch.zeros(6, 16))[0]
    assert_close(y, ref, dtype, 11, "y")
    _check(x, values, idx, bias, 8, dtype, batch_major_out=True)  # dY batch-major (randn_like keeps the layout)
    xl = x.view(2, 3, 30).clone().requires_grad_()
    yl = group_condensed_matmul(xl, values, idx, bias, batch_major_out=True)
    assert yl.shape == (2, 3, 16)
    assert_close(yl.reshape(6, 16), ref, dtype, 11, "y (leading dims)")
    vp = values.detach().requires_grad_()
    yb = group_condensed_matmul(x, vp, idx, bias, batch_major_out=True)
    g = torch.randn(6, 16).to(dtype)  # a row-major dY
    yb.backward(g)
    _, _, rgv, _ = reference_outputs(x, vp, expand_group_indices(idx, 8), bias, g)
    assert_close(vp.grad, rgv, dtype, 6, "dValues (row-major dY)")
    with pytest.raises(TypeError, match="batch_major_out"):
        group_condensed_matmul(x, values, idx, batch_major_out=1)

"""Bad and unusual input to the public API, on both backends (issue 11, "Done when").

Every case either raises a ``ValueError``/``TypeError`` whose message names the argument,
or returns the result of a dense fp64 reference. Never a crash, never a silent wrong
answer. Every case runs on both backends (``torch``, and ``triton`` under Triton's
interpreter) in a subprocess, so a segfault fails the case it happened in instead of
killing pytest; after a crash the subprocess is restarted at the next case.

Run by hand: ``python tests/test_bad_input.py`` prints one JSON line per (backend, case).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BACKENDS = ("torch", "triton")
CASES: dict[str, tuple] = {}  # id -> (function, expected exception or None, word the message names)


def case(name, raises=None, match=None):
    """Register a case: ``raises``/``match`` for an expected error, else the function
    checks its own result against the reference."""

    def register(fn):
        assert name not in CASES, name
        CASES[name] = (fn, raises, match)
        return fn

    return register


# -- the cases (run in the subprocess; torch is imported there) ------------------------------
IN_F, N, K, B = 10, 4, 3, 3


def _problem(dtype=None, index_dtype=None):
    import torch

    from helpers import random_indices

    dtype = dtype or torch.float32
    x = torch.randn(B, IN_F, dtype=dtype)
    values = torch.randn(N, K, dtype=dtype)
    indices = random_indices(N, K, IN_F, dtype=index_dtype or torch.int32)
    bias = torch.randn(N, dtype=dtype)
    return x, values, indices, bias


def _check(x, values, indices, bias=None, name="y", grads=False):
    """condensed_matmul against the fp64 dense reference (output, and gradients if asked)."""
    import torch

    from helpers import assert_close
    from tritonsparse import condensed_matmul
    from tritonsparse.reference import condensed_grad_reference, condensed_matmul_reference

    x = x.detach().requires_grad_(grads)
    values = values.detach().requires_grad_(grads)
    y = condensed_matmul(x, values, indices, bias)
    g = torch.randn(y.shape, dtype=y.dtype)
    xd, vd = x.detach().double(), values.detach().double()
    y_ref = condensed_matmul_reference(xd, vd, indices, None if bias is None else bias.double())
    gx_ref, gv_ref = condensed_grad_reference(xd, vd, indices, g.double())
    assert y.shape == y_ref.shape and y.dtype == x.dtype, (y.shape, y_ref.shape, y.dtype)
    assert_close(y, y_ref, x.dtype, values.shape[1], name)
    if grads:
        y.backward(g)
        assert_close(x.grad, gx_ref, x.dtype, max(values.shape[0], 1), "dX")
        assert_close(values.grad, gv_ref, x.dtype, max(x.numel() // max(x.shape[-1], 1), 1), "dValues")


def _call(x, values, indices, bias=None):
    from tritonsparse import condensed_matmul

    return condensed_matmul(x, values, indices, bias)


def _with(**changes):
    """condensed_matmul on the standard problem with some arguments replaced."""
    x, values, indices, bias = _problem()
    args = dict(x=x, values=values, indices=indices, bias=bias)
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return _call(args["x"], args["values"], args["indices"], args["bias"])


# condensed_matmul: arguments of the wrong kind
@case("index_too_large", ValueError, "indices holds 10")
def _():
    import torch
    _with(indices=lambda a: a["indices"].index_fill(0, torch.tensor([1]), IN_F))


@case("index_negative", ValueError, "indices holds -1")
def _():
    import torch
    _with(indices=lambda a: a["indices"].index_fill(0, torch.tensor([0]), -1))


@case("index_1e8", ValueError, "indices holds 100000000")
def _():
    _with(indices=lambda a: a["indices"].fill_(10**8))


@case("index_int32_min", ValueError, "indices holds -2147483648")
def _():
    _with(indices=lambda a: a["indices"].fill_(-(2**31)))


@case("index_int64", TypeError, "indices")
def _():
    _with(indices=lambda a: a["indices"].long())


@case("index_float", TypeError, "indices")
def _():
    _with(indices=lambda a: a["indices"].float())


@case("index_uint8", TypeError, "indices")
def _():
    import torch
    _with(indices=lambda a: a["indices"].to(torch.uint8))


@case("index_numpy_array", TypeError, "indices")
def _():
    _with(indices=lambda a: a["indices"].numpy())


@case("int16_index_too_wide_x", TypeError, "int16")
def _():
    import torch
    _call(torch.randn(1, 40000), torch.randn(1, 1), torch.zeros(1, 1, dtype=torch.int16))


@case("values_indices_shape_mismatch", ValueError, "values")
def _():
    import torch
    _with(values=torch.randn(N, K + 1))


@case("values_1d", ValueError, "values")
def _():
    import torch
    _with(values=torch.randn(N))


@case("values_3d", ValueError, "values")
def _():
    import torch
    _with(values=torch.randn(1, N, K))


@case("values_int", TypeError, "values")
def _():
    _with(values=lambda a: a["values"].int())


@case("values_sparse", TypeError, "values")
def _():
    _with(values=lambda a: a["values"].to_sparse())


@case("values_dtype_mismatch", TypeError, "values")
def _():
    _with(values=lambda a: a["values"].bfloat16())


@case("values_on_meta_x_on_cpu", ValueError, "values")
def _():
    _with(values=lambda a: a["values"].to("meta"))


@case("x_last_dim_too_small", ValueError, "indices holds")
def _():
    import torch
    x, values, indices, bias = _problem()
    indices[0, 0] = IN_F - 1
    _call(torch.randn(B, IN_F - 1), values, indices, bias)


@case("x_scalar", ValueError, "x")
def _():
    import torch
    _with(x=torch.tensor(1.0))


@case("x_float64", TypeError, "x")
def _():
    _with(x=lambda a: a["x"].double())


@case("x_int", TypeError, "x")
def _():
    _with(x=lambda a: a["x"].int())


@case("x_list", TypeError, "x")
def _():
    _with(x=[[1.0] * IN_F])


@case("bias_wrong_length", ValueError, "bias")
def _():
    import torch
    _with(bias=torch.randn(N + 1))


@case("bias_2d", ValueError, "bias")
def _():
    import torch
    _with(bias=torch.randn(N, 1))


@case("bias_dtype", TypeError, "bias")
def _():
    _with(bias=lambda a: a["bias"].half())


@case("bias_int", TypeError, "bias")
def _():
    _with(bias=lambda a: a["bias"].int())


# condensed_matmul: indices changed after a first call (item 5)
def _first_then(write):
    x, values, indices, bias = _problem()
    _call(x, values, indices, bias)  # any derived structure is built now
    write(indices)
    _call(x, values, indices, bias)


@case("index_written_in_place_after_a_call", ValueError, "indices holds 99")
def _():
    _first_then(lambda idx: idx.__setitem__((0, 0), 99))


@case("index_written_through_data", ValueError, "indices holds 99")
def _():
    _first_then(lambda idx: idx.data.__setitem__((0, 0), 99))


@case("index_written_through_numpy", ValueError, "indices holds 1000000")
def _():
    _first_then(lambda idx: idx.numpy().__setitem__((1, 1), 10**6))


@case("index_written_between_forward_and_backward", ValueError, "indices holds 50")
def _():
    x, values, indices, bias = _problem()
    values.requires_grad_()
    y = _call(x, values, indices, bias)
    indices.data[2, 0] = 50
    y.sum().backward()


@case("in_range_rewrite_through_data_gives_new_gradients")
def _():
    from helpers import random_indices
    x, values, indices, bias = _problem()
    values.requires_grad_()
    x.requires_grad_()
    _call(x, values, indices, bias).sum().backward()  # builds the transposed structure
    indices.data.copy_(random_indices(N, K, IN_F))
    _check(x, values, indices, bias, grads=True)


# condensed_matmul: valid but unusual input, compared with the dense reference
@case("batch_0")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(torch.randn(0, IN_F), values, indices, bias, grads=True)


@case("out_features_0")
def _():
    import torch
    _check(torch.randn(B, IN_F), torch.randn(0, K), torch.zeros(0, K, dtype=torch.int32), torch.randn(0), grads=True)


@case("fan_in_0_bias_only")
def _():
    import torch
    _check(torch.randn(B, IN_F), torch.randn(N, 0), torch.zeros(N, 0, dtype=torch.int32), torch.randn(N), grads=True)


@case("in_features_0")
def _():
    import torch
    _check(torch.randn(B, 0), torch.randn(N, 0), torch.zeros(N, 0, dtype=torch.int32), torch.randn(N), grads=True)


@case("in_features_0_with_indices", ValueError, "indices holds 0")
def _():
    import torch
    _call(torch.randn(B, 0), torch.randn(N, 1), torch.zeros(N, 1, dtype=torch.int32))


@case("batch_1")
def _():
    x, values, indices, bias = _problem()
    _check(x[:1], values, indices, bias, grads=True)


@case("batch_17_odd")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(torch.randn(17, IN_F), values, indices, bias, grads=True)


@case("x_3d_leading_dims")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(torch.randn(2, 3, IN_F), values, indices, bias, grads=True)


@case("x_non_contiguous")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(torch.randn(IN_F, 5).t(), values, indices, bias, grads=True)


@case("values_and_indices_non_contiguous")
def _():
    import torch

    from helpers import random_indices
    x, values, indices, bias = _problem()
    idx = random_indices(N, 2 * K, IN_F)[:, ::2]
    _check(x, torch.randn(K, N).t(), idx, bias, grads=True)


@case("bias_strided")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(x, values, indices, torch.randn(2 * N)[::2])


@case("bias_expanded")
def _():
    import torch
    x, values, indices, bias = _problem()
    _check(x, values, indices, torch.tensor([0.5]).expand(N))


@case("repeated_index_adds_up")
def _():
    x, values, indices, bias = _problem()
    indices[:, 1] = indices[:, 0]
    _check(x, values, indices, bias, grads=True)


@case("int16_indices")
def _():
    import torch
    x, values, indices, bias = _problem(index_dtype=torch.int16)
    _check(x, values, indices, bias, grads=True)


@case("fp16")
def _():
    import torch
    x, values, indices, bias = _problem(torch.float16)
    _check(x, values, indices, bias)


@case("bf16")
def _():
    import torch
    x, values, indices, bias = _problem(torch.bfloat16)
    _check(x, values, indices, bias)


@case("inference_mode")
def _():
    import torch
    with torch.inference_mode():
        x, values, indices, bias = _problem()
        _check(x, values, indices, bias)


@case("meta_tensors_give_the_shape")
def _():
    import torch
    x, values, indices, bias = (t.to("meta") for t in _problem())
    y = _call(x, values, indices, bias)
    assert y.device.type == "meta" and y.shape == (B, N), (y.device, y.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _call(x, values, indices, bias).shape == (B, N)


@case("fake_tensors_give_the_shape")
def _():
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, values, indices, bias = _problem()
        assert _call(x, values, indices, bias).shape == (B, N)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = _call(x, values, indices, bias)
        assert y.shape == (B, N) and y.dtype == torch.bfloat16, (y.shape, y.dtype)


# CondensedLinear / CondensedConv2d
def _layer():
    from tritonsparse.nn import CondensedLinear
    return CondensedLinear(IN_F, N, fan_in=K)


@case("layer_x_wrong_width", ValueError, "x")
def _():
    import torch
    _layer()(torch.randn(B, IN_F - 1))


@case("layer_fan_in_too_large", ValueError, "fan_in")
def _():
    from tritonsparse.nn import CondensedLinear
    CondensedLinear(IN_F, N, fan_in=IN_F + 1)


@case("layer_indices_written_in_place", ValueError, "indices holds 77")
def _():
    import torch
    layer = _layer()
    layer(torch.randn(B, IN_F))
    with torch.no_grad():
        layer.indices[0] = 77
    layer(torch.randn(B, IN_F))


@case("layer_indices_written_through_data", ValueError, "indices holds 12345")
def _():
    import torch
    layer = _layer()
    layer(torch.randn(B, IN_F))
    layer.indices.data[1] = 12345
    layer(torch.randn(B, IN_F))


@case("layer_load_state_dict_out_of_range", ValueError, "indices")
def _():
    layer = _layer()
    state = layer.state_dict()
    state["indices"][0] = IN_F
    layer.load_state_dict(state)


@case("layer_set_pattern_then_gradients_follow")
def _():
    import torch

    from helpers import random_indices
    layer = _layer()
    x = torch.randn(B, IN_F)
    layer(x).sum().backward()  # builds the transposed structure of the old pattern
    layer.set_pattern(torch.randn(N, K), random_indices(N, K, IN_F))
    x.requires_grad_()
    layer(x).sum().backward()
    dense = layer.to_dense_weight()
    torch.testing.assert_close(x.grad, torch.ones(B, N) @ dense, rtol=1e-5, atol=1e-5)


@case("layer_inference_mode")
def _():
    import torch
    with torch.inference_mode():
        layer = _layer()
        x = torch.randn(B, IN_F)
        y = layer(x)
    torch.testing.assert_close(y, x @ layer.to_dense_weight().t() + layer.bias, rtol=1e-5, atol=1e-5)


@case("layer_batch_0")
def _():
    import torch
    layer = _layer()
    x = torch.randn(0, IN_F, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, N) and x.grad.shape == (0, IN_F)


@case("layer_on_meta_device")
def _():
    import torch
    from tritonsparse.nn import CondensedLinear
    layer = CondensedLinear(IN_F, N, fan_in=K, device="meta")
    y = layer(torch.randn(B, IN_F, device="meta"))
    assert y.device.type == "meta" and y.shape == (B, N)


@case("conv_x_3d", ValueError, "x")
def _():
    import torch
    from tritonsparse.nn import CondensedConv2d
    CondensedConv2d(2, 3, 3, fan_in=4)(torch.randn(2, 5, 5))


@case("conv_indices_written_through_data", ValueError, "indices holds 999")
def _():
    import torch
    from tritonsparse.nn import CondensedConv2d
    conv = CondensedConv2d(2, 3, 3, fan_in=4)
    x = torch.randn(1, 2, 5, 5)
    conv(x)
    conv.indices.data[0] = 999
    conv(x)


@case("conv_batch_0")
def _():
    import torch
    from tritonsparse.nn import CondensedConv2d
    conv = CondensedConv2d(2, 3, 3, fan_in=4)
    y = conv(torch.randn(0, 2, 5, 5))
    assert y.shape == (0, 3, 3, 3), y.shape


@case("conv_strided_bias")
def _():
    import torch
    import torch.nn.functional as F

    from tritonsparse.conv_ops import condensed_conv2d
    from helpers import random_indices
    x = torch.randn(2, 2, 5, 5)
    values, indices = torch.randn(3, 4), random_indices(3, 4, 18)
    bias = torch.randn(6)[::2]
    y = condensed_conv2d(x, values, indices, bias, (3, 3))
    dense = torch.zeros(3, 18).scatter_add_(1, indices.long(), values).view(3, 2, 3, 3)
    torch.testing.assert_close(y, F.conv2d(x, dense, bias), rtol=1e-5, atol=1e-5)


# CondensedWeight
@case("weight_index_out_of_range", ValueError, "indices")
def _():
    import torch
    from tritonsparse import CondensedWeight
    CondensedWeight(torch.randn(2, 1), torch.full((2, 1), 5, dtype=torch.int32), None, (2, 5))


@case("weight_not_constant_fan_in", ValueError, "row 2 has 3 nonzeros")
def _():
    import torch
    from tritonsparse import CondensedWeight
    w = torch.zeros(4, 6)
    w[0, :2] = w[1, 2:4] = 1
    w[2, :3] = 1
    CondensedWeight.from_dense(w)


@case("weight_active_rows_descending", ValueError, "active_rows")
def _():
    import torch
    from tritonsparse import CondensedWeight
    CondensedWeight(torch.randn(2, 1), torch.zeros(2, 1, dtype=torch.int32), torch.tensor([3, 1]), (4, 5))


@case("weight_without_shape", ValueError, "shape")
def _():
    import torch
    from tritonsparse import CondensedWeight
    CondensedWeight(torch.randn(2, 1), torch.zeros(2, 1, dtype=torch.int32))


@case("weight_matmul_after_data_write", ValueError, "indices holds 40")
def _():
    import torch
    from tritonsparse import CondensedWeight
    w = CondensedWeight.from_dense(torch.eye(4))
    x = torch.randn(2, 4)
    w.matmul(x)
    w.indices.data[0, 0] = 40
    w.matmul(x)


# csr_matmul
def _csr_problem():
    import torch
    dense = torch.randn(N, IN_F) * (torch.rand(N, IN_F) < 0.4)
    return torch.randn(B, IN_F), dense


def _csr_with(crow=None, col=None):
    import torch
    from tritonsparse import csr_matmul
    x, dense = _csr_problem()
    w = dense.to_sparse_csr()
    crow = w.crow_indices().clone() if crow is None else crow(w.crow_indices().clone())
    col = w.col_indices().clone() if col is None else col(w.col_indices().clone())
    bad = torch.sparse_csr_tensor(crow, col, torch.randn(col.numel()), (N, IN_F), check_invariants=False)
    csr_matmul(x, bad)


@case("csr_column_1e8", ValueError, "col_indices")
def _():
    _csr_with(col=lambda c: c.fill_(10**8))


@case("csr_column_negative", ValueError, "col_indices")
def _():
    _csr_with(col=lambda c: c.fill_(-3))


@case("csr_crow_decreasing", ValueError, "crow_indices")
def _():
    import torch
    _csr_with(crow=lambda c: torch.tensor([0, 3, 1, 4, c[-1]]), col=lambda c: c)


@case("csr_crow_end_not_nnz", ValueError, "crow_indices")
def _():
    _csr_with(crow=lambda c: c.index_fill_(0, c.new_tensor([N]), int(c[-1]) + 5))


@case("csr_fewer_values_than_columns", ValueError, "weight.values()")
def _():
    import torch
    from tritonsparse import csr_matmul
    w = torch.sparse_csr_tensor(torch.tensor([0, 2, 3]), torch.tensor([0, 1, 2]), torch.randn(2), (2, 4),
                                check_invariants=False)
    csr_matmul(torch.randn(1, 4), w)


@case("csr_dense_weight", TypeError, "weight")
def _():
    from tritonsparse import csr_matmul
    x, dense = _csr_problem()
    csr_matmul(x, dense)


@case("csr_batch_0_and_strided_bias")
def _():
    import torch
    from tritonsparse import csr_matmul
    x, dense = _csr_problem()
    bias = torch.randn(2 * N)[::2]
    torch.testing.assert_close(csr_matmul(x, dense.to_sparse_csr(), bias), x @ dense.t() + bias, rtol=1e-5, atol=1e-5)
    assert csr_matmul(x[:0], dense.to_sparse_csr(), bias).shape == (0, N)


@case("csr_no_nonzeros_bias_only")
def _():
    import torch
    from tritonsparse import csr_matmul
    x = torch.randn(B, IN_F, requires_grad=True)
    bias = torch.randn(N)
    y = csr_matmul(x, torch.zeros(N, IN_F).to_sparse_csr(), bias)
    y.sum().backward()
    torch.testing.assert_close(y, bias.expand(B, N))
    assert x.grad.abs().sum() == 0


# -- runner ------------------------------------------------------------------------------------
def _outcome(name):
    fn, raises, match = CASES[name]
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every outcome is reported
        got = f"{type(e).__name__}: {e}"
        if raises is None:
            return "fail", f"expected a result, got {got}"
        if not isinstance(e, raises):
            return "fail", f"expected {raises.__name__} naming {match!r}, got {got}"
        if match not in str(e):
            return "fail", f"the message does not name {match!r}: {got}"
        return "ok", got
    if raises is not None:
        return "fail", f"expected {raises.__name__} naming {match!r}, but the call returned"
    return "ok", "result matches"


def _main(start=None):
    """Run every (backend, case) from ``start`` on in this process, one JSON line each.
    Triton's interpreter is on throughout; ``TRITONSPARSE_BACKEND`` (read on every call)
    picks the backend of each case."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    keys = _keys()
    if start:
        keys = keys[keys.index(start):]
    for key in keys:
        backend, name = key.split("/")
        os.environ["TRITONSPARSE_BACKEND"] = backend
        print(json.dumps({"case": key, "started": True}), flush=True)
        torch.manual_seed(0)
        status, msg = _outcome(name)
        print(json.dumps({"case": key, "status": status, "msg": msg}), flush=True)


def _keys():
    return [f"{backend}/{name}" for backend in BACKENDS for name in CASES]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    env["TRITON_INTERPRET"] = "1"
    return env


def _run_all():
    """Outcomes of every (backend, case), from subprocesses restarted after a crash."""
    results, start, keys = {}, None, _keys()
    while True:
        proc = subprocess.run([sys.executable, __file__] + ([start] if start else []),
                              capture_output=True, text=True, env=_env(), timeout=900)
        last = None
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                last = rec["case"]
                if "status" in rec:
                    results[last] = (rec["status"], rec["msg"])
        if proc.returncode == 0:
            return results
        if last is None or last in results:  # died outside a case
            pytest.fail(f"the subprocess failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
        results[last] = ("fail", f"CRASHED (rc={proc.returncode}): {proc.stderr[-1500:]}")
        if keys.index(last) + 1 == len(keys):
            return results
        start = keys[keys.index(last) + 1]


@pytest.fixture(scope="session")
def bad_input_results(tmp_path_factory):
    """Every outcome, computed once and shared by the xdist workers (the session's base
    temp folder is common to them)."""
    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own subfolder of the session's
        base = base.parent
    path = base / "bad_input_results.json"
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            path.write_text(json.dumps(_run_all()))
        return json.loads(path.read_text())


def test_enough_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(bad_input_results, backend, name):
    status, msg = bad_input_results[f"{backend}/{name}"]
    assert status == "ok", f"{backend}/{name}: {msg}"


if __name__ == "__main__":
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    _main(sys.argv[1] if len(sys.argv) > 1 else None)

"""condensed_matmul forward and gradients against the fp64 dense reference, on the
Triton kernels (interpreter on CPU, real kernels on GPU) and on the torch CPU path."""
import pytest
import torch

import tritonsparse
from tritonsparse import _triton

from helpers import assert_close, random_indices, reference_outputs

# (leading batch dims, in_features, n, K): odd sizes so every mask matters
SHAPES = {
    "odd": ((3,), 37, 13, 5),
    "n1_K_eq_in_batch1": ((1,), 20, 1, 20),
    "K1": ((5,), 9, 7, 1),
    "3d_input": ((2, 3), 33, 17, 4),
    "batch_40": ((40,), 19, 11, 3),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKENDS = ["triton", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "triton" and not (_triton.HAS_TRITON and _triton.interpreting()):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITONSPARSE_BACKEND", request.param)
    return request.param


def _problem(lead, in_features, n, k, dtype, index_dtype=torch.int32, bias=True, device="cpu"):
    x = torch.randn(*lead, in_features, dtype=dtype, device=device, requires_grad=True)
    values = torch.randn(n, k, dtype=dtype, device=device, requires_grad=True)
    indices = random_indices(n, k, in_features, index_dtype).to(device)
    b = torch.randn(n, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, values, indices, b


def _check(x, values, indices, bias, dtype):
    y = tritonsparse.condensed_matmul(x, values, indices, bias)
    assert y.shape == (*x.shape[:-1], values.shape[0]) and y.dtype == dtype
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    y_ref, gx_ref, gv_ref, gb_ref = reference_outputs(x, values, indices, bias, grad_out)
    k, batch = values.shape[1], grad_out.numel() // max(grad_out.shape[-1], 1)
    assert_close(y, y_ref, dtype, k, "y")
    assert_close(x.grad, gx_ref, dtype, values.shape[0], "dx")
    assert_close(values.grad, gv_ref, dtype, batch, "dvalues")
    if bias is not None:
        assert_close(bias.grad, gb_ref, dtype, batch, "dbias")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_and_gradients(backend, shape, dtype):
    _check(*_problem(*shape, dtype), dtype)


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32], ids=["int16", "int32"])
def test_index_dtypes(backend, index_dtype):
    _check(*_problem((4,), 50, 6, 7, torch.float32, index_dtype), torch.float32)


def test_fp16(backend):
    _check(*_problem((3,), 21, 5, 6, torch.float16), torch.float16)


def test_no_bias_and_repeated_indices(backend):
    x, values, _, _ = _problem((3,), 10, 4, 6, torch.float32, bias=False)
    indices = torch.randint(0, 10, (4, 6), dtype=torch.int32)  # repeats allowed: they add up
    _check(x, values, indices, None, torch.float32)


def test_non_contiguous_inputs(backend):
    x_big = torch.randn(23, 6)
    x = x_big.t().requires_grad_()  # (6, 23), strides (1, 6)
    v_big = torch.randn(9, 10)
    values = v_big[:, ::2].requires_grad_()  # (9, 5), stride (10, 2)
    indices = random_indices(5, 9, 23).t()  # (9, 5) transposed view
    assert not x.is_contiguous() and not values.is_contiguous() and not indices.is_contiguous()
    _check(x, values, indices, None, torch.float32)


@pytest.mark.parametrize("kind", ["every_other", "expanded"])
def test_strided_bias(backend, kind):
    """A bias that is a strided view (issue 11 item 1) is read with its stride."""
    x, values, indices, _ = _problem((5,), 19, 7, 4, torch.float32, bias=False)
    base = torch.randn(14) if kind == "every_other" else torch.tensor([0.5])
    bias = (base[::2] if kind == "every_other" else base.expand(7)).requires_grad_()  # a strided leaf
    assert not bias.is_contiguous()
    _check(x, values, indices, bias, torch.float32)


def test_only_some_inputs_need_grad(backend):
    x, values, indices, bias = _problem((4,), 12, 5, 3, torch.float32)
    x.requires_grad_(False)
    y = tritonsparse.condensed_matmul(x, values, indices, bias)
    y.sum().backward()
    assert x.grad is None and values.grad is not None and bias.grad is not None


def test_backends_agree(monkeypatch):
    if not _triton.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 to run the kernels on CPU")
    x, values, indices, bias = _problem((6,), 30, 8, 4, torch.float32)
    outs = {}
    for b in BACKENDS:
        monkeypatch.setenv("TRITONSPARSE_BACKEND", b)
        outs[b] = tritonsparse.condensed_matmul(x, values, indices, bias)
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-5, atol=1e-5)


def test_autocast_casts_inputs(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, indices, bias = _problem((4,), 16, 5, 3, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tritonsparse.condensed_matmul(x, values, indices, bias)
    assert y.dtype == torch.bfloat16


def test_torch_compile_traces_the_op(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")
    x, values, indices, bias = _problem((4,), 16, 5, 3, torch.float32)

    def f(x, values, bias):
        return torch.relu(tritonsparse.condensed_matmul(x, values, indices, bias)).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(x, values, bias)
    loss.backward()
    g_compiled = (x.grad.clone(), values.grad.clone(), bias.grad.clone())
    for t in (x, values, bias):
        t.grad = None
    f(x, values, bias).backward()
    torch.testing.assert_close(loss, f(x, values, bias))
    for a, b in zip(g_compiled, (x.grad, values.grad, bias.grad)):
        torch.testing.assert_close(a, b)


# -- kernels write every output element (outputs pre-filled with NaN) ----------------------
@pytest.mark.skipif(not _triton.interpreting(), reason="kernels on CPU need TRITON_INTERPRET=1")
def test_kernels_write_every_element():
    from tritonsparse.formats import transpose_structure
    from tritonsparse.kernels.condensed_dw import condensed_dw
    from tritonsparse.kernels.condensed_fwd import condensed_fwd
    from tritonsparse.kernels.csr_gather import csr_gather
    from tritonsparse.reference import condensed_grad_reference, condensed_matmul_reference

    B, in_f, n, k = 7, 29, 19, 6
    x = torch.randn(B, in_f)
    values = torch.randn(n, k)
    indices = random_indices(n, k, in_f)
    g = torch.randn(B, n)
    y = condensed_fwd(x.t().contiguous(), values, indices, None, torch.full((B, n), float("nan")))
    dv = condensed_dw(x.t().contiguous(), g.t().contiguous(), indices, torch.full((n, k), float("nan")))
    crow, rows, perm = transpose_structure(indices, in_f)
    dx = csr_gather(g.t().contiguous(), crow, rows, values.reshape(-1)[perm].contiguous(), torch.full((B, in_f), float("nan")))
    gx_ref, gv_ref = condensed_grad_reference(x, values, indices, g)
    for out, ref in ((y, condensed_matmul_reference(x, values, indices)), (dv, gv_ref), (dx, gx_ref)):
        assert not out.isnan().any()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# -- GPU: every dtype and every autotune config ---------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 5, 33, 300])
def test_gpu_autotuned(dtype, batch):
    x, values, indices, bias = _problem((batch,), 301, 97, 31, dtype, torch.int16, device="cuda")
    _check(x, values, indices, bias, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["condensed_fwd", "condensed_dw", "csr_gather"])
def test_gpu_every_config(kernel):
    """Force each autotune config in turn (a single-config autotuner does not benchmark)."""
    import importlib

    mod = importlib.import_module(f"tritonsparse.kernels.{kernel}")
    tuner = mod.AOT_SPECS[0][0]
    saved = tuner.configs
    try:
        for cfg in saved:
            tuner.configs = [cfg]
            tuner.cache.clear()
            for dtype in (torch.float32, torch.bfloat16):
                for batch in (3, 70):
                    x, values, indices, bias = _problem((batch,), 157, 45, 19, dtype, torch.int16, device="cuda")
                    _check(x, values, indices, bias, dtype)
    finally:
        tuner.configs = saved
        tuner.cache.clear()


@pytest.mark.skipif(not _triton.interpreting(), reason="kernels on CPU need TRITON_INTERPRET=1")
@pytest.mark.parametrize("tile", [(16, 1, 16, 8, 1)], ids=["16x16-u8-w1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sixteen_column_rows_tiles_on_the_interpreter(tile, dtype):
    """The 16-column rows tile (two 8-column halves per thread, 8 slots per step) forced
    on the forward and dX kernels, in the interpreter, on odd shapes: a padded batch (37 ->
    48: three batch tiles, the last partly dead), a fan-in tail (19 = 2 steps + 3), rows
    past a tile, against the fp64 reference."""
    import importlib

    from tritonsparse.kernels import _configs

    cfg = _configs._config(*tile)
    tuners = [importlib.import_module(f"tritonsparse.kernels.{m}").AOT_SPECS[0][0] for m in ("condensed_fwd", "csr_gather")]
    saved = [t.configs for t in tuners]
    try:
        for t in tuners:
            t.configs = [cfg]
            t.cache.clear()
        for batch in (37, 5):
            _check(*_problem((batch,), 61, 45, 19, dtype, torch.int16), dtype)
        assert all(t.best_config is cfg for t in tuners)  # both kernels ran the forced tile
    finally:
        for t, c in zip(tuners, saved):
            t.configs = c
            t.cache.clear()


@pytest.mark.parametrize("batch, padded", [(1, 1), (7, 7), (16, 16), (17, 32), (40, 48), (64, 64)])
def test_batch_major_pads_past_16(batch, padded):
    from tritonsparse.ops import _batch_major

    x = torch.randn(batch, 5)
    t = _batch_major(x)
    assert t.shape == (5, padded)
    assert t.stride(1) == 1 or batch == 1  # a single column has any stride
    torch.testing.assert_close(t[:, :batch], x.t())
    assert (t[:, batch:] == 0).all()

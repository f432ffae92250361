"""The forward and CSR/dX gather kernels, each loop body forced in turn (the interpreter
keeps one config), and the hardening of issue 11 for them: strided bias, masked tail
slots, out-of-range indices never read, launch on the tensors' device, 1-D grids."""
import contextlib
import types

import pytest
import torch

from tritonsparse import _triton
from tritonsparse.kernels import _configs
from tritonsparse.kernels import condensed_fwd as cf
from tritonsparse.kernels import csr_gather as cg
from tritonsparse.reference import condensed_matmul_reference

from helpers import assert_close, random_indices

needs_interpreter = pytest.mark.skipif(
    not (_triton.HAS_TRITON and _triton.interpreting()), reason="kernels on CPU need TRITON_INTERPRET=1"
)

# one tile per loop body (BLOCK_N, BLOCK_K, BLOCK_B, UNROLL, num_warps)
TILES = {
    "rows_wide": (32, 1, 32, 4, 4),  # batch >= 32: 2-D rows body, two halves of 16 columns
    "chunk_3d": (4, 16, 16, 4, 4),  # small batch: 3-D chunk body
    "chunk_b1": (8, 32, 1, 4, 2),  # one batch column: 2-D chunk body
}
BATCH_OF = {"rows_wide": 37, "chunk_3d": 7, "chunk_b1": 3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INDEX_DTYPES = {"int16": torch.int16, "int32": torch.int32}


@contextlib.contextmanager
def only_tile(tuner, tile):
    """Run ``tuner`` with the one config ``tile``."""
    saved = tuner.configs
    tuner.configs = [_configs._config(*tile)]
    tuner.cache.clear()
    try:
        yield
    finally:
        tuner.configs = saved
        tuner.cache.clear()


def _fwd(x, values, indices, bias=None, xT=None):
    B = x.shape[0]
    xT = x.t().contiguous() if xT is None else xT
    out = torch.full((B, values.shape[0]), float("nan"), dtype=x.dtype)
    return cf.condensed_fwd(xT, values, indices, bias, out)


def _csr_of(values, indices, in_features):
    """(crow, col, val) of the transposed condensed pattern, as the op builds for dX."""
    from tritonsparse.formats import transpose_structure

    crow, rows, perm = transpose_structure(indices, in_features)
    return crow, rows, values.reshape(-1)[perm].contiguous()


def _dense_csr(crow, col, val, n_cols):
    n_rows = crow.shape[0] - 1
    dense = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    lengths = crow.long().diff()
    rows = torch.repeat_interleave(torch.arange(n_rows), lengths)
    dense.index_put_((rows, col.long()), val.double(), accumulate=True)
    return dense


def _gather(inT, crow, col, val, bias=None, plan=None):
    out = torch.full((inT.shape[1], crow.shape[0] - 1), float("nan"), dtype=inT.dtype)
    return cg.csr_gather(inT, crow, col, val, out, bias=bias, plan=plan)


# -- every loop body, dtype and index dtype ------------------------------------------------
@needs_interpreter
@pytest.mark.parametrize("itype", INDEX_DTYPES.values(), ids=INDEX_DTYPES.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("K", [1, 6, 37], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("body", TILES)
def test_forward_each_body(body, K, dtype, itype):
    B, in_f, n = BATCH_OF[body], 41, 11
    x = torch.randn(B, in_f, dtype=dtype)
    values = torch.randn(n, K, dtype=dtype)
    indices = random_indices(n, K, in_f, itype)
    bias = torch.randn(n, dtype=dtype)
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices, bias)
    ref = condensed_matmul_reference(x.double(), values.double(), indices, bias.double())
    assert_close(y, ref, dtype, K, "y")


@needs_interpreter
@pytest.mark.parametrize("body", TILES)
def test_forward_main_loop_and_tail(body):
    """A fan-in of several whole steps (unmasked main loop) plus a tail."""
    bn, bk, bb, unroll, _ = TILES[body]
    K = 2 * (unroll if bk == 1 else bk * unroll) + 3
    B, in_f, n = BATCH_OF[body], 300, 5
    x, values, indices = torch.randn(B, in_f), torch.randn(n, K), random_indices(n, K, in_f)
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices)
    assert_close(y, condensed_matmul_reference(x.double(), values.double(), indices), torch.float32, K, "y")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("body", TILES)
def test_dx_gather_each_body(body, dtype):
    B, in_f, n, K = BATCH_OF[body], 29, 13, 7
    g = torch.randn(B, n, dtype=dtype)
    values = torch.randn(n, K, dtype=dtype)
    indices = random_indices(n, K, in_f)
    crow, col, val = _csr_of(values, indices, in_f)
    with only_tile(cg._csr_gather_kernel, TILES[body]):
        dx = _gather(g.t().contiguous(), crow, col, val)
    ref = g.double() @ _dense_csr(crow, col, val, n).t()
    assert_close(dx, ref, dtype, n, "dx")


@needs_interpreter
@pytest.mark.parametrize("body", TILES)
def test_csr_rows_of_unequal_length(body):
    """Rows of 0 .. 40 nonzeros in one tile: the unmasked main loop stops at the shortest
    row, the masked rest runs to the longest."""
    n_rows, n_cols, B = 9, 50, BATCH_OF[body]
    lengths = torch.tensor([0, 40, 3, 17, 1, 29, 8, 0, 12])
    crow = torch.zeros(n_rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(lengths, 0)
    col = torch.cat([torch.randperm(n_cols)[:int(m)] for m in lengths]).int()
    val = torch.randn(int(lengths.sum()))
    inT = torch.randn(n_cols, B)
    bias = torch.randn(n_rows)
    with only_tile(cg._csr_gather_kernel, TILES[body]):
        out = _gather(inT, crow, col, val, bias=bias)
    ref = inT.double().t() @ _dense_csr(crow, col, val, n_cols).t() + bias.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


# -- issue 11 item 1: a bias with any stride ----------------------------------------------
def _strided_biases(n):
    base = torch.randn(2 * n)
    return {"every_other": base[::2], "expanded": torch.tensor([0.5]).expand(n)}


@needs_interpreter
@pytest.mark.parametrize("kind", ["every_other", "expanded"])
@pytest.mark.parametrize("body", TILES)
def test_forward_bias_read_with_its_stride(body, kind):
    B, in_f, n, K = BATCH_OF[body], 23, 9, 5
    bias = _strided_biases(n)[kind]
    assert not bias.is_contiguous()
    x, values, indices = torch.randn(B, in_f), torch.randn(n, K), random_indices(n, K, in_f)
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices, bias)
    ref = condensed_matmul_reference(x.double(), values.double(), indices, bias.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("kind", ["every_other", "expanded"])
def test_csr_bias_read_with_its_stride(kind):
    in_f, n, K, B = 19, 8, 4, 5
    bias = _strided_biases(in_f)[kind]
    g, values, indices = torch.randn(B, n), torch.randn(n, K), random_indices(n, K, in_f)
    crow, col, val = _csr_of(values, indices, in_f)
    out = _gather(g.t().contiguous(), crow, col, val, bias=bias)
    ref = g.double() @ _dense_csr(crow, col, val, n).t() + bias.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# -- issue 11 items 4 and 5: dead slots and bad indices never read x ------------------------
@needs_interpreter
@pytest.mark.parametrize("body", TILES)
def test_inf_in_unused_column_does_not_leak(body):
    """No row reads x[:, 0]; the tail slots of each step are dead. An inf there must not
    turn into NaN through 0 * inf."""
    B, in_f, n, K = BATCH_OF[body], 30, 10, 5
    x = torch.randn(B, in_f)
    x[:, 0] = float("inf")
    values = torch.randn(n, K)
    indices = (random_indices(n, K, in_f - 1) + 1).int()  # column 0 never used
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices)
    assert torch.isfinite(y).all()
    finite_x = x.double().clone()
    finite_x[:, 0] = 0  # the dense reference would multiply the inf by a zero weight
    torch.testing.assert_close(y.double(), condensed_matmul_reference(finite_x, values.double(), indices),
                               rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("body", TILES)
def test_inf_in_unused_row_of_dx_does_not_leak(body):
    in_f, n, K, B = 20, 9, 3, BATCH_OF[body]
    values = torch.randn(n, K)
    indices = (random_indices(n, K, in_f - 1) + 1).int()
    crow, col, val = _csr_of(values, indices, in_f)
    g = torch.randn(B, n)
    # a CSR over rows 1.. of gT whose row 0 holds inf: no column index points at it
    gT = torch.cat([torch.full((1, B), float("inf")), g.t()]).contiguous()
    with only_tile(cg._csr_gather_kernel, TILES[body]):
        dx = _gather(gT, crow, (col + 1).int(), val)
    assert torch.isfinite(dx).all()
    torch.testing.assert_close(dx.double(), g.double() @ _dense_csr(crow, col, val, n).t(), rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("itype", INDEX_DTYPES.values(), ids=INDEX_DTYPES.keys())
@pytest.mark.parametrize("body", TILES)
def test_out_of_range_indices_never_read(body, itype):
    """x sits inside a NaN-filled buffer: an index < 0 or >= in_features that were read
    would bring a NaN into the output. Such slots contribute nothing."""
    B, in_f, n, K = BATCH_OF[body], 25, 7, 6
    x = torch.randn(B, in_f)
    buf = torch.full((in_f + 40, B), float("nan"))
    buf[20:20 + in_f] = x.t()
    xT = buf[20:20 + in_f]
    values = torch.randn(n, K)
    indices = random_indices(n, K, in_f, torch.int32)
    bad = torch.zeros(n, K, dtype=torch.bool)
    bad[0, 0] = bad[3, 2] = bad[6, 5] = bad[2, 1] = True
    indices[0, 0], indices[3, 2], indices[6, 5] = in_f, -3, in_f + 7
    indices[2, 1] = 30000 if itype == torch.int16 else 10**8
    indices = indices.to(itype)
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices, xT=xT)
    ref = condensed_matmul_reference(x.double(), values.double().masked_fill(bad, 0), indices.long().masked_fill(bad, 0))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@needs_interpreter
def test_csr_out_of_range_columns_never_read():
    n_cols, B = 12, 4
    crow = torch.tensor([0, 3, 5], dtype=torch.int32)
    col = torch.tensor([1, n_cols, 4, -2, 10**8], dtype=torch.int32)
    val = torch.randn(5)
    buf = torch.full((n_cols + 30, B), float("nan"))
    inT = buf[10:10 + n_cols]
    inT.copy_(torch.randn(n_cols, B))
    out = _gather(inT, crow, col, val)
    ref = torch.stack([val[0] * inT[1] + val[2] * inT[4], torch.zeros(B)], 1)
    torch.testing.assert_close(out, ref)


# -- issue 11 item 6: the launch runs under the tensors' device ----------------------------
class _RecordingKernel:
    """Stands in for an autotuned kernel: records the grid and whether the launch ran
    inside the device context."""

    def __init__(self, events):
        self.events = events
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = {"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_B": 32, "UNROLL": 4}
            self.grids.append(grid(meta))
            self.events.append("launch")

        return launch


def _recording_device(events):
    @contextlib.contextmanager
    def launch_device(t):
        events.append(("enter", t.device))
        yield
        events.append("exit")

    return launch_device


def test_forward_launches_under_the_tensors_device(monkeypatch):
    events = []
    monkeypatch.setattr(cf, "launch_device", _recording_device(events))
    monkeypatch.setattr(cf, "_condensed_fwd_kernel", _RecordingKernel(events))
    x, values, indices = torch.randn(3, 10), torch.randn(4, 2), random_indices(4, 2, 10)
    _fwd(x, values, indices)
    assert events == [("enter", x.device), "launch", "exit"]


def test_csr_launches_under_the_tensors_device(monkeypatch):
    events = []
    monkeypatch.setattr(cg, "launch_device", _recording_device(events))
    monkeypatch.setattr(cg, "_csr_gather_kernel", _RecordingKernel(events))
    values, indices = torch.randn(4, 2), random_indices(4, 2, 10)
    crow, col, val = _csr_of(values, indices, 10)
    _gather(torch.randn(4, 3), crow, col, val)
    assert events[0][0] == "enter" and events[1:] == ["launch", "exit"]


def test_launch_device_selects_the_tensors_cuda_device(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        seen.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    t = types.SimpleNamespace(device=torch.device("cuda", 1))
    with _triton.launch_device(t):
        pass
    assert seen == [torch.device("cuda", 1)]
    with _triton.launch_device(torch.zeros(1)):  # CPU (interpreter): nothing to select
        pass
    assert len(seen) == 1


# -- issue 11 item 9: one grid axis, whatever the batch ------------------------------------
def test_forward_grid_is_one_axis_for_a_huge_batch(monkeypatch):
    events = []
    kernel = _RecordingKernel(events)
    monkeypatch.setattr(cf, "_condensed_fwd_kernel", kernel)
    B, in_f, n, K = 3_000_000, 64, 40, 8  # a padded batch past 65535 * BLOCK_B
    xT = torch.empty(in_f, B, device="meta")
    values = torch.empty(n, K, device="meta")
    indices = torch.empty(n, K, dtype=torch.int16, device="meta")
    cf.condensed_fwd(xT, values, indices, None, torch.empty(B, n, device="meta"))
    (grid,) = kernel.grids
    assert len(grid) == 1 and grid[0] == -(-n // 16) * -(-B // 32) < 2**31


def test_csr_grid_is_one_axis_for_a_huge_batch(monkeypatch):
    events = []
    kernel = _RecordingKernel(events)
    monkeypatch.setattr(cg, "_csr_gather_kernel", kernel)
    B, n_cols, n_rows = 3_000_000, 16, 40
    crow = torch.arange(0, 2 * n_rows + 1, 2, dtype=torch.int32)
    col = torch.zeros(2 * n_rows, dtype=torch.int32)
    cg._launch(torch.empty(n_cols, B, device="meta"), crow, crow[1:], col, torch.zeros(2 * n_rows), torch.empty(B, n_rows, device="meta"),
               None, None, n_rows, 2)
    (grid,) = kernel.grids
    assert len(grid) == 1 and grid[0] == -(-n_rows // 16) * -(-B // 32)


# -- split-K at small batch ----------------------------------------------------------------
def test_split_k_plan():
    assert _configs.split_k_plan(768, 307, 256, 132) == (1, 307)  # large batch: never
    assert _configs.split_k_plan(14336, 1434, 1, 132) == (1, 1434)  # enough row tiles
    splits, per = _configs.split_k_plan(512, 4000, 1, 132)  # 64 row tiles: too few
    assert splits > 1 and per % _configs.SPLIT_K_ROUND == 0 and per >= _configs.MIN_SPLIT_K
    assert (splits - 1) * per < 4000 <= splits * per
    assert _configs.split_k_plan(512, 300, 1, 132) == (1, 300)  # chunks would be too short


@needs_interpreter
@pytest.mark.parametrize("body", ["chunk_3d", "chunk_b1"])
def test_forward_split_k(body, monkeypatch):
    monkeypatch.setattr(cf, "sm_count", lambda device: 64)
    monkeypatch.setattr(_configs, "MIN_SPLIT_K", 8)
    monkeypatch.setattr(_configs, "SPLIT_K_ROUND", 8)
    B, in_f, n, K = BATCH_OF[body], 60, 6, 45
    assert _configs.split_k_plan(n, K, _triton.batch_bucket(B), 64)[0] > 1
    x, values, indices, bias = torch.randn(B, in_f), torch.randn(n, K), random_indices(n, K, in_f), torch.randn(n)
    with only_tile(cf._condensed_fwd_kernel, TILES[body]):
        y = _fwd(x, values, indices, bias)
    ref = condensed_matmul_reference(x.double(), values.double(), indices, bias.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


# -- launcher input checks -----------------------------------------------------------------
def test_launchers_reject_bad_layouts():
    x, values, indices = torch.randn(10, 4), torch.randn(3, 2), random_indices(3, 2, 10)
    with pytest.raises(ValueError, match="xT"):
        cf.condensed_fwd(x.t(), values, indices, None, torch.empty(4, 3))  # not batch-contiguous
    with pytest.raises(ValueError, match="out"):
        cf.condensed_fwd(x, values, indices, None, torch.empty(3, 3))
    crow, col, val = _csr_of(values, indices, 10)
    with pytest.raises(ValueError, match="inT"):
        cg.csr_gather(torch.randn(4, 10).t(), crow, col, val, torch.empty(4, 10))
    with pytest.raises(ValueError, match="out"):
        cg.csr_gather(torch.randn(10, 4), crow, col, val, torch.empty(4, 9))

"""CondensedWeight: conversions, ablated rows, validation of constant fan-in."""
import pytest
import torch

from tritonsparse import CondensedWeight, default_index_dtype
from tritonsparse.formats import transpose_structure

from helpers import random_indices


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _constant_fan_in_dense(out_f, in_f, k, ablated=()):
    w = torch.zeros(out_f, in_f)
    for r in range(out_f):
        if r not in ablated:
            w[r, torch.randperm(in_f)[:k]] = torch.randn(k)
    return w


def test_from_dense_round_trip_with_ablated_rows():
    w = _constant_fan_in_dense(9, 13, 4, ablated=(0, 5))
    cw = CondensedWeight.from_dense(w)
    assert cw.fan_in == 4 and cw.n_active == 7 and cw.active_rows.tolist() == [1, 2, 3, 4, 6, 7, 8]
    assert cw.indices.dtype == torch.int16
    assert (cw.indices.diff(dim=1) > 0).all()  # ascending within a row
    torch.testing.assert_close(cw.to_dense(), w)
    torch.testing.assert_close(cw.to_csr().to_dense(), w)
    assert cw.density == pytest.approx(7 * 4 / (9 * 13))


def test_mask_keeps_explicit_zeros():
    w = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True
    w[0, 0] = 0.0  # masked-in zero stays a stored position
    cw = CondensedWeight.from_dense(w, mask)
    assert cw.fan_in == 2 and cw.indices[0].tolist() == [0, 1]
    torch.testing.assert_close(cw.to_dense(), w * mask)


def test_matmul_matches_dense_linear():
    w = _constant_fan_in_dense(8, 11, 3, ablated=(2,))
    bias = torch.randn(8)
    cw = CondensedWeight.from_dense(w, index_dtype=torch.int32)
    x = torch.randn(2, 5, 11)
    torch.testing.assert_close(cw.matmul(x, bias), torch.nn.functional.linear(x, w, bias), rtol=1e-5, atol=1e-5)
    assert cw.matmul(x)[..., 2].abs().max() == 0  # ablated row: zero without bias


def test_all_rows_ablated():
    cw = CondensedWeight.from_dense(torch.zeros(3, 4))
    assert cw.n_active == 0 and cw.nnz == 0
    assert cw.to_dense().abs().sum() == 0


def test_to_moves_and_casts():
    cw = CondensedWeight.from_dense(_constant_fan_in_dense(3, 5, 2)).to(torch.bfloat16)
    assert cw.values.dtype == torch.bfloat16 and cw.indices.dtype == torch.int16


def test_default_index_dtype():
    assert default_index_dtype(32768) == torch.int16
    assert default_index_dtype(32769) == torch.int32


def test_transpose_structure_lists_every_reader():
    indices = random_indices(6, 3, 10)
    crow, rows, perm = transpose_structure(indices, 10)
    flat = indices.reshape(-1).long()
    for i in range(10):
        readers = perm[crow[i] : crow[i + 1]]
        assert (flat[readers] == i).all()
        assert rows[crow[i] : crow[i + 1]].tolist() == (readers // 3).tolist()
    assert int(crow[-1]) == indices.numel()


def test_pattern_keeps_the_transpose_while_the_indices_are_unchanged():
    from tritonsparse._structure import Pattern

    indices = random_indices(6, 3, 10)
    pattern = Pattern(10)
    perm = pattern.transposed(indices)[2]
    assert pattern.transposed(indices)[2] is perm  # kept
    indices.data[0, 0] = (int(indices[0, 0]) + 1) % 10  # behind the version counter
    assert pattern.transposed(indices)[2] is not perm  # rebuilt: the content differs
    torch.testing.assert_close(pattern.transposed(indices)[2], transpose_structure(indices, 10)[2])
    indices.data[1, 1] = 10
    with pytest.raises(ValueError, match="indices holds 10"):
        pattern.transposed(indices)

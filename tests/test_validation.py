"""Bad input gets a clear ValueError/TypeError that names the argument."""
import pytest
import torch

import tritonsparse
from tritonsparse import CondensedWeight
from tritonsparse.nn import CondensedLinear

from helpers import random_indices


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TRITONSPARSE_BACKEND", "torch")


def _ok():
    return torch.randn(3, 10), torch.randn(4, 2), random_indices(4, 2, 10), torch.randn(4)


@pytest.mark.parametrize(
    "mutate, err, word",
    [
        (lambda a: a.update(indices=torch.full((4, 2), 10, dtype=torch.int32)), ValueError, "indices"),
        (lambda a: a.update(indices=torch.full((4, 2), -1, dtype=torch.int32)), ValueError, "indices"),
        (lambda a: a.update(indices=a["indices"].long()), TypeError, "indices"),
        (lambda a: a.update(indices=a["indices"].float()), TypeError, "indices"),
        (lambda a: a.update(values=torch.randn(4, 3)), ValueError, "values"),
        (lambda a: a.update(values=torch.randn(4)), ValueError, "values"),
        (lambda a: a.update(x=torch.randn(3, 5)), ValueError, "indices"),  # x's last dim too small
        (lambda a: a.update(bias=torch.randn(5)), ValueError, "bias"),
        (lambda a: a.update(bias=torch.randn(4, 1)), ValueError, "bias"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "x"),
        (lambda a: a.update(values=a["values"].int()), TypeError, "values"),
        (lambda a: a.update(values=a["values"].bfloat16()), TypeError, "values"),
        (lambda a: a.update(bias=a["bias"].bfloat16()), TypeError, "bias"),
        (lambda a: a.update(values=a["values"].to("meta")), ValueError, "values"),
        (lambda a: a.update(x="not a tensor"), TypeError, "x"),
        (lambda a: a.update(values=a["values"].to_sparse()), TypeError, "values"),
    ],
    ids=["index_too_large", "index_negative", "index_int64", "index_float", "shape_mismatch", "values_1d",
         "x_last_dim", "bias_length", "bias_2d", "x_float64", "values_int", "dtype_mismatch", "bias_dtype",
         "mixed_devices", "x_not_tensor", "values_sparse"],
)
def test_condensed_matmul_rejects(mutate, err, word):
    x, values, indices, bias = _ok()
    args = dict(x=x, values=values, indices=indices, bias=bias)
    mutate(args)
    with pytest.raises(err, match=word):
        tritonsparse.condensed_matmul(args["x"], args["values"], args["indices"], args["bias"])


def test_index_check_sees_in_place_changes():
    x, values, indices, bias = _ok()
    tritonsparse.condensed_matmul(x, values, indices, bias)  # validated and cached
    indices[0, 0] = 99  # bumps the version counter: checked again
    with pytest.raises(ValueError, match="indices"):
        tritonsparse.condensed_matmul(x, values, indices, bias)


def test_int16_indices_need_small_in_features():
    x = torch.randn(1, 40000)
    with pytest.raises(TypeError, match="int16"):
        tritonsparse.condensed_matmul(x, torch.randn(1, 1), torch.zeros(1, 1, dtype=torch.int16))


def test_condensed_weight_rejects():
    with pytest.raises(ValueError, match="row 2 has 3 nonzeros"):
        w = torch.zeros(4, 6)
        w[0, :2] = w[1, 2:4] = 1
        w[2, :3] = 1
        CondensedWeight.from_dense(w)
    with pytest.raises(ValueError, match="mask"):
        CondensedWeight.from_dense(torch.randn(3, 4), mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="active_rows"):
        CondensedWeight(torch.randn(2, 1), torch.zeros(2, 1, dtype=torch.int32), torch.tensor([3, 1]), (4, 5))
    with pytest.raises(ValueError, match="indices"):
        CondensedWeight(torch.randn(2, 1), torch.full((2, 1), 5, dtype=torch.int32), None, (2, 5))


def test_layer_rejects():
    layer = CondensedLinear(10, 4, fan_in=3)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(2, 9))
    with pytest.raises(ValueError, match="fan_in"):
        CondensedLinear(10, 4, fan_in=11)
    with pytest.raises(TypeError, match="linear"):
        CondensedLinear.from_linear(torch.nn.Conv2d(1, 1, 1))

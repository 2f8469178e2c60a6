"""The package's one set of argument validators."""

import math

import keras
import numpy as np
import pytest

from tf_dessilbi import _validate


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.int64(2), np.array(0.25)])
def test_real_accepts_python_and_numpy_scalars(value):
    assert _validate.real("x", value) == float(value)
    assert isinstance(_validate.real("x", value), float)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: _validate.real("x", "1"), TypeError, r"`x` must be a real number. Received: x='1' of type str"),
        (lambda: _validate.real("x", True), TypeError, r"`x` must be a real number"),
        (lambda: _validate.real("x", math.nan), ValueError, r"`x` must be finite. Received: x=nan"),
        (lambda: _validate.positive("beta", -5.0), ValueError, r"`beta` must be > 0. Received: beta=-5.0"),
        (lambda: _validate.positive("beta", 0), ValueError, r"`beta` must be > 0. Received: beta=0.0"),
        (lambda: _validate.non_negative("t", -1e-9), ValueError, r"`t` must be >= 0"),
        (lambda: _validate.fraction("sparsity", 1.0), ValueError, r"`sparsity` must be < 1. Received: sparsity=1.0"),
        (lambda: _validate.fraction("sparsity", -0.1), ValueError, r"`sparsity` must be >= 0"),
        (lambda: _validate.integer("n", 2.0), TypeError, r"`n` must be an integer. Received: n=2.0 of type float"),
        (lambda: _validate.positive_int("n", 0), ValueError, r"`n` must be >= 1. Received: n=0"),
        (lambda: _validate.boolean("ticket", "no"), TypeError, r"`ticket` must be True or False. Received: ticket='no'"),
        (lambda: _validate.one_of("mode", "x", ("a", "b")), ValueError, r"`mode` must be one of \('a', 'b'\). Received: mode='x'"),
        (lambda: _validate.model("m", "f"), TypeError, r"f\(\) needs a keras.Model"),
    ],
)
def test_bad_values_name_the_argument_and_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bounds_are_inclusive_unless_open():
    assert _validate.fraction("s", 0.0) == 0.0
    assert _validate.real("x", 1.0, maximum=1.0) == 1.0
    with pytest.raises(ValueError):
        _validate.real("x", 1.0, maximum=1.0, max_open=True)


def test_model_must_be_built():
    with pytest.raises(ValueError, match="not built"):
        _validate.model(keras.Sequential([keras.layers.Dense(2)]), "f")

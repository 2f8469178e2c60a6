"""Proximal maps against their closed forms (runs on every Keras backend)."""

import numpy as np
import pytest
from keras import ops

from tf_dessilbi.dessilbi import proximal
from tests.dessilbi_reference import group_soft_threshold, soft_threshold

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 10.0])
def test_soft_threshold_matches_closed_form(lam):
    x = RNG.normal(size=(5, 7)).astype("float32")
    got = ops.convert_to_numpy(proximal.soft_threshold(ops.convert_to_tensor(x), lam))
    np.testing.assert_allclose(got, soft_threshold(x, lam), rtol=1e-6, atol=1e-7)


def test_soft_threshold_zeroes_exactly_inside_the_threshold():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], "float32")
    got = ops.convert_to_numpy(proximal.soft_threshold(ops.convert_to_tensor(x), 1.0))
    np.testing.assert_array_equal(got, [-1.0, 0.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("shape", [(3, 4), (3, 3, 2, 5), (2, 6, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_group_soft_threshold_matches_closed_form(shape, lam):
    x = RNG.normal(size=shape).astype("float32")
    got = ops.convert_to_numpy(proximal.group_soft_threshold(ops.convert_to_tensor(x), lam))
    np.testing.assert_allclose(got, group_soft_threshold(x, lam), rtol=1e-5, atol=1e-6)


def test_group_soft_threshold_keeps_or_kills_whole_groups():
    x = np.zeros((2, 3), "float32")
    x[:, 0] = [3.0, 4.0]  # norm 5 > 1: shrunk by (1 - 1/5)
    x[:, 1] = [0.3, 0.4]  # norm 0.5 <= 1: zero
    got = ops.convert_to_numpy(proximal.group_soft_threshold(ops.convert_to_tensor(x), 1.0))
    np.testing.assert_allclose(got[:, 0], [2.4, 3.2], rtol=1e-6)
    np.testing.assert_array_equal(got[:, 1], [0.0, 0.0])
    np.testing.assert_array_equal(got[:, 2], [0.0, 0.0])  # zero group: no NaN


def test_group_soft_threshold_with_zero_lambda_is_identity_and_finite_on_zero_groups():
    x = RNG.normal(size=(4, 3)).astype("float32")
    x[:, 1] = 0.0
    got = ops.convert_to_numpy(proximal.group_soft_threshold(ops.convert_to_tensor(x), 0.0))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, x, rtol=1e-6)


def test_group_soft_threshold_at_exact_threshold_is_zero():
    x = np.array([[3.0], [4.0]], "float32")  # norm exactly 5
    got = ops.convert_to_numpy(proximal.group_soft_threshold(ops.convert_to_tensor(x), 5.0))
    np.testing.assert_array_equal(got, np.zeros_like(x))


def test_group_norms_reduce_all_but_last_axis():
    x = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    got = ops.convert_to_numpy(proximal.group_norms(ops.convert_to_tensor(x)))
    assert got.shape == (1, 1, 1, 4)
    np.testing.assert_allclose(
        got.reshape(-1), np.linalg.norm(x.reshape(-1, 4), axis=0), rtol=1e-5
    )

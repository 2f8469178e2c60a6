"""Gate maths of Continuous Sparsification against NumPy (any Keras backend)."""

import numpy as np
import pytest
from keras import ops

from tf_dessilbi.gates import maths as gates


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype="float64")))


SCORES = np.array([[-2.0, -0.3, 0.0], [0.01, 0.7, 3.0]], dtype="float32")


@pytest.mark.parametrize("beta", [1.0, 7.5, 200.0])
@pytest.mark.parametrize("s0", [0.0, -1.0, 2.0])
def test_soft_mask_is_sigmoid_of_beta_s_over_sigmoid_s0(beta, s0):
    got = ops.convert_to_numpy(gates.soft_mask(SCORES, beta, s0))
    np.testing.assert_allclose(got, sigmoid(beta * SCORES) / sigmoid(s0), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("s0", [0.0, -1.0, 2.0])
def test_hard_mask_keeps_the_one_over_sigmoid_s0_scale(s0):
    got = ops.convert_to_numpy(gates.hard_mask(SCORES, s0))
    expected = (SCORES > 0).astype("float32") / sigmoid(s0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0, 2] == 0.0  # s = 0 is closed: 1[s > 0]


def test_soft_mask_tends_to_hard_mask_as_beta_grows():
    scores = SCORES[SCORES != 0]
    soft = ops.convert_to_numpy(gates.soft_mask(scores, 1e4, 0.0))
    hard = ops.convert_to_numpy(gates.hard_mask(scores, 0.0))
    np.testing.assert_allclose(soft, hard, atol=1e-6)


def test_soft_mask_at_initialization_is_one():
    for s0 in (0.0, -1.5, 2.0):
        init = np.full((3,), s0, dtype="float32")
        np.testing.assert_allclose(ops.convert_to_numpy(gates.soft_mask(init, 1.0, s0)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("ticket,expected", [(0.0, "soft"), (1.0, "hard")])
def test_mask_selects_by_ticket_variable(ticket, expected):
    got = ops.convert_to_numpy(gates.mask(SCORES, 3.0, ticket, 0.5))
    ref = (
        sigmoid(3.0 * SCORES) / sigmoid(0.5)
        if expected == "soft"
        else (SCORES > 0) / sigmoid(0.5)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_penalty_value(beta):
    got = float(ops.convert_to_numpy(gates.penalty(SCORES, beta, 1e-3)))
    np.testing.assert_allclose(got, 1e-3 * sigmoid(beta * SCORES).sum(), rtol=1e-6)


def test_penalty_gradient_matches_analytic_derivative():
    import keras

    lam, beta = 0.25, 4.0
    backend = keras.backend.backend()
    s64 = SCORES.astype("float64")
    expected = lam * beta * sigmoid(beta * s64) * (1 - sigmoid(beta * s64))
    if backend == "tensorflow":
        import tensorflow as tf

        s = tf.constant(SCORES)
        with tf.GradientTape() as tape:
            tape.watch(s)
            value = gates.penalty(s, beta, lam)
        grad = tape.gradient(value, s).numpy()
    elif backend == "jax":
        import jax

        grad = np.asarray(jax.grad(lambda s: gates.penalty(s, beta, lam))(SCORES))
    elif backend == "torch":
        import torch

        s = torch.tensor(SCORES, requires_grad=True)
        gates.penalty(s, beta, lam).backward()
        grad = s.grad.numpy()
    else:
        pytest.skip(f"no gradient helper for backend {backend}")
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("s0", [0.0, 0.5, -0.5])
@pytest.mark.parametrize("beta", [1.0, 200.0])
def test_reset_rule_is_min_of_beta_s_and_s0(beta, s0):
    got = ops.convert_to_numpy(gates.reset_scores(SCORES, beta, s0))
    np.testing.assert_allclose(got, np.minimum(beta * SCORES, s0), rtol=1e-6)


def test_reset_keeps_closed_gates_closed_and_reopens_open_ones_at_s0():
    got = ops.convert_to_numpy(gates.reset_scores(SCORES, 50.0, 0.0))
    assert np.all(got[SCORES < 0] < 0)
    assert np.all(got[SCORES > 0] == 0.0)


def test_mask_scale():
    assert gates.mask_scale(0.0) == 2.0
    np.testing.assert_allclose(gates.mask_scale(1.3), 1 / sigmoid(1.3))

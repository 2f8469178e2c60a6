"""The Neumann hypergradient against closed forms of ridge regression (NumPy)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_dessilbi.bilevel import BilevelProblem  # noqa: E402
from tf_dessilbi.bilevel import hypergradient  # noqa: E402
from tf_dessilbi.bilevel import inner_grad  # noqa: E402
from tf_dessilbi.bilevel import oracles  # noqa: E402
from tf_dessilbi.bilevel import ridge  # noqa: E402


def _closed_form(X, t, Xv, tv, x, groups):
    """w*(x), dΦ/dx and the Hessian ∇²_w g = 2A, written from the equations."""
    X, t, Xv, tv = (np.asarray(a, np.float64) for a in (X, t, Xv, tv))
    n, nv = len(t), len(tv)
    lam = np.exp(np.asarray(x, np.float64))[groups]
    a = X.T @ X / n + np.diag(lam)
    w = np.linalg.solve(a, X.T @ t / n)
    fw = 2 * Xv.T @ (Xv @ w - tv) / nv
    grad = np.array([fw @ -np.linalg.solve(a, lam * (groups == j) * w)
                     for j in range(len(x))])
    return w, grad, 2 * a, fw


def _neumann_reference(w, fw, hess, x, groups, q, eta):
    """−∇ₓ∇_w g · η Σ_{p<Q} (I − ηH)^p ∇_w f, with ∂(∇_w g)/∂x_j = 2 e^{x_j} 1_{G_j} ⊙ w."""
    z, p = np.zeros_like(fw), fw.copy()
    for _ in range(q):
        z += p
        p = p - eta * hess @ p
    z *= eta
    lam = np.exp(np.asarray(x, np.float64))
    return np.array([-(2 * lam[j] * (groups == j) * w) @ z for j in range(len(x))])


def _setup(groups=None, x=(0.3,)):
    X, t, Xv, tv = ridge.ridge_data(weak_features=8)
    groups = np.zeros(X.shape[1], int) if groups is None else np.asarray(groups)
    problem = ridge.ridge_problem(X, t, Xv, tv, groups=groups)
    w, grad, hess, fw = _closed_form(X, t, Xv, tv, np.asarray(x), groups)
    return problem, (X, t, Xv, tv), groups, w, grad, hess, fw


@pytest.mark.parametrize("groups", [None, [0] * 8 + [1] * 8])
def test_neumann_matches_reference_and_error_shrinks_geometrically(groups):
    x0 = (0.3,) if groups is None else (0.3, -0.5)
    problem, data, groups, w, grad, hess, fw = _setup(groups, x0)
    eta = 0.08
    x = [tf.constant(x0, tf.float32)]
    y = [tf.constant(w, tf.float32)]
    batch_in, batch_out = problem.inner_large_sampler(), problem.outer_large_sampler()
    # Truncation error bound: ‖∂ₓ∇_w g‖ ‖(I − ηH)^Q H⁻¹ ∇_w f‖ ≤ C (1 − ημ)^Q.
    mu = np.linalg.eigvalsh(hess).min()
    lam = np.exp(np.asarray(x0))
    jac = np.linalg.norm([2 * lam[j] * (groups == j) * w for j in range(len(x0))])
    bound0 = jac * np.linalg.norm(np.linalg.solve(hess, fw))
    errors = []
    qs = (1, 2, 5, 10, 20, 40)
    for q in qs:
        h = hypergradient(problem, x, y, batch_out, batch_in, q, eta)[0].numpy()
        ref = _neumann_reference(w, fw, hess, x0, groups, q, eta)
        np.testing.assert_allclose(h, ref, rtol=2e-3, atol=2e-5)
        errors.append(np.linalg.norm(h - grad))
        assert errors[-1] <= bound0 * (1 - eta * mu) ** q * 1.01 + 1e-6, (q, errors)
    assert errors[-1] < errors[-2] < errors[-3], errors
    assert errors[-1] < 1e-3 * np.linalg.norm(grad)


def test_inner_grad_matches_numpy():
    problem, (X, t, *_), groups, w, *_ = _setup()
    x0, wv = 0.7, np.linspace(-1, 1, 16)
    g = inner_grad(problem, [tf.constant([x0])], [tf.constant(wv, tf.float32)],
                   problem.inner_large_sampler())[0].numpy()
    X, t = X.astype(np.float64), t.astype(np.float64)
    ref = 2 * X.T @ (X @ wv - t) / len(t) + 2 * np.exp(x0) * wv
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_oracle_calls_of_one_hypergradient():
    problem, *_ = _setup()
    cost = oracles.Cost()
    with oracles.recording(cost):
        hypergradient(problem, [tf.constant([0.0])], [tf.zeros(16)],
                      problem.outer_large_sampler(), problem.inner_large_sampler(), 7, 0.05)
    assert dict(cost.calls) == {"outer_grad": 1, "hvp": 6, "jvp": 1}
    assert cost.samples["hvp"] == 6 * 64


def test_structurally_zero_hypergradient_is_refused():
    def inner(x, y, b):
        return tf.reduce_sum(tf.square(y[0] - 1.0))  # ignores x

    def outer(x, y, b):
        return tf.reduce_sum(tf.square(y[0]))

    problem = BilevelProblem(inner, outer, lambda: None, lambda: None)
    with pytest.raises(ValueError, match="does not depend on the hyperparameters x"):
        hypergradient(problem, [tf.constant([0.0])], [tf.zeros(3)], None, None, 3, 0.1)

    def outer_constant(x, y, b):
        return tf.constant(1.0)

    problem = BilevelProblem(lambda x, y, b: tf.exp(x[0][0]) * tf.reduce_sum(y[0] ** 2),
                             outer_constant, lambda: None, lambda: None)
    with pytest.raises(ValueError, match="hypergradient is zero everywhere"):
        hypergradient(problem, [tf.constant([0.0])], [tf.zeros(3)], None, None, 3, 0.1)

"""MRBO, VRBO and stocBiO on ridge regression with a tuned L2 strength.

The optimum x* comes from the closed form (L-BFGS on Φ(x) = f(w*(x)),
written here in NumPy); every solver must reach it within a stated
tolerance, from x₀ = 1 and w₀ = 0, with mini-batches.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import optimize  # noqa: E402

from tf_dessilbi import bilevel  # noqa: E402
from tf_dessilbi.bilevel import BilevelProblem  # noqa: E402
from tf_dessilbi.bilevel import ridge  # noqa: E402

SETTINGS = {
    "stocbio": dict(outer_lr=0.5, inner_steps=5),
    "mrbo": dict(outer_lr=0.5),
    "vrbo": dict(outer_lr=0.5, period=5, inner_steps=3),
}
STEPS = {"stocbio": 300, "mrbo": 300, "vrbo": 120}
TOL_X = 0.1  # |x̄ − x*|, x̄ the mean of the last third of the iterates (x* ≈ −0.68)
TOL_PHI = 0.01  # Φ(x̄) − Φ(x*) per group (Φ* ≈ 1.19; Φ is flat along the weak group)


def _optimum(X, t, Xv, tv, groups):
    X, t, Xv, tv = (np.asarray(a, np.float64) for a in (X, t, Xv, tv))
    k = groups.max() + 1

    def phi(x):
        a = X.T @ X / len(t) + np.diag(np.exp(x)[groups])
        w = np.linalg.solve(a, X.T @ t / len(t))
        return np.mean((Xv @ w - tv) ** 2)

    res = optimize.minimize(phi, np.zeros(k), method="Nelder-Mead",
                            options=dict(xatol=1e-6, fatol=1e-10))
    return res.x, phi


def _solver(name, groups=None, batch_size=32, x0=1.0, **overrides):
    weak = 0 if groups is None else 8
    X, t, Xv, tv = ridge.ridge_data(weak_features=weak, weak_scale=0.2)
    groups = np.zeros(16, int) if groups is None else np.asarray(groups)
    problem = ridge.ridge_problem(X, t, Xv, tv, groups=groups, batch_size=batch_size, seed=3)
    x = tf.Variable(np.full(groups.max() + 1, x0, np.float32))
    y = tf.Variable(tf.zeros(16))
    kwargs = dict(inner_lr=0.05, neumann_terms=20, neumann_eta=0.07, **SETTINGS[name])
    kwargs.update(overrides)
    solver = bilevel.SOLVERS[name](problem, [x], [y], **kwargs)
    return solver, x, y, _optimum(X, t, Xv, tv, groups)


def _tail_mean(solver, x, steps):
    history = []
    solver.run(steps, callback=lambda s, m: history.append(x.numpy().copy()))
    return np.mean(history[-(steps // 3):], axis=0)


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
def test_reaches_closed_form_optimum(name):
    solver, x, _, (x_star, _) = _solver(name)
    x_bar = _tail_mean(solver, x, STEPS[name])
    assert abs(x_bar[0] - x_star[0]) < TOL_X, (x_bar, x_star)


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
def test_per_group_strengths(name):
    # Features 8..15 have 5× weaker true weights: their group wants a larger strength.
    groups = [0] * 8 + [1] * 8
    solver, x, _, (x_star, phi) = _solver(name, groups=groups)
    assert x_star[1] > x_star[0] + 1.0  # the two optima really differ
    x_bar = _tail_mean(solver, x, STEPS[name] * 2)
    assert phi(x_bar) - phi(x_star) < TOL_PHI, (x_bar, x_star)
    assert phi(x_bar) < phi(np.full(2, x_bar.mean())) - 1e-3  # per-group beats shared
    assert x_bar[1] > x_bar[0] + 0.8, x_bar
    assert abs(x_bar[0] - x_star[0]) < 0.15, (x_bar, x_star)


def test_oracle_counts_are_exact():
    q, k = 6, 4
    s, *_ = _solver("stocbio", neumann_terms=q, inner_steps=3)
    s.run(k)
    assert s.counter.calls == {"inner_grad": 3 * k, "outer_grad": k,
                               "hvp": (q - 1) * k, "jvp": k}
    m, *_ = _solver("mrbo", neumann_terms=q)
    m.run(k)
    hyper = 1 + 2 * k  # initialization + two per step
    assert m.counter.calls == {"inner_grad": hyper, "outer_grad": hyper,
                               "hvp": (q - 1) * hyper, "jvp": hyper}
    v, *_ = _solver("vrbo", neumann_terms=q, period=3, inner_steps=2)
    v.run(k)  # refreshes at k = 0 and 3; 2(m + 1) per step
    hyper = 2 + 2 * 3 * k
    assert v.counter.calls == {"inner_grad": hyper, "outer_grad": hyper,
                               "hvp": (q - 1) * hyper, "jvp": hyper}
    # A refresh counts the whole training set (64 examples) in samples.
    assert v.counter.samples["inner_grad"] == 2 * 64 + 2 * 3 * k * 32


def test_tf_function_and_eager_agree():
    a, xa, ya, _ = _solver("mrbo", batch_size=None)
    b, xb, yb, _ = _solver("mrbo", batch_size=None, use_tf_function=False)
    a.run(3)
    b.run(3)
    np.testing.assert_allclose(xa.numpy(), xb.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ya.numpy(), yb.numpy(), rtol=1e-5, atol=1e-6)
    assert a.counter.calls == b.counter.calls


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
@pytest.mark.parametrize("arg,value", [
    ("neumann_terms", 0), ("neumann_terms", 2.5), ("outer_lr", 0.0),
    ("inner_lr", -0.1), ("neumann_eta", 0.0), ("outer_lr", float("nan")),
])
def test_bad_arguments_name_the_argument(name, arg, value):
    with pytest.raises(ValueError, match=rf"`{arg}`.*Received: {arg}="):
        _solver(name, **{arg: value})


def test_solver_specific_arguments():
    with pytest.raises(ValueError, match="`schedule_m`"):
        _solver("mrbo", schedule_m=0)
    with pytest.raises(ValueError, match="`period`"):
        _solver("vrbo", period=0)
    with pytest.raises(ValueError, match="`inner_steps`"):
        _solver("stocbio", inner_steps=0)
    X, t, Xv, tv = ridge.ridge_data()
    p = ridge.ridge_problem(X, t, Xv, tv)
    p.inner_large_sampler = None
    with pytest.raises(ValueError, match="inner_large_sampler"):
        bilevel.VRBO(p, [tf.Variable([0.0])], [tf.Variable(tf.zeros(16))])


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
def test_zero_hypergradient_everywhere_is_an_error(name):
    X, t, Xv, tv = ridge.ridge_data()
    p = ridge.ridge_problem(X, t, Xv, tv)
    # f depends on y only through 0·y: numerically zero, structurally present.
    p.outer_loss = lambda x, y, b: 0.0 * tf.reduce_sum(y[0])
    x = tf.Variable([1.0])
    y = tf.Variable(tf.zeros(16))
    solver = bilevel.SOLVERS[name](p, [x], [y], inner_lr=0.05, **SETTINGS[name])
    with pytest.raises(ValueError, match="hypergradient estimate was exactly zero"):
        solver.run(5)
    assert float(x[0]) == 1.0


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
def test_nan_oracle_raises_and_changes_nothing(name):
    solver, x, y, _ = _solver(name)
    solver.run(2)
    state = {k: [v.numpy().copy() for v in vs] for k, vs in solver._state().items()}
    counts = dict(solver.counter.calls)
    good = solver.problem.inner_loss
    poisoned = {"on": False}

    def inner(x_, y_, b):
        loss = good(x_, y_, b)
        return loss * np.float32(np.nan) if poisoned["on"] else loss

    solver.problem.inner_loss = inner
    poisoned["on"] = True
    fresh = bilevel.SOLVERS[name].__new__(bilevel.SOLVERS[name])
    fresh.__dict__.update(solver.__dict__)
    fresh._functions = {}  # retrace with the poisoned loss
    with pytest.raises(FloatingPointError, match="non-finite .* Nothing was updated"):
        fresh.step()
    for k, vs in fresh._state().items():
        for v, before in zip(vs, state[k]):
            np.testing.assert_array_equal(v.numpy(), before, err_msg=k)
    assert fresh.iterations == 2
    assert sum(fresh.counter.calls.values()) > sum(counts.values())


def test_rejects_bad_problem_and_variables():
    with pytest.raises(TypeError, match="`inner_loss` must be callable"):
        BilevelProblem(None, lambda *a: 0, lambda: 0, lambda: 0)
    X, t, Xv, tv = ridge.ridge_data()
    p = ridge.ridge_problem(X, t, Xv, tv)
    with pytest.raises(TypeError, match="`x` must"):
        bilevel.MRBO(p, [], [tf.Variable(tf.zeros(16))])
    with pytest.raises(TypeError, match="`problem` must be a BilevelProblem"):
        bilevel.MRBO(object(), [tf.Variable([0.0])], [tf.Variable(tf.zeros(16))])


@pytest.mark.parametrize("name", ["stocbio", "mrbo", "vrbo"])
def test_max_outer_step_clips_the_x_step(name):
    solver, x, _, _ = _solver(name, outer_lr=1e4, max_outer_step=0.01, batch_size=None)
    xs = [1.0]
    solver.run(3, callback=lambda s, m: xs.append(float(x[0])))
    steps = np.abs(np.diff(xs))
    # The huge outer_lr saturates the clip: each step is 0 (a zero estimate at
    # w₀ = 0) or exactly 0.01, and x does move.
    assert all(d < 1e-7 or abs(d - 0.01) < 1e-6 for d in steps), steps
    assert steps.max() == pytest.approx(0.01, abs=1e-6)
    with pytest.raises(ValueError, match="`max_outer_step`"):
        _solver(name, max_outer_step=0.0)

r"""Ridge regression with tuned L2 strengths: a bilevel problem with a closed form.

Inner and outer objectives, with one strength per feature group G_j
(one group: a single strength)::

    g(x, w) = ‖Xw − t‖² / n + Σ_j e^{x_j} ‖w_{G_j}‖²
    f(w)    = ‖X_v w − t_v‖² / n_v

so w*(x) = A(x)⁻¹ Xᵀt / n with A(x) = XᵀX/n + diag(e^{x_{j(i)}}), and

    dw*/dx_j = −A⁻¹ (e^{x_j} 1_{G_j} ⊙ w*),   dΦ/dx_j = ∇_w f(w*)ᵀ dw*/dx_j,
    ∇_w f(w) = 2 X_vᵀ (X_v w − t_v) / n_v.

`RidgeClosedForm` evaluates these in NumPy (float64) for the benchmarks;
`ridge_problem` builds the stochastic `BilevelProblem` (mini-batches drawn
without replacement; the large batches are the whole sets).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from scipy import optimize

from tf_dessilbi.bilevel.problem import BilevelProblem


class RidgeClosedForm:
    """w*(x), Φ(x) and ∇Φ(x) of the ridge problem, in NumPy."""

    def __init__(self, X, t, Xv, tv, groups: Optional[Sequence[int]] = None):
        self.X, self.t = np.asarray(X, np.float64), np.asarray(t, np.float64)
        self.Xv, self.tv = np.asarray(Xv, np.float64), np.asarray(tv, np.float64)
        d = self.X.shape[1]
        self.groups = np.zeros(d, int) if groups is None else np.asarray(groups, int)
        self.num_groups = int(self.groups.max()) + 1

    def _a(self, x):
        x = np.atleast_1d(np.asarray(x, np.float64))
        n = len(self.t)
        return self.X.T @ self.X / n + np.diag(np.exp(x[self.groups])), x

    def w_star(self, x):
        a, _ = self._a(x)
        return np.linalg.solve(a, self.X.T @ self.t / len(self.t))

    def phi(self, x) -> float:
        w = self.w_star(x)
        return float(np.mean((self.Xv @ w - self.tv) ** 2))

    def grad(self, x) -> np.ndarray:
        a, x = self._a(x)
        w = np.linalg.solve(a, self.X.T @ self.t / len(self.t))
        fw = 2.0 * self.Xv.T @ (self.Xv @ w - self.tv) / len(self.tv)
        out = np.empty(self.num_groups)
        for j in range(self.num_groups):
            dw = -np.linalg.solve(a, np.exp(x[j]) * (self.groups == j) * w)
            out[j] = fw @ dw
        return out

    def optimum(self, x0=None):
        """argmin Φ (L-BFGS-B on the closed form), and Φ there."""
        x0 = np.zeros(self.num_groups) if x0 is None else np.asarray(x0, np.float64)
        res = optimize.minimize(self.phi, x0, jac=self.grad, method="L-BFGS-B",
                                bounds=[(-10.0, 6.0)] * self.num_groups)
        return res.x, float(res.fun)


def ridge_data(n: int = 64, d: int = 16, noise: float = 1.0, scale: float = 0.25,
               seed: int = 1, weak_features: int = 0, weak_scale: float = 0.2):
    """Synthetic train/validation regression data (the tests' default problem).

    The last ``weak_features`` true weights are scaled by ``weak_scale``,
    so a per-group strength has a different optimum per group.
    """
    rng = np.random.default_rng(seed)
    w = scale * rng.normal(size=d)
    if weak_features:
        w[d - weak_features:] *= weak_scale
    X = rng.normal(size=(n, d))
    t = X @ w + noise * rng.normal(size=n)
    Xv = rng.normal(size=(n, d))
    tv = Xv @ w + noise * rng.normal(size=n)
    return [a.astype(np.float32) for a in (X, t, Xv, tv)]


def ridge_problem(X, t, Xv, tv, groups: Optional[Sequence[int]] = None,
                  batch_size: Optional[int] = None, seed: int = 0) -> BilevelProblem:
    """The ridge `BilevelProblem` with x = [log-strengths (num_groups,)], y = [w (d,)].

    Args:
        X, t, Xv, tv: training and validation data.
        groups: group index of each feature. Defaults to one group.
        batch_size: mini-batch size; `None` for full batches (deterministic).
        seed: sampling seed.
    """
    d = X.shape[1]
    groups = np.zeros(d, np.int32) if groups is None else np.asarray(groups, np.int32)
    group_ids = tf.constant(groups)
    rng = np.random.default_rng(seed)

    def inner(x, y, batch):
        xb, tb = batch
        w = y[0]
        strengths = tf.gather(tf.exp(x[0]), group_ids)
        fit = tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) - tb))
        return fit + tf.reduce_sum(strengths * tf.square(w))

    def outer(x, y, batch):
        xb, tb = batch
        return tf.reduce_mean(tf.square(tf.linalg.matvec(xb, y[0]) - tb))

    full_train = (tf.constant(X), tf.constant(t))
    full_val = (tf.constant(Xv), tf.constant(tv))

    def sampler(a, b, full):
        if batch_size is None or batch_size >= len(a):
            return lambda: full

        def draw():
            i = rng.choice(len(a), batch_size, replace=False)
            return tf.constant(a[i]), tf.constant(b[i])

        return draw

    return BilevelProblem(
        inner_loss=inner,
        outer_loss=outer,
        inner_sampler=sampler(X, t, full_train),
        outer_sampler=sampler(Xv, tv, full_val),
        inner_large_sampler=lambda: full_train,
        outer_large_sampler=lambda: full_val,
    )

"""MRBO: the momentum-based recursive bilevel optimizer (Yang, Ji & Liang 2021, Alg. 1)."""

from __future__ import annotations

import tensorflow as tf

from tf_dessilbi.bilevel.solvers import BilevelSolver
from tf_dessilbi.bilevel.solvers import _read
from tf_dessilbi.bilevel.solvers import _slots
from tf_dessilbi.bilevel.solvers import positive_number


class MRBO(BilevelSolver):
    r"""Momentum-based recursive bilevel optimizer (MRBO).

    Algorithm 1 of Yang, Ji & Liang (2021): single loop, STORM-type
    estimators u (of ∇_y g) and v (of ∇Φ), each corrected on the *same*
    sample at the current and the previous iterate::

        u₀ = ∇_y g(x₀, y₀; B),   v₀ = ∇̂Φ(x₀, y₀; ξ, ζ)
        for k = 0, 1, …:
            η_k     = κ / (m + k)^{1/3}
            x_{k+1} = x_k − γ η_k v_k
            y_{k+1} = y_k − λ η_k u_k
            α_{k+1} = c₁ η_k²,   β_{k+1} = c₂ η_k²
            u_{k+1} = ∇_y g(x_{k+1}, y_{k+1}; B)
                      + (1 − β_{k+1}) (u_k − ∇_y g(x_k, y_k; B))
            v_{k+1} = ∇̂Φ(x_{k+1}, y_{k+1}; ξ, ζ)
                      + (1 − α_{k+1}) (v_k − ∇̂Φ(x_k, y_k; ξ, ζ))

    ∇̂Φ is the Neumann estimate of `tf_dessilbi.bilevel.hypergrad` (Q terms).
    Per iteration: 2 Gc(g), 2 Gc(f), 2(Q − 1) HV(g), 2 JV(g); the
    initialization adds one of each (Q − 1 HV).

    Defaults and why: the paper's schedules with κ = m^{1/3}, i.e.
    η_k = (m / (m + k))^{1/3}, so η₀ = 1 and γ, λ are the initial step sizes
    (``outer_lr``, ``inner_lr``); α, β are clipped to ≤ 1 (the analysis needs
    c·η_k² ≤ 1, which c ≤ 1 guarantees here). c₁ = c₂ = 1 makes the first
    step plain SGD and the recursive correction take over as η_k decays.
    The authors' released code instead freezes η = 1, α = 0.99, β = 1 (its
    schedule is commented out); we keep the paper's. The paper outputs a
    uniformly drawn iterate; we keep the last one (as its experiments do).

    Args:
        problem: see `BilevelSolver`.
        x: see `BilevelSolver`.
        y: see `BilevelSolver`.
        outer_lr: γ. Defaults to `0.1`.
        inner_lr: λ. Defaults to `0.1`.
        schedule_m: m > 0 of η_k. Defaults to `8.0`.
        outer_momentum: c₁ > 0 (v). Defaults to `1.0`.
        inner_momentum: c₂ > 0 (u). Defaults to `1.0`.
        **kwargs: `BilevelSolver` arguments (``neumann_terms``, …).

    References:
        J. Yang, K. Ji, Y. Liang. Provably Faster Algorithms for Bilevel
        Optimization. NeurIPS 2021 (arXiv:2106.04692).
    """

    name = "mrbo"

    def __init__(self, problem, x, y, outer_lr: float = 0.1, inner_lr: float = 0.1,
                 schedule_m: float = 8.0, outer_momentum: float = 1.0,
                 inner_momentum: float = 1.0, **kwargs):
        super().__init__(problem, x, y, outer_lr=outer_lr, inner_lr=inner_lr, **kwargs)
        self.schedule_m = positive_number("schedule_m", schedule_m)
        self.outer_momentum = positive_number("outer_momentum", outer_momentum)
        self.inner_momentum = positive_number("inner_momentum", inner_momentum)
        self._u = _slots(self.y, "mrbo_u")
        self._v = _slots(self.x, "mrbo_v")

    def _state(self):
        return {"x": self.x, "y": self.y, "u": self._u, "v": self._v}

    def eta(self, k: int) -> float:
        """η_k = (m / (m + k))^{1/3}."""
        return (self.schedule_m / (self.schedule_m + k)) ** (1.0 / 3.0)

    def _compute(self, scalars, batches, initialize: bool):
        inner_batch, hyper_batches = batches[-1]
        x, y = _read(self.x), _read(self.y)
        checks = {}
        if initialize:  # u₀, v₀ at (x₀, y₀), committed with the first step
            u = self._grad_g(x, y, batches[0][0])
            v = self._hypergrad(x, y, batches[0][1])
            checks = {"inner gradient u0": u, "hypergradient v0": v}
        else:
            u, v = _read(self._u), _read(self._v)
        dtype = x[0].dtype
        eta = tf.cast(scalars["eta"], dtype)
        a = tf.cast(scalars["alpha"], dtype)
        b = tf.cast(scalars["beta"], dtype)
        x1 = self._outer_step(x, v, self.outer_lr * eta)
        y1 = [yi - self.inner_lr * tf.cast(eta, yi.dtype) * ui for yi, ui in zip(y, u)]
        g_new = self._grad_g(x1, y1, inner_batch)
        g_old = self._grad_g(x, y, inner_batch)
        u1 = [gn + (1.0 - tf.cast(b, gn.dtype)) * (ui - go)
              for gn, go, ui in zip(g_new, g_old, u)]
        h_new = self._hypergrad(x1, y1, hyper_batches)
        h_old = self._hypergrad(x, y, hyper_batches)
        v1 = [hn + (1.0 - a) * (vi - ho) for hn, ho, vi in zip(h_new, h_old, v)]
        checks.update({"x": x1, "y": y1, "inner gradient u": u1, "hypergradient v": v1})
        return {"x": x1, "y": y1, "u": u1, "v": v1}, checks, v

    def _step(self):
        k = self.iterations
        eta = self.eta(k)
        scalars = {
            "eta": eta,
            "alpha": min(1.0, self.outer_momentum * eta**2),
            "beta": min(1.0, self.inner_momentum * eta**2),
        }
        batches = ((self.problem.inner_sampler(), self._hyper_batches()),)
        if k == 0:
            init = (self.problem.inner_sampler(), self._hyper_batches())
            return self._execute(
                "first_step", lambda s, b: self._compute(s, b, True), scalars,
                (init,) + batches,
            )
        return self._execute(
            "step", lambda s, b: self._compute(s, b, False), scalars, batches
        )

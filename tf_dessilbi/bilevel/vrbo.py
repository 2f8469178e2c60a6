"""VRBO: the variance-reduced bilevel optimizer (Yang, Ji & Liang 2021, Alg. 2)."""

from __future__ import annotations

from tf_dessilbi.bilevel.solvers import BilevelSolver
from tf_dessilbi.bilevel.solvers import _read
from tf_dessilbi.bilevel.solvers import _slots
from tf_dessilbi.bilevel.solvers import positive_int


class VRBO(BilevelSolver):
    r"""Variance-reduced bilevel optimizer (VRBO): SARAH/SPIDER recursions.

    Algorithm 2 of Yang, Ji & Liang (2021). Every q outer iterations the
    estimators are refreshed on the large batches S₁; in between they are
    carried over and corrected recursively on small batches S₂, in the outer
    step and along an inner loop of m steps on y::

        if k mod q = 0:  u_k = ∇_y g(x_k, y_k; S₁),  v_k = ∇̂Φ(x_k, y_k; S₁)
        x_{k+1} = x_k − α v_k
        ỹ₀ = y_k
        ũ₀ = u_k + ∇_y g(x_{k+1}, ỹ₀; S₂) − ∇_y g(x_k, ỹ₀; S₂)
        ṽ₀ = v_k + ∇̂Φ(x_{k+1}, ỹ₀; S₂) − ∇̂Φ(x_k, ỹ₀; S₂)
        for t = 1 … m:
            ỹ_t = ỹ_{t−1} − β ũ_{t−1}
            ũ_t = ũ_{t−1} + ∇_y g(x_{k+1}, ỹ_t; S₂) − ∇_y g(x_{k+1}, ỹ_{t−1}; S₂)
            ṽ_t = ṽ_{t−1} + ∇̂Φ(x_{k+1}, ỹ_t; S₂) − ∇̂Φ(x_{k+1}, ỹ_{t−1}; S₂)
        y_{k+1} = ỹ_m,  u_{k+1} = ũ_m,  v_{k+1} = ṽ_m

    (fresh S₂ for each correction, the same S₂ at both points of one
    correction). The estimators always describe the iterate they are carried
    to: we end the inner loop at ỹ_m, where ũ_m and ṽ_m were evaluated,
    rather than taking one more y step with ũ_m, so that the next
    x-correction is taken at the point the estimators belong to.

    Per non-refresh iteration: 2(m + 1) Gc(g) and 2(m + 1) hypergradients
    (each 1 Gc(f), Q − 1 HV(g), 1 JV(g)); a refresh adds one Gc(g) and one
    hypergradient on S₁. Defaults: q = 5 and m = 3 (the authors' scripts use
    q = 3 and T = 10 for 20 Newsgroups; a short inner loop keeps the work
    per outer step comparable with MRBO's and stocBiO's); constant step
    sizes as in the paper's analysis.

    Args:
        problem: a `BilevelProblem` with ``inner_large_sampler`` and
            ``outer_large_sampler`` (S₁).
        x: see `BilevelSolver`.
        y: see `BilevelSolver`.
        outer_lr: α. Defaults to `0.1`.
        inner_lr: β. Defaults to `0.1`.
        period: q ≥ 1. Defaults to `5`.
        inner_steps: m ≥ 1. Defaults to `3`.
        **kwargs: `BilevelSolver` arguments (``neumann_terms``, …).

    Raises:
        ValueError: the problem has no large-batch samplers, or bad arguments.

    References:
        J. Yang, K. Ji, Y. Liang. Provably Faster Algorithms for Bilevel
        Optimization. NeurIPS 2021 (arXiv:2106.04692).
    """

    name = "vrbo"

    def __init__(self, problem, x, y, outer_lr: float = 0.1, inner_lr: float = 0.1,
                 period: int = 5, inner_steps: int = 3, **kwargs):
        super().__init__(problem, x, y, outer_lr=outer_lr, inner_lr=inner_lr, **kwargs)
        self.period = positive_int("period", period)
        self.inner_steps = positive_int("inner_steps", inner_steps)
        if problem.inner_large_sampler is None or problem.outer_large_sampler is None:
            raise ValueError(
                "VRBO needs the large batches S₁ of its periodic refresh: give the "
                "BilevelProblem inner_large_sampler and outer_large_sampler. "
                f"Received: inner_large_sampler={problem.inner_large_sampler!r}, "
                f"outer_large_sampler={problem.outer_large_sampler!r}"
            )
        self._u = _slots(self.y, "vrbo_u")
        self._v = _slots(self.x, "vrbo_v")

    def _state(self):
        return {"x": self.x, "y": self.y, "u": self._u, "v": self._v}


    def _correct(self, u, v, x_new, y_new, x_old, y_old, batch):
        inner_batch, hyper_batches = batch
        gn = self._grad_g(x_new, y_new, inner_batch)
        go = self._grad_g(x_old, y_old, inner_batch)
        hn = self._hypergrad(x_new, y_new, hyper_batches)
        ho = self._hypergrad(x_old, y_old, hyper_batches)
        u = [ui + a - b for ui, a, b in zip(u, gn, go)]
        v = [vi + a - b for vi, a, b in zip(v, hn, ho)]
        return u, v

    def _compute(self, scalars, batches, refresh: bool):
        x, y = _read(self.x), _read(self.y)
        checks = {}
        if refresh:
            inner_batch, hyper_batches = batches[0]
            batches = batches[1:]
            u = self._grad_g(x, y, inner_batch)
            v = self._hypergrad(x, y, hyper_batches)
            checks = {"inner gradient u (S1)": u, "hypergradient v (S1)": v}
        else:
            u, v = _read(self._u), _read(self._v)
        v_used = v
        x1 = self._outer_step(x, v, self.outer_lr)
        u, v = self._correct(u, v, x1, y, x, y, batches[0])
        for batch in batches[1:]:
            y_prev = y
            y = [yi - self.inner_lr * ui for yi, ui in zip(y, u)]
            u, v = self._correct(u, v, x1, y, x1, y_prev, batch)
        checks.update({"x": x1, "y": y, "inner gradient u": u, "hypergradient v": v})
        return {"x": x1, "y": y, "u": u, "v": v}, checks, v_used

    def _small_batches(self):
        return (self.problem.inner_sampler(), self._hyper_batches())

    def _step(self):
        batches = tuple(self._small_batches() for _ in range(self.inner_steps + 1))
        if self.iterations % self.period == 0:  # one atomic refresh + step
            large = (self.problem.inner_large_sampler(), self._hyper_batches(large=True))
            return self._execute(
                "refresh_step", lambda s, b: self._compute(s, b, True), {},
                (large,) + batches,
            )
        return self._execute("step", lambda s, b: self._compute(s, b, False), {}, batches)

"""The solver base and the SGD-type baseline (stocBiO).

Every solver owns its variables (x, y and its estimators) and advances them
with `step()`. A step is a `tf.function` (TensorFlow backend) that computes
*candidate* values of all of them and assigns them together only if every
checked quantity is finite: a NaN oracle raises `FloatingPointError`
naming the quantity, with x, y and the estimators unchanged. A hypergradient
that is structurally absent (f depends on x neither directly nor through g)
or exactly zero on each of the first `ZERO_CHECK_STEPS` steps raises
`ValueError` instead of silently returning the start. Batches are drawn in Python from the
problem's samplers and passed in, so tf.data iterators work and nothing
retraces while batch shapes stay the same. Step sizes that change with the
iteration are passed as tensors (no retrace either).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_dessilbi import _validate
from tf_dessilbi.bilevel import hypergrad
from tf_dessilbi.bilevel import oracles
from tf_dessilbi.bilevel.problem import BilevelProblem


def positive_number(name: str, value) -> float:
    """``value`` as a float; ValueError naming ``name`` unless finite and > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int; ValueError naming ``name`` unless an integer ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _tf_variables(name: str, variables) -> List[tf.Variable]:
    if isinstance(variables, (tf.Variable, keras.Variable)):
        variables = [variables]
    if not isinstance(variables, (list, tuple)) or not variables:
        raise TypeError(
            f"`{name}` must be a non-empty list of tf.Variable or keras.Variable. "
            f"Received: {name}={variables!r}"
        )
    out = []
    for v in variables:
        if isinstance(v, keras.Variable):
            v = v.value
        if not isinstance(v, tf.Variable) or not v.dtype.is_floating:
            raise TypeError(
                f"`{name}` must hold floating-point tf.Variable or keras.Variable. "
                f"Received an element {v!r}"
            )
        out.append(v)
    return out


def _slots(variables: Sequence[tf.Variable], tag: str) -> List[tf.Variable]:
    return [
        tf.Variable(tf.zeros_like(v), trainable=False, name=f"{tag}_{i}")
        for i, v in enumerate(variables)
    ]


def _read(variables) -> List[tf.Tensor]:
    return [tf.identity(v) for v in variables]


ZERO_CHECK_STEPS = 3


class BilevelSolver:
    """Base of the bilevel solvers: variables, atomic steps, oracle counts.

    Args:
        problem: a `BilevelProblem`.
        x: the hyperparameter variables (a list, or one variable).
        y: the inner variables (model weights).
        outer_lr: step size on x (> 0).
        inner_lr: step size on y (> 0).
        neumann_terms: Q ≥ 1 terms of the Neumann series. Defaults to `10`.
        neumann_eta: η of the Neumann series, 0 < η < 1/L_g. Defaults to
            `None`: ``inner_lr`` (both need η·L_g < 1).
        max_outer_step: if set, each coordinate of the x step is clipped to
            [−max_outer_step, max_outer_step] (the estimators are not
            touched). Not in the paper: a safeguard for problems whose
            hypergradient scale varies by orders of magnitude (the CS
            use, where it grows like β²). Defaults to `None` (no clipping).
        use_tf_function: run steps as `tf.function`s. Defaults to `True`.
        jit_compile: passed to `tf.function`. Defaults to `None`.

    Raises:
        TypeError: bad problem or variables.
        ValueError: non-positive step sizes, Q < 1.
    """

    name = "base"

    def __init__(
        self,
        problem: BilevelProblem,
        x,
        y,
        outer_lr: float,
        inner_lr: float,
        neumann_terms: int = 10,
        neumann_eta: Optional[float] = None,
        max_outer_step: Optional[float] = None,
        use_tf_function: bool = True,
        jit_compile: Optional[bool] = None,
    ):
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"`problem` must be a BilevelProblem. Received: problem={problem!r}")
        self.outer_lr = positive_number("outer_lr", outer_lr)
        self.inner_lr = positive_number("inner_lr", inner_lr)
        self.neumann_terms = positive_int("neumann_terms", neumann_terms)
        self.neumann_eta = positive_number(
            "neumann_eta", self.inner_lr if neumann_eta is None else neumann_eta
        )
        self.max_outer_step = (
            None if max_outer_step is None else positive_number("max_outer_step", max_outer_step)
        )
        self.problem = problem
        self.x = _tf_variables("x", x)
        self.y = _tf_variables("y", y)
        self.counter = oracles.OracleCounter()
        self.use_tf_function = _validate.boolean("use_tf_function", use_tf_function)
        self.jit_compile = jit_compile
        self.iterations = 0
        self._all_zero = True
        self._functions: Dict[str, Callable] = {}

    # ---------------------------------------------------------------- oracles
    def _grad_g(self, x, y, batch):
        return hypergrad.inner_grad(self.problem, x, y, batch)

    def _hypergrad(self, x, y, batches):
        outer_batch, inner_batch = batches
        return hypergrad.hypergradient(
            self.problem, x, y, outer_batch, inner_batch,
            self.neumann_terms, self.neumann_eta,
        )

    def _outer_step(self, x, direction, scale):
        """x − clip(scale · direction) (clipping only with ``max_outer_step``)."""
        out = []
        for xi, di in zip(x, direction):
            step = scale * di
            if self.max_outer_step is not None:
                step = tf.clip_by_value(step, -self.max_outer_step, self.max_outer_step)
            out.append(xi - step)
        return out

    def _hyper_batches(self, large: bool = False):
        if large:
            return (self.problem.outer_large_sampler(), self.problem.inner_large_sampler())
        return (self.problem.outer_sampler(), self.problem.inner_sampler())

    # ------------------------------------------------------------ atomic step
    def _state(self) -> Dict[str, List[tf.Variable]]:
        """Every variable a step may change, by name (``x``, ``y``, slots)."""
        return {"x": self.x, "y": self.y}

    def _function(self, key: str, compute: Callable) -> Callable:
        """A counted (tf.)function running ``compute`` and committing atomically.

        ``compute(scalars, batches) -> (new, checks, hyper)``: candidate
        values by state name, named tensors that must be finite, and the
        hypergradient estimate (zero on every one of the first steps is refused).
        """
        if key in self._functions:
            return self._functions[key]
        state = self._state()

        def body(scalars, batches, require_nonzero):
            new, checks, hyper = compute(scalars, batches)
            finite = {
                name: tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in ts])
                for name, ts in checks.items()
            }
            nonzero = tf.reduce_any(
                [tf.reduce_any(tf.not_equal(h, 0.0)) for h in hyper]
            )
            ok = tf.logical_and(
                tf.reduce_all(list(finite.values())),
                tf.logical_or(nonzero, tf.logical_not(require_nonzero)),
            )

            def commit():
                for name, values in new.items():
                    for variable, value in zip(state[name], values):
                        variable.assign(value)
                return tf.constant(True)

            committed = tf.cond(ok, commit, lambda: tf.constant(False))
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(h)) for h in hyper]))
            return {"finite": finite, "nonzero": nonzero, "committed": committed,
                    "hypergrad_norm": norm}

        fn = oracles.counted_function(
            body, self.counter, self.use_tf_function, self.jit_compile
        )
        self._functions[key] = fn
        return fn

    def _execute(self, key: str, compute: Callable, scalars: dict, batches) -> dict:
        fn = self._function(key, compute)
        scalars = {k: tf.constant(v, tf.float32) for k, v in scalars.items()}
        # The estimate may legitimately be zero at the start (e.g. y₀ = 0 in
        # ridge, where ∇ₓ∇_y g = 2eˣ y); zero on each of the first
        # ZERO_CHECK_STEPS steps means zero everywhere: refuse that last step.
        last_check = self._all_zero and self.iterations == ZERO_CHECK_STEPS - 1
        out = fn(scalars, batches, tf.constant(last_check))
        bad = [name for name, ok in out["finite"].items() if not bool(ok)]
        if bad:
            raise FloatingPointError(
                f"{type(self).__name__} step {self.iterations}: non-finite (NaN/Inf) "
                f"values in {', '.join(bad)}; the oracles (inner_loss / outer_loss "
                f"or their derivatives) returned NaN or Inf, or the step sizes "
                f"diverge. Nothing was updated: x, y and the estimators keep "
                f"their values."
            )
        if bool(out["nonzero"]):
            self._all_zero = False
        elif last_check:
            raise ValueError(
                f"{type(self).__name__}: the hypergradient estimate was exactly zero "
                f"on each of the first {ZERO_CHECK_STEPS} steps; x is still at its "
                f"start {[np.asarray(v).tolist() for v in self.x]}. "
                + hypergrad.ZERO_HYPERGRADIENT
            )
        return {"hypergrad_norm": float(out["hypergrad_norm"])}

    # ------------------------------------------------------------- public API
    def step(self) -> dict:
        """One outer iteration. Returns ``{"hypergrad_norm": ...}``.

        Raises:
            FloatingPointError: a non-finite oracle (nothing updated).
            ValueError: a hypergradient that is zero everywhere.
        """
        metrics = self._step()
        self.iterations += 1
        return metrics

    def _step(self) -> dict:
        raise NotImplementedError

    def run(self, num_steps: int, callback: Optional[Callable] = None) -> oracles.OracleCounter:
        """``num_steps`` outer iterations; ``callback(solver, metrics)`` after each."""
        positive_int("num_steps", num_steps, minimum=0)
        for _ in range(num_steps):
            metrics = self.step()
            if callback is not None:
                callback(self, metrics)
        return self.counter


class StocBiO(BilevelSolver):
    """The SGD-type baseline: stochastic AID (stocBiO, Ji, Yang & Liang 2021).

    Each outer iteration k (y warm-started from the previous one)::

        y ← y − β ∇_y g(x_k, y; B_t)            t = 1 … T   (T Gc(g) calls)
        x_{k+1} = x_k − α ∇̂Φ(x_k, y; ξ, ζ)       (Neumann, Q − 1 HV + 1 JV)

    Args:
        problem: see `BilevelSolver`.
        x: see `BilevelSolver`.
        y: see `BilevelSolver`.
        outer_lr: α. Defaults to `0.1`.
        inner_lr: β. Defaults to `0.1`.
        inner_steps: T ≥ 1. Defaults to `10` (the authors' ``--T``).
        **kwargs: `BilevelSolver` arguments (``neumann_terms``, …).
    """

    name = "stocbio"

    def __init__(self, problem, x, y, outer_lr: float = 0.1, inner_lr: float = 0.1,
                 inner_steps: int = 10, **kwargs):
        super().__init__(problem, x, y, outer_lr=outer_lr, inner_lr=inner_lr, **kwargs)
        self.inner_steps = positive_int("inner_steps", inner_steps)

    def _compute(self, scalars, batches):
        inner_batches, hyper_batches = batches
        x, y = _read(self.x), _read(self.y)
        checks = {}
        for t, batch in enumerate(inner_batches):
            gy = self._grad_g(x, y, batch)
            y = [yi - self.inner_lr * gi for yi, gi in zip(y, gy)]
        checks["y (inner SGD)"] = y
        h = self._hypergrad(x, y, hyper_batches)
        checks["hypergradient"] = h
        x = self._outer_step(x, h, self.outer_lr)
        checks["x"] = x
        return {"x": x, "y": y}, checks, h

    def _step(self):
        inner = tuple(self.problem.inner_sampler() for _ in range(self.inner_steps))
        return self._execute("step", self._compute, {}, (inner, self._hyper_batches()))

r"""Stochastic oracles of a bilevel problem: ∇_y g and the Neumann hypergradient.

With Φ(x) = f(x, y*(x)) and ∇_y g(x, y*(x)) = 0, the implicit function
theorem gives

    ∇Φ(x) = ∇ₓf − ∇ₓ∇_y g · [∇²_y g]⁻¹ ∇_y f       (all at (x, y*(x))).

Yang, Ji & Liang (2021; after stocBiO, Ji, Yang & Liang 2021) estimate it at
the current (x, y) with the Neumann series of the inverse Hessian,
[∇²_y g]⁻¹ ≈ η Σ_{q=0}^{Q−1} (I − η∇²_y g)^q, valid for 0 < η < 1/L_g::

    p₀ = ∇_y f(x, y; ξ),   p_q = (I − η ∇²_y g(x, y; ζ)) p_{q−1},
    z  = η Σ_{q=0}^{Q−1} p_q,
    ∇̂Φ(x, y) = ∇ₓf(x, y; ξ) − ∇ₓ∇_y g(x, y; ζ) · z.

Here Q counts the terms of the sum (Q = 1 is η∇_y f alone; the papers'
index conventions may differ by one). Q terms take Q − 1 Hessian-vector
products (HV(g)) and one Jacobian-vector
product (JV(g)), both by nested `tf.GradientTape`s: ∇_y g is computed once
under a persistent outer tape and differentiated again against each
vector, so no Hessian is ever materialized. With an exact y = y*(x) the
truncation error is ‖∇ₓ∇_y g (I − η∇²_y g)^Q [∇²_y g]⁻¹ ∇_y f‖, which shrinks
geometrically, like (1 − ημ)^Q for a μ-strongly convex g.

One batch ζ serves all Q − 1 Hessian products and the Jacobian (the authors'
code does the same; the paper's analysis draws one per factor). The ∇_y g
computed inside for the products is part of HV(g)/JV(g), not counted as a
Gc(g) call. TensorFlow only.
"""

from __future__ import annotations

from typing import List

import tensorflow as tf

from tf_dessilbi.bilevel import oracles

ZERO_HYPERGRADIENT = (
    "outer_loss does not depend on the hyperparameters x, neither directly "
    "(∇ₓf) nor through the inner solution y*(x) (∇ₓ∇_y g · z): the "
    "hypergradient is zero everywhere and a solver would return its start. "
    "Check that inner_loss(x, y, batch) uses x and outer_loss uses x or y."
)


def _zeros_for_none(grads, like):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, like)]


def inner_grad(problem, x: List[tf.Tensor], y: List[tf.Tensor], batch) -> List[tf.Tensor]:
    """∇_y g(x, y; batch), one Gc(g) call. Entries of y that g ignores get zeros."""
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = problem.inner_loss(x, y, batch)
    oracles.record("inner_grad", batch)
    return _zeros_for_none(tape.gradient(loss, y), y)


def hypergradient(
    problem,
    x: List[tf.Tensor],
    y: List[tf.Tensor],
    outer_batch,
    inner_batch,
    num_terms: int,
    eta: float,
) -> List[tf.Tensor]:
    """The Neumann hypergradient estimate ∇̂Φ(x, y) (see the module docstring).

    Args:
        problem: a `BilevelProblem`.
        x: hyperparameter tensors.
        y: inner-variable tensors (the current estimate of y*(x)).
        outer_batch: ξ, the batch of f.
        inner_batch: ζ, the batch of g for the Hessian and Jacobian products.
        num_terms: Q ≥ 1 terms of the Neumann series (Q − 1 HV(g) calls).
        eta: η, the Neumann step, 0 < η < 1/L_g.

    Returns:
        One tensor per entry of x.

    Raises:
        ValueError: the hypergradient is structurally zero (f depends on x
            neither directly nor through g).
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        tape.watch(y)
        f = problem.outer_loss(x, y, outer_batch)
    fx, fy = tape.gradient(f, [x, y])
    oracles.record("outer_grad", outer_batch)
    if all(g is None for g in fx) and all(g is None for g in fy):
        raise ValueError(ZERO_HYPERGRADIENT)
    fy = _zeros_for_none(fy, y)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        outer.watch(y)
        with tf.GradientTape() as inner:
            inner.watch(y)
            g = problem.inner_loss(x, y, inner_batch)
        gy = _zeros_for_none(inner.gradient(g, y), y)
    def term(p, total):
        hp = _zeros_for_none(outer.gradient(gy, y, output_gradients=p), y)
        p = [pi - eta * hi for pi, hi in zip(p, hp)]
        return p, [ti + pi for ti, pi in zip(total, p)]

    p, total = list(fy), list(fy)
    if num_terms > 1 and not tf.executing_eagerly():
        # A graph loop: tracing cost independent of Q.
        _, p, total = tf.while_loop(
            lambda i, p, t: i < num_terms - 1,
            lambda i, p, t: (i + 1, *term(p, t)),
            (tf.constant(0), p, total),
        )
    else:
        for _ in range(1, num_terms):
            p, total = term(p, total)
    for _ in range(1, num_terms):
        oracles.record("hvp", inner_batch)
    z = [eta * t for t in total]
    cross = outer.gradient(gy, x, output_gradients=z)
    oracles.record("jvp", inner_batch)
    if all(g is None for g in fx) and all(g is None for g in cross):
        raise ValueError(ZERO_HYPERGRADIENT)
    fx = _zeros_for_none(fx, x)
    cross = _zeros_for_none(cross, x)
    return [a - b for a, b in zip(fx, cross)]

"""Continuous Sparsification gate maths (Savarese, Silva & Maire, 2020).

Pure tensor functions in `keras.ops`, no layer code; `SparseGate` owns the
variables and calls these. With gate scores s, temperature β and initial score
s₀ the mask on a kernel W is::

    soft (search):  m = σ(β·s) / σ(s₀)
    hard (ticket):  m = 1[s > 0] / σ(s₀)      (the limit of σ(β·s) as β → ∞)
    penalty:        λ · Σ σ(β·s)
    reset:          s ← min(β·s, s₀)          (between rounds, then β ← 1)

The factor 1/σ(s₀) keeps the initial effective kernel equal to W (σ(β·s₀) =
σ(s₀) at β = 1) and must be kept in the hard mask too: a hard mask without it
rescales every kept weight by σ(s₀) (0.5 for s₀ = 0).
"""

from __future__ import annotations

import math

from keras import ops


def mask_scale(gate_init: float) -> float:
    """1/σ(s₀), the scale of both masks. ``gate_init`` is s₀."""
    return 1.0 + math.exp(-float(gate_init))


def soft_mask(scores, beta, gate_init: float = 0.0):
    """The search mask σ(β·s)/σ(s₀).

    Args:
        scores: gate scores s (any shape).
        beta: temperature β > 0 (scalar).
        gate_init: s₀. Defaults to `0.0`.

    Returns:
        A tensor shaped like `scores`, in its dtype.
    """
    scores = ops.convert_to_tensor(scores)
    beta = ops.cast(beta, scores.dtype)
    return ops.sigmoid(beta * scores) * mask_scale(gate_init)


def hard_mask(scores, gate_init: float = 0.0):
    """The ticket mask 1[s > 0]/σ(s₀), in the dtype of `scores`."""
    scores = ops.convert_to_tensor(scores)
    return ops.cast(ops.greater(scores, 0), scores.dtype) * mask_scale(gate_init)


def mask(scores, beta, ticket, gate_init: float = 0.0):
    """The soft mask in search mode (``ticket`` 0), the hard mask in ticket mode (1).

    ``ticket`` is a tensor (e.g. a non-trainable variable), so switching modes
    never retraces a compiled function.
    """
    scores = ops.convert_to_tensor(scores)
    is_ticket = ops.greater(ops.cast(ticket, scores.dtype), 0.5)
    return ops.where(
        is_ticket, hard_mask(scores, gate_init), soft_mask(scores, beta, gate_init)
    )


def penalty(scores, beta, penalty_weight):
    """The sparsity penalty λ·Σ σ(β·s) (a scalar in the dtype of `scores`).

    Its gradient with respect to s is λ·β·σ(β·s)·(1 − σ(β·s)).
    """
    scores = ops.convert_to_tensor(scores)
    beta = ops.cast(beta, scores.dtype)
    return ops.cast(penalty_weight, scores.dtype) * ops.sum(ops.sigmoid(beta * scores))


def reset_scores(scores, beta, gate_init: float = 0.0):
    """The between-rounds reset s ← min(β·s, s₀).

    With s₀ ≥ 0, closed gates (s < 0) stay closed, pushed further down by β,
    and open gates restart from s₀, the initial mask value of the next round.
    """
    scores = ops.convert_to_tensor(scores)
    beta = ops.cast(beta, scores.dtype)
    return ops.minimum(beta * scores, ops.cast(gate_init, scores.dtype))

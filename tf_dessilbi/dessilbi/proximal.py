"""Proximal maps of the sparsity penalties Ω used by DessiLBI.

Each function is pure `keras.ops` maths (no state), so it runs on every Keras
backend and inside any compiled step.

* Lasso, Ω(Γ) = ‖Γ‖₁: ``prox_λ(V) = sign(V) · max(|V| − λ, 0)``.
* Group lasso, Ω(Γ) = Σ_g ‖Γ_g‖₂: ``prox_λ(V)_g = V_g · max(0, 1 − λ / ‖V_g‖₂)``.

In Keras' kernel layouts the output unit (conv filter, dense neuron) is the
last axis, so a group is a slice ``V[..., j]`` and its norm reduces over every
other axis.
"""

from __future__ import annotations

import numbers

from keras import ops

from tf_dessilbi import _validate


def _checked(threshold):
    """A Python / NumPy threshold must be >= 0 (tensors are checked where they are set)."""
    if isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        _validate.non_negative("threshold", threshold)
    return threshold


def soft_threshold(x, threshold):
    """Elementwise soft-thresholding, the proximal map of ``threshold·‖·‖₁``.

    ``sign(x) · max(|x| − threshold, 0)``.

    Args:
        x: tensor.
        threshold: non-negative scalar or tensor broadcastable to `x`.

    Returns:
        A tensor of the shape and dtype of `x`; exactly zero where
        ``|x| ≤ threshold``.

    Raises:
        ValueError: a negative Python/NumPy ``threshold``.
    """
    x = ops.convert_to_tensor(x)
    threshold = ops.cast(_checked(threshold), x.dtype)
    return ops.sign(x) * ops.maximum(ops.abs(x) - threshold, 0.0)


def group_norms(x, axis=None):
    """Euclidean norm of each last-axis group: ``‖x[..., j]‖₂``, kept dims.

    Args:
        x: tensor of rank ≥ 1.
        axis: axes to reduce; defaults to every axis but the last.

    Returns:
        Tensor of shape ``(1, …, 1, x.shape[-1])`` (with `axis` reduced).
    """
    if axis is None:
        axis = tuple(range(len(x.shape) - 1))
    return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))


def group_soft_threshold(x, threshold, axis=None):
    """Group soft-thresholding, the proximal map of ``threshold·Σ_g ‖x_g‖₂``.

    ``x_g · max(0, 1 − threshold / ‖x_g‖₂)`` for each group ``g``. Groups
    whose norm does not exceed the threshold become exactly zero; with
    ``threshold = 0`` the map is the identity (zero groups stay zero, no NaN).

    Args:
        x: tensor.
        threshold: non-negative scalar.
        axis: axes a group spans; defaults to every axis but the last
            (one group per conv filter / dense neuron in Keras layouts).

    Returns:
        A tensor of the shape and dtype of `x`.

    Raises:
        ValueError: a negative Python/NumPy ``threshold``.
    """
    x = ops.convert_to_tensor(x)
    threshold = ops.cast(_checked(threshold), x.dtype)
    norm = group_norms(x, axis)
    above = ops.greater(norm, threshold)
    # norm > threshold ≥ 0 implies norm > 0: the division is safe where used.
    safe_norm = ops.where(above, norm, ops.ones_like(norm))
    scale = ops.where(above, 1.0 - threshold / safe_norm, ops.zeros_like(norm))
    return x * scale

"""GraSP: pruning at initialization that preserves the gradient flow.

Wang, Zhang & Grosse, "Picking winning tickets before training by
preserving gradient flow", ICLR 2020. Removing weights δ changes the
gradient norm to first order by ΔL_g(δ) ≈ 2 δᵀ H g (H the Hessian, g the
gradient of the loss); removing weight j (δ_j = −w_j) is scored

::

    S(−w) = −w ⊙ (H g)

and the weights with the *highest* scores are removed (they reduce the
gradient flow least, or increase it when negative). Following the paper's
code, the logits are divided by a temperature T (default 200) before the
loss, g is averaged over the scoring batches, and H g comes from double
backprop of z = Σ_j stop_grad(g_j) · g_j(w) on each batch (averaged):

::

    H g = ∂/∂w [ Σ_j stop_grad(g_j) · ∂L/∂w_j ]

The scoring data are sampled balanced by class (``samples_per_class``
examples of each class, ~25 in the paper; `class_balanced_batches`).
H is the Hessian with respect to the scored weights only (biases and
normalization parameters held fixed), as in the paper's code. The global
ranking (or per-layer with ``scope="layer"``) keeps the
``round((1 − sparsity) · m)`` lowest scores. TensorFlow backend.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras
import numpy as np

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi.sparse import snip


def class_balanced_batches(data, num_classes: int, samples_per_class: int = 25,
                           batch_size: int = 0, max_batches: int = 1000) -> list:
    """Draws ``samples_per_class`` examples of every class from ``data``.

    Args:
        data: ``(x, y)`` batches with integer labels (a `tf.data.Dataset`).
        num_classes: number of classes C.
        samples_per_class: examples taken per class. Defaults to `25`.
        batch_size: size of the returned batches. Defaults to `0`
            (C · samples_per_class: one batch).
        max_batches: give up after reading this many batches.

    Returns:
        A list of ``(x, y)`` NumPy batches, classes interleaved.

    Raises:
        ValueError: an empty dataset, or some class has too few examples in
            the first ``max_batches`` batches.
    """
    num_classes = _validate.integer("num_classes", num_classes, minimum=2)
    samples_per_class = _validate.positive_int("samples_per_class", samples_per_class)
    batch_size = _validate.integer("batch_size", batch_size, minimum=0)
    picked = [[] for _ in range(num_classes)]
    seen = 0
    for batch in data:
        seen += 1
        x = np.asarray(keras.ops.convert_to_numpy(batch[0]))
        y = np.asarray(keras.ops.convert_to_numpy(batch[1])).reshape(-1).astype(int)
        for xi, yi in zip(x, y):
            if 0 <= yi < num_classes and len(picked[yi]) < samples_per_class:
                picked[yi].append(xi)
        if all(len(p) == samples_per_class for p in picked) or seen >= max_batches:
            break
    if seen == 0:
        raise ValueError("class_balanced_batches() received an empty dataset.")
    short = [c for c, p in enumerate(picked) if len(p) < samples_per_class]
    if short:
        raise ValueError(
            f"class_balanced_batches(): classes {short[:10]} have fewer than "
            f"samples_per_class={samples_per_class} examples in the {seen} batches read."
        )
    order = [(c, i) for i in range(samples_per_class) for c in range(num_classes)]
    xs = np.stack([picked[c][i] for c, i in order])
    ys = np.array([c for c, _ in order], np.int32)
    size = batch_size or len(ys)
    return [(xs[i:i + size], ys[i:i + size]) for i in range(0, len(ys), size)]


def hessian_gradient_product(model: keras.Model, batches, temperature: float = 200.0,
                             loss: Optional[Callable] = None, variables=None):
    """``(g, H g)`` for the scored weights, L computed on logits / T.

    g = mean_b ∇L_b; H g = mean_b ∇_w (stop_grad(g) · ∇L_b(w)).

    Returns:
        Two lists of float64 NumPy arrays (one entry per variable).
    """
    import tensorflow as tf

    temperature = _validate.positive("temperature", temperature)
    loss = loss or snip.default_loss()
    if variables is None:
        variables = [v for _, _, v in snip.scored_weights(model, "hessian_gradient_product")]
    g = snip.loss_gradients(model, batches, loss, temperature, variables)
    g_const = [tf.constant(gi, dtype=v.dtype) for gi, v in zip(g, variables)]
    hg = [np.zeros_like(gi) for gi in g]
    for x, y in batches:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = loss(y, model(x, training=False) / temperature)
            grads = inner.gradient(value, variables)
            z = tf.add_n([
                tf.reduce_sum(gc * gr) for gc, gr in zip(g_const, grads) if gr is not None
            ])
        for total, h in zip(hg, outer.gradient(z, variables)):
            if h is not None:
                total += np.asarray(h, np.float64)
    return g, [h / len(batches) for h in hg]


def grasp_scores(model: keras.Model, batches, temperature: float = 200.0,
                 loss: Optional[Callable] = None) -> dict:
    """GraSP scores S = −w ⊙ (H g) (higher = removed first).

    Args:
        model: the model at initialization; left unchanged.
        batches: ``(x, y)`` scoring batches (see `class_balanced_batches`).
        temperature: T dividing the logits. Defaults to `200`.
        loss: ``loss(y_true, logits)``. Defaults to sparse CE from logits.

    Returns:
        ``{"<layer>/<weight>": float64 array}``, divided by |Σ S| as in the
        paper's code (the ranking is unchanged by that positive factor).
    """
    snip.check_backend("grasp_scores")
    weights = snip.scored_weights(model, "grasp_scores")
    batches = snip.take_batches(batches, 10**9, "grasp_scores")
    _, hg = hessian_gradient_product(model, batches, temperature, loss,
                                     [v for _, _, v in weights])
    raw = {
        key: -keras.ops.convert_to_numpy(v).astype(np.float64) * h
        for (key, _, v), h in zip(weights, hg)
    }
    norm = abs(sum(float(s.sum()) for s in raw.values()))
    return {k: (s / norm if norm > 0 else s) for k, s in raw.items()}


def grasp_mask(model: keras.Model, batches, sparsity: float, scope: str = "global",
               temperature: float = 200.0, loss: Optional[Callable] = None) -> masks_lib.Mask:
    """The GraSP mask: remove the highest scores, keep the lowest.

    Args:
        model: the model at initialization (left unchanged).
        batches: ``(x, y)`` scoring batches (see `class_balanced_batches`).
        sparsity: fraction of the scored weights removed, in [0, 1).
        scope: ``"global"`` or ``"layer"``. Defaults to `"global"`.
        temperature: T. Defaults to `200`.
        loss: ``loss(y_true, logits)``. Defaults to sparse CE from logits.

    Returns:
        A `tf_dessilbi.masks.Mask` over the scored weights.

    Raises:
        ValueError: a bad argument, no sparsifiable weight, no batch.
    """
    sparsity = _validate.fraction("sparsity", sparsity)
    scope = _validate.one_of("scope", scope, snip.SCOPES)
    temperature = _validate.positive("temperature", temperature)
    scores = grasp_scores(model, batches, temperature, loss)
    return masks_lib.Mask(snip.keep_highest({k: -s for k, s in scores.items()}, sparsity, scope))


def grasp_model(model: keras.Model, batches, sparsity: float, scope: str = "global",
                temperature: float = 200.0, loss: Optional[Callable] = None) -> keras.Model:
    """``mask_model(model, grasp_mask(...))``: the model to train with its GraSP mask."""
    from tf_dessilbi.layers import mask_model

    return mask_model(model, grasp_mask(model, batches, sparsity, scope, temperature, loss))


def prepare(config, model: keras.Model, data, steps_per_epoch: int) -> keras.Model:
    """CLI hook: scores the fresh model on class-balanced ``data.train`` samples.

    Reads ``config.sparse.sparsity``, ``scope``, ``temperature``,
    ``samples_per_class`` and ``score_batch_size``.
    """
    s = config.sparse
    batches = class_balanced_batches(
        data.train, data.num_classes, s.samples_per_class, s.score_batch_size
    )
    return grasp_model(model, batches, s.sparsity, s.scope, s.temperature)


def callbacks(config, model: keras.Model, steps_per_epoch: int) -> list:
    """CLI hook: none (the mask is fixed after `prepare`)."""
    return []

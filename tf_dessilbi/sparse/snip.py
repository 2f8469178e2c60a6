"""SNIP: single-shot pruning at initialization by connection sensitivity.

Lee, Ajanthan & Torr, "SNIP: Single-shot network pruning based on
connection sensitivity", ICLR 2019. With a mask c on every weight
(W_eff = c ⊙ W), the sensitivity of the loss to connection j at c = 1 is

::

    ∂L/∂c_j |_{c=1} = g_j · w_j,      g = ∂L/∂W (at initialization)
    s_j = |g_j · w_j| / Σ_k |g_k · w_k|

and the mask keeps the κ = round((1 − sparsity) · m) connections with the
largest s_j over the whole network (global top-k; ``scope="layer"``
keeps the same fraction of each layer instead). The paper scores one
mini-batch; here g is averaged over ``num_batches`` mini-batches (each the
mean loss of its batch). The network is then trained with the mask held
fixed (`tf_dessilbi.layers.MaskedLayer`).

The gradient helpers here (`take_batches`, `loss_gradients`) are shared
with GraSP (`tf_dessilbi.sparse.grasp`). TensorFlow backend.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras
import numpy as np

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import walk

SCOPES = ("global", "layer")


# ----------------------------------------------------------------- helpers
def scored_weights(model: keras.Model, what: str = "scoring") -> list:
    """``[(key, layer, variable)]`` of the weights a mask method scores.

    Those are the sparsifiable weights of the layers `mask_model` wraps
    (Dense and convolution kernels, registered custom layers).

    Raises:
        ValueError: the model has no such weight.
    """
    _validate.model(model, what)
    found = [
        (masks_lib.weight_key(layer, variable), layer, variable)
        for layer, variable, spec in walk.sparsifiable(model)
        if spec.gateable
    ]
    if not found:
        raise ValueError(
            f"{what}() found no sparsifiable weight in model {model.name!r} "
            f"(no Dense / Conv / registered layer): nothing to score."
        )
    return found


def take_batches(data, num_batches: int, what: str = "scoring") -> list:
    """The first ``num_batches`` ``(x, y)`` batches of ``data`` as a list.

    Args:
        data: a `tf.data.Dataset` (or any iterable) of ``(x, y)`` batches.
        num_batches: how many to take (fewer if ``data`` ends first).
        what: the caller's name, for messages.

    Raises:
        ValueError: ``data`` yields no batch, or a batch is not ``(x, y)``.
    """
    num_batches = _validate.positive_int("num_batches", num_batches)
    if data is None:
        raise ValueError(f"{what}() needs a dataset of (x, y) batches. Received: data=None")
    batches = []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                f"{what}() needs (x, y) batches. Received an element of type {type(batch).__name__}"
            )
        batches.append((batch[0], batch[1]))
        if len(batches) == num_batches:
            break
    if not batches:
        raise ValueError(f"{what}() received an empty dataset: no batch to score on.")
    return batches


def default_loss():
    """Sparse categorical cross-entropy on logits (the benchmarks' loss)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def check_backend(what: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{what}() computes gradients with tf.GradientTape and needs the "
            f"TensorFlow backend. Received backend {keras.backend.backend()!r}"
        )


def loss_gradients(model: keras.Model, batches, loss: Optional[Callable] = None,
                   temperature: float = 1.0, variables=None) -> list:
    """g = mean over batches of ∂L/∂W, for ``variables`` (default: the scored weights).

    L is ``loss(y, model(x) / temperature)``. The model runs in inference
    mode (dropout off, BatchNormalization on its moving statistics), so
    scoring changes no variable of the model.

    Returns:
        A list of float64 NumPy arrays, one per variable.
    """
    import tensorflow as tf

    loss = loss or default_loss()
    if variables is None:
        variables = [v for _, _, v in scored_weights(model, "loss_gradients")]
    totals = [np.zeros(tuple(v.shape), np.float64) for v in variables]
    for x, y in batches:
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False) / temperature)
        for total, grad in zip(totals, tape.gradient(value, variables)):
            if grad is not None:
                total += np.asarray(grad, np.float64)
    return [t / len(batches) for t in totals]


def keep_highest(scores: dict, sparsity: float, scope: str = "global") -> dict:
    """Boolean masks keeping the highest scores (``round((1 − sparsity) · m)``).

    The selection is `tf_dessilbi.sparse.topk.topk_masks` (shared by every
    mask method).

    Args:
        scores: ``{key: array}``.
        sparsity: fraction of entries removed, in [0, 1).
        scope: ``"global"`` (one ranking over every array) or ``"layer"``
            (each array keeps its own fraction).

    Returns:
        ``{key: bool NumPy array}``.
    """
    from tf_dessilbi.sparse import topk

    kept = topk.topk_masks(scores, 1.0 - sparsity, scope=scope)
    return {k: np.asarray(keras.ops.convert_to_numpy(m), bool) for k, m in kept.items()}


def _check_common(sparsity, scope, num_batches):
    sparsity = _validate.fraction("sparsity", sparsity)
    scope = _validate.one_of("scope", scope, SCOPES)
    num_batches = _validate.positive_int("num_batches", num_batches)
    return sparsity, scope, num_batches


# -------------------------------------------------------------------- SNIP
def snip_scores(model: keras.Model, data, num_batches: int = 1,
                loss: Optional[Callable] = None) -> dict:
    """SNIP's normalized connection sensitivities s = |g ⊙ w| / Σ|g ⊙ w|.

    Args:
        model: the (untrained) model; left unchanged.
        data: ``(x, y)`` batches (a `tf.data.Dataset` or a list).
        num_batches: mini-batches g is averaged over. Defaults to `1`.
        loss: ``loss(y_true, logits)``. Defaults to sparse CE from logits.

    Returns:
        ``{"<layer>/<weight>": float64 array shaped like the weight}``,
        summing to 1 over all entries (all zeros if every g ⊙ w is 0).

    Raises:
        ValueError: no sparsifiable weight, an empty dataset, bad ``num_batches``.
    """
    check_backend("snip_scores")
    weights = scored_weights(model, "snip_scores")
    batches = take_batches(data, num_batches, "snip_scores")
    grads = loss_gradients(model, batches, loss, variables=[v for _, _, v in weights])
    raw = {
        key: np.abs(g * keras.ops.convert_to_numpy(v).astype(np.float64))
        for (key, _, v), g in zip(weights, grads)
    }
    total = sum(float(s.sum()) for s in raw.values())
    return {k: (s / total if total > 0 else s) for k, s in raw.items()}


def snip_mask(model: keras.Model, data, sparsity: float, scope: str = "global",
              num_batches: int = 1, loss: Optional[Callable] = None) -> masks_lib.Mask:
    """The SNIP mask: keep the largest sensitivities (see the module docstring).

    Args:
        model: the model at initialization (left unchanged).
        data: ``(x, y)`` batches.
        sparsity: fraction of the scored weights removed, in [0, 1).
        scope: ``"global"`` or ``"layer"``. Defaults to `"global"`.
        num_batches: mini-batches to average g over. Defaults to `1`.
        loss: ``loss(y_true, logits)``. Defaults to sparse CE from logits.

    Returns:
        A `tf_dessilbi.masks.Mask` over the scored weights.

    Raises:
        ValueError: a bad argument, no sparsifiable weight, an empty dataset.
    """
    sparsity, scope, num_batches = _check_common(sparsity, scope, num_batches)
    scores = snip_scores(model, data, num_batches, loss)
    return masks_lib.Mask(keep_highest(scores, sparsity, scope))


def snip_model(model: keras.Model, data, sparsity: float, scope: str = "global",
               num_batches: int = 1, loss: Optional[Callable] = None) -> keras.Model:
    """``mask_model(model, snip_mask(...))``: the model to train with its fixed SNIP mask."""
    from tf_dessilbi.layers import mask_model

    mask = snip_mask(model, data, sparsity, scope, num_batches, loss)
    return mask_model(model, mask)


# -------------------------------------------------------------- CLI hook
def prepare(config, model: keras.Model, data, steps_per_epoch: int) -> keras.Model:
    """CLI hook: scores the fresh dense model on ``data.train`` and masks it.

    Reads ``config.sparse.sparsity``, ``config.sparse.scope`` and
    ``config.sparse.score_batches``.
    """
    s = config.sparse
    return snip_model(model, data.train, s.sparsity, s.scope, s.score_batches)


def callbacks(config, model: keras.Model, steps_per_epoch: int) -> list:
    """CLI hook: none (the mask is fixed after `prepare`)."""
    return []

"""RigL (Evci et al., ICML 2020): fixed-count sparse training, grow by |dense gradient|.

As `tf_dessilbi.sparse.set_.SET`, but the k weights grown in a layer are the
inactive ones with the largest |∂L/∂W_eff|, the gradient of the loss with
respect to the *effective* weight W_eff = W ⊙ M (dense: nonzero also where
M = 0), on one batch::

    drop:  the k active weights of smallest |W|,   k = round(f_t · n_active)
    grow:  the k inactive weights of largest |∂L/∂(W ⊙ M)|,   new weights = 0
    f_t = f₀/2 · (1 + cos(π t / T_end)),   every ΔT steps until T_end

Defaults: ΔT = 100, f₀ = 0.3, T_end = 75 % of training, ERK initial
densities, random initial masks. The gradient is taken in the callback, on a
batch of the updater's own ``batches``, every ΔT steps only (TensorFlow
backend); custom loops can pass it to `update_masks` instead.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from tf_dessilbi.sparse import callback as callback_lib
from tf_dessilbi.sparse import set_
from tf_dessilbi.sparse import updater as updater_lib


def effective_gradients(model, x, y, loss_fn=None) -> dict:
    """``{key: ∂L/∂(W ⊙ M)}`` for every masked weight, on the batch (x, y).

    Computed at W_eff by setting W ← W ⊙ M and M ← 1 for the duration of one
    forward/backward pass (inference mode: no BatchNorm statistics change),
    then restoring W and M exactly. TensorFlow backend.

    Args:
        model: the masked model.
        x, y: one batch.
        loss_fn: ``loss_fn(y, y_pred)``; defaults to the compiled loss
            (``model.compute_loss``).
    """
    import tensorflow as tf

    found = updater_lib.targets(model)
    saved = [(t, updater_lib.snapshot(t.weight), updater_lib.snapshot(t.mask)) for t in found]
    try:
        for t, w, m in saved:
            t.weight.assign(ops.where(m, w, ops.zeros_like(w)))
            t.mask.assign(ops.ones_like(m))
        with tf.GradientTape() as tape:
            y_pred = model(x, training=False)
            if loss_fn is not None:
                loss = loss_fn(y, y_pred)
            else:
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        grads = tape.gradient(loss, [t.weight for t in found])
    finally:
        for t, w, m in saved:
            t.weight.assign(w)
            t.mask.assign(m)
    missing = [t.key for t, g in zip(found, grads) if g is None]
    if missing:
        raise ValueError(f"The loss does not depend on the masked weights {missing[:6]}.")
    return {t.key: ops.convert_to_tensor(g) for t, g in zip(found, grads)}


class RigL(set_.SET):
    """RigL's drop/grow updater: drop smallest |W|, grow largest |∂L/∂(W ⊙ M)|.

    Args:
        end_step: T_end (RigL: 75 % of the training steps).
        batches: an iterable of ``(x, y)`` batches (e.g. a repeating
            `tf.data.Dataset`) the gradient is taken on, one batch per
            update. None: gradients must be passed to `update_masks`.
        delta_t: ΔT. Defaults to `100`.
        initial_fraction: f₀. Defaults to `0.3`.
        begin_step: Defaults to `0`.
        drop_fraction: a schedule replacing the cosine.
        loss_fn: ``loss_fn(y, y_pred)``; defaults to the compiled loss.
        seed: unused by the update (kept for the initial masks' config).
    """

    needs_gradients = True

    def __init__(self, end_step: int, batches=None, delta_t: int = 100,
                 initial_fraction: float = 0.3, begin_step: int = 0, drop_fraction=None,
                 loss_fn=None, seed: int = 0, name: Optional[str] = None):
        super().__init__(end_step, delta_t, initial_fraction, begin_step, drop_fraction, seed,
                         name=name or "RigL")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"`loss_fn` must be callable(y, y_pred). Received: loss_fn={loss_fn!r}")
        if batches is not None and not hasattr(batches, "__iter__"):
            raise TypeError(f"`batches` must be an iterable of (x, y). Received: batches={batches!r}")
        self.batches = batches
        self.loss_fn = loss_fn
        self._iterator = None

    def _next_batch(self):
        if self.batches is None:
            raise ValueError(
                "RigL needs the dense gradient: give RigL(batches=...) a dataset, or pass "
                "grads= to tf_dessilbi.sparse.update_masks()."
            )
        if self._iterator is None:
            self._iterator = iter(self.batches)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.batches)
            batch = next(self._iterator)
        return batch[0], batch[1]

    def gradients(self, model) -> dict:
        x, y = self._next_batch()
        return effective_gradients(model, x, y, self.loss_fn)

    def grow_scores(self, targets_, gradients, step: int) -> dict:
        """|∂L/∂(W ⊙ M)|."""
        if gradients is None:
            raise ValueError("RigL's grow scores need the gradients w.r.t. W ⊙ M.")
        missing = [t.key for t in targets_ if t.key not in gradients]
        if missing:
            raise ValueError(f"No gradient given for the masked weights {missing[:6]}.")
        for t in targets_:
            if tuple(ops.shape(gradients[t.key])) != tuple(t.weight.shape):
                raise ValueError(
                    f"The gradient for {t.key!r} has shape {tuple(ops.shape(gradients[t.key]))}; "
                    f"the weight {tuple(t.weight.shape)}."
                )
        return {t.key: ops.abs(gradients[t.key]) for t in targets_}


def sparsify(model: keras.Model, sparsity: float, total_steps: int, batches=None, *,
             distribution: str = "erdos_renyi_kernel", first_layer_dense: bool = False,
             end_fraction: float = 0.75, delta_t: int = 100, initial_fraction: float = 0.3,
             seed: int = 0, loss_fn=None) -> keras.Model:
    """A RigL model: masked copy, random masks at ERK (or uniform) densities, RigL attached.

    Train it with ``callbacks=[tf_dessilbi.sparse.UpdateMasks()]``.

    Args:
        model: a built Sequential / Functional model (left untouched).
        sparsity: the global target s ∈ [0, 1).
        total_steps: the training steps; T_end = end_fraction · total_steps.
        batches: the gradient batches (see `RigL`).
        distribution, first_layer_dense, seed: see `set_.sparsify`.
        end_fraction: T_end / total steps. Defaults to `0.75`.
        delta_t, initial_fraction, loss_fn: see `RigL`.
    """
    from tf_dessilbi import _validate

    total_steps = _validate.positive_int("total_steps", total_steps)
    end_fraction = _validate.real("end_fraction", end_fraction, minimum=0.0, maximum=1.0,
                                  min_open=True)
    end = max(1, int(round(end_fraction * total_steps)))
    updater = RigL(end, batches, delta_t=delta_t, initial_fraction=initial_fraction,
                   loss_fn=loss_fn, seed=seed)
    return set_.sparsify(model, sparsity, updater, distribution=distribution,
                         first_layer_dense=first_layer_dense, seed=seed)


# -- CLI hooks (methods.md) ------------------------------------------------------------
def prepare(config, model, data, steps_per_epoch: int) -> keras.Model:
    """RigL: random masks at the config's densities; gradients on batches of ``data.train``."""
    sp = set_._section(config)
    updater = set_.make_updater(config, steps_per_epoch, cls=RigL, batches=data.train)
    return set_.sparsify(model, float(sp.get("sparsity", 0.9)), updater,
                         distribution=str(sp.get("distribution", "erdos_renyi_kernel")),
                         first_layer_dense=bool(sp.get("first_layer_dense", False)),
                         seed=int(sp.get("seed", config.get("seed", 0))))


def callbacks(config, model, steps_per_epoch: int) -> list:
    """``[UpdateMasks()]`` driving the attached RigL updater."""
    return [callback_lib.UpdateMasks()]

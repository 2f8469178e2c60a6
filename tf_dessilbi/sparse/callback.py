"""Driving mask updaters: the `UpdateMasks` fit callback and `update_masks` for custom loops.

After every training step t (t = the optimizer's step count once the step
is done) each `tf_dessilbi.sparse.updater.MaskUpdater` is asked whether an
update is due and, if so, rewrites the masks of the model's `MaskedLayer`
wrappers. The masks are written in cross-replica context, once, so under a
`tf.distribute` strategy every replica holds the same mask (the mask
variable's aggregation is ``only_first_replica``); nothing is retraced (the
mask is a variable).
"""

from __future__ import annotations

import weakref
from typing import Optional

import keras
from keras import ops

from tf_dessilbi.sparse import updater as updater_lib

# Updaters that a model-wrapping function (prune_low_magnitude, rigl/set
# `sparsify`) attached to the model it returned; found by the callbacks.
_ATTACHED = weakref.WeakKeyDictionary()


def attach(model, updaters) -> None:
    """Records ``updaters`` as those driving ``model`` (see `attached`)."""
    _ATTACHED[model] = list(updaters)


def attached(model) -> list:
    """The updaters attached to ``model`` by `attach` (empty if none)."""
    return list(_ATTACHED.get(model, ()))


def _as_list(updaters) -> list:
    if isinstance(updaters, updater_lib.MaskUpdater):
        updaters = [updaters]
    updaters = list(updaters)
    for u in updaters:
        if not isinstance(u, updater_lib.MaskUpdater):
            raise TypeError(
                f"Mask updaters must be tf_dessilbi.sparse.MaskUpdater instances. Received: {u!r}"
            )
    return updaters


def _check_cross_replica() -> None:
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        raise RuntimeError(
            "update_masks() must run in cross-replica context (outside strategy.run), "
            "so that every replica gets the same mask: call it between steps of your "
            "custom loop, not inside the replicated step function."
        )


def update_masks(model, updaters, step: int, grads: Optional[dict] = None) -> list:
    """Runs every updater due at ``step`` on ``model`` (for custom training loops).

    Args:
        model: the model with `MaskedLayer` wrappers.
        updaters: a `MaskUpdater` or a list of them.
        step: the number of training steps done.
        grads: ``{key: ∂L/∂(W⊙M)}`` for updaters that need gradients
            (RigL); None lets them compute it on a batch of their own.

    Returns:
        The updaters that updated.

    Raises:
        RuntimeError: called inside ``strategy.run`` (replica context).
        TypeError / ValueError: bad updaters, or a model they do not fit
            (nothing is modified).
    """
    updaters = _as_list(updaters)
    _check_cross_replica()
    for u in updaters:  # check every binding before any update writes
        u.bind(model)
    done = []
    for u in updaters:
        if u.update(model, int(step), grads if u.needs_gradients else None):
            done.append(u)
    return done


class UpdateMasks(keras.callbacks.Callback):
    """Updates the masks of a `MaskedLayer` model during ``fit``.

    At the start of training and after every step t it runs
    ``update_masks(model, updaters, t)``. With ``steps_per_execution > 1``
    the due steps in between are caught at the next callback call.

    Args:
        updaters: a `MaskUpdater`, a list of them, or None for the ones
            attached to the model (by `tf_dessilbi.sparse.prune_low_magnitude`,
            `tf_dessilbi.sparse.rigl.sparsify`, ...).
    """

    def __init__(self, updaters=None):
        super().__init__()
        self._updaters = None if updaters is None else _as_list(updaters)
        self._epoch_start = 0
        self._last = -1
        self._done = {}  # id(updater) -> the last step it was run for (once per step)

    @property
    def updaters(self) -> list:
        if self._updaters is not None:
            return self._updaters
        found = attached(self.model) if self.model is not None else []
        if not found:
            raise ValueError(
                "UpdateMasks() found no mask updater: pass updaters=, or build the model "
                "with tf_dessilbi.sparse.prune_low_magnitude / rigl.sparsify / set_.sparsify."
            )
        return found

    def _iterations(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("UpdateMasks needs a compiled model (its optimizer counts the steps).")
        return int(ops.convert_to_numpy(optimizer.iterations))

    def on_train_begin(self, logs=None):
        updaters = self.updaters
        for u in updaters:
            u.bind(self.model)  # a model that does not fit fails before anything is done
        for u in updaters:
            u.prepare(self.model)
        start = self._iterations()
        if start < self._last:  # the step count went back (a new optimizer): start afresh
            self._done = {}
        self._last = start - 1
        self._run_until(start)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._iterations()

    def on_train_batch_end(self, batch, logs=None):
        self._run_until(self._epoch_start + int(batch) + 1)

    def _run_until(self, step: int) -> None:
        for u in self.updaters:
            done = self._done.get(id(u), -1)
            due = [t for t in range(max(self._last, done) + 1, step + 1) if u.amount(t) is not None]
            if due:
                update_masks(self.model, [u], due[-1])
                self._done[id(u)] = due[-1]
        self._last = max(self._last, step)

"""`WStarFinetune`: the last epochs of a DessiLBI run train W* on its support.

The paper's sparse model is W* = W ⊙ 1[Γ ≠ 0] (Fu et al., ICML 2020), and
the authors retrain it. Inside one training budget: from epoch ``start_epoch``
on, after every step the model is projected onto W*,

    W ← W ⊙ 1[Γ ≠ 0]   (with ``prune_bias``: the bias of every unit outside
                        the support and the γ/β of the BatchNormalization
                        channel it feeds are zeroed too, as `apply_w_star`),

so the remaining steps train exactly the weights W* keeps. By default the
coupling is switched off meanwhile (μ → `DECOUPLED_MU`): W takes plain SGD
steps and V, so supp Γ, stays fixed — the paper's retraining of the sparse
model, inside the budget. With the coupling kept, V still runs on the
support; off it W is 0 = Γ before each step, so V (V ← V + (α/μ)(W − Γ))
does not move there and no unit enters. At the end the dense W
*is* W*: evaluating the model evaluates the sparse model, and `shrink`
removes what the support left out.
"""

from __future__ import annotations

import keras
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import w_star as w_star_lib
from tf_dessilbi.masks import unwrap_optimizer


DECOUPLED_MU = 2.0 ** 40  # α/μ·(W − Γ) then moves V by ~1e-14: below float32 resolution


def is_decoupled(optimizer) -> bool:
    """Whether a `WStarFinetune` holds this optimizer's support fixed right now (μ = `DECOUPLED_MU`)."""
    return float(ops.convert_to_numpy(unwrap_optimizer(optimizer).mu)) == DECOUPLED_MU


class WStarFinetune(keras.callbacks.Callback):
    """From epoch ``start_epoch`` on, keeps the model at W* after every step.

    With ``decouple=True`` (the paper's retraining of the sparse model) the
    coupling is switched off for the fine-tune: μ is set to `DECOUPLED_MU`,
    so W takes plain (momentum) SGD steps on the loss, V and hence supp Γ
    stay where they were, and W* is retrained on that fixed support. With
    ``decouple=False`` the coupling and V keep running on the support (a
    unit can still leave it). μ is restored when training ends.

    Args:
        start_epoch: the 0-based epoch (as `fit` counts, ``initial_epoch``
            included) whose first step starts the fine-tune. With E epochs,
            ``start_epoch=E-1`` fine-tunes the last epoch.
        decouple: switch the coupling off during the fine-tune. Defaults to
            `True`.
        prune_bias: also zero the biases / BN channels of units outside the
            support (see `tf_dessilbi.apply_w_star`). Defaults to `True`.

    Raises:
        ValueError, TypeError: a bad argument; at train begin, an optimizer
            without a support (not DessiLBI).
    """

    def __init__(self, start_epoch: int, decouple: bool = True, prune_bias: bool = True):
        super().__init__()
        self.start_epoch = _validate.integer("start_epoch", start_epoch, minimum=0)
        self.decouple = _validate.boolean("decouple", decouple)
        self.prune_bias = _validate.boolean("prune_bias", prune_bias)
        self.active = False
        self._projection = None
        self._mu = None
        self._decoupled = False

    def on_train_begin(self, logs=None):
        optimizer = unwrap_optimizer(self.model.optimizer)
        if not hasattr(optimizer, "support") or not hasattr(optimizer, "mu"):
            raise ValueError(
                "WStarFinetune needs a tf_dessilbi.DessiLBI optimizer. "
                f"Received: {type(optimizer).__name__}"
            )
        self._projection = None
        self._mu = float(ops.convert_to_numpy(optimizer.mu))  # μ₀, put back at the end
        self._decoupled = False

    def _project(self):
        optimizer = unwrap_optimizer(self.model.optimizer)
        if not getattr(optimizer, "built", False):
            return
        _compat.sync_jax_state(self.model)
        if self._projection is None:
            targets = w_star_lib.w_star_targets(self.model, optimizer, self.prune_bias)

            def projection():
                for variable, value in w_star_lib.w_star_values(targets, optimizer):
                    variable.assign(value)

            self._projection = projection
            if keras.backend.backend() == "tensorflow":  # one graph: ~2 ms, not ~12 ms eager
                import tensorflow as tf

                self._projection = tf.function(self._projection)
        self._projection()

    def on_epoch_begin(self, epoch, logs=None):
        self.active = epoch >= self.start_epoch
        if not self.active:
            return
        self._project()
        optimizer = unwrap_optimizer(self.model.optimizer)
        if self.decouple and not self._decoupled:
            optimizer.mu.assign(DECOUPLED_MU)
            self._decoupled = True

    def on_train_batch_end(self, batch, logs=None):
        if self.active:
            self._project()

    def on_train_end(self, logs=None):
        if self._decoupled:
            _compat.sync_jax_state(self.model)
            unwrap_optimizer(self.model.optimizer).mu.assign(self._mu)
            self._decoupled = False

    def get_config(self):
        return {"start_epoch": self.start_epoch, "decouple": self.decouple,
                "prune_bias": self.prune_bias}

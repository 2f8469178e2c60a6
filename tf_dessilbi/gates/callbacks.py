"""Keras callbacks driving Continuous Sparsification gates."""

from __future__ import annotations

from typing import Optional

import keras
from absl import logging

from tf_dessilbi import _compat
from tf_dessilbi.gates import gating
from tf_dessilbi.gates import schedules



class GateTemperature(keras.callbacks.Callback):
    """Anneals the temperature β of every `SparseGate` from 1 to β_final.

    β follows the geometric path β_final^(e/(E−1)) of the authors' code (see
    `tf_dessilbi.gates.schedules`), either every step (default: the smooth path; the
    per-epoch ×β_final^(1/(E−1)) jumps were measured to drive short rounds to
    NaN) or once per epoch. Epochs are the ``epoch`` indices `fit` passes, so
    a round is one ``fit(epochs=E)`` call. β is a non-trainable variable:
    nothing retraces. The current β is added to the epoch logs as
    ``gate_beta``. On the JAX backend each update syncs the trainer state.

    Args:
        final_beta: β_final ≥ 1 (the authors use 200).
        epochs: E, epochs per round.
        steps_per_epoch: steps per epoch for the per-step path. Defaults to
            `None`: taken from `fit` (known for arrays and datasets of known
            cardinality).
        per_step: update β every step (True) or every epoch. Defaults to `True`.

    Raises:
        ValueError: bad arguments; at the start of training, a model without
            gates or an unknown number of steps per epoch.

    Example:

    ```python
    model.fit(ds, epochs=3, callbacks=[GateTemperature(200.0, epochs=3)])
    ```
    """

    def __init__(
        self,
        final_beta: float,
        epochs: int,
        steps_per_epoch: Optional[int] = None,
        per_step: bool = True,
    ):
        super().__init__()
        if not isinstance(per_step, bool):
            raise TypeError(f"`per_step` must be a bool. Received: per_step={per_step!r}")
        # Validates final_beta, epochs (and steps_per_epoch when given).
        schedules.per_epoch_beta(final_beta, epochs)
        if steps_per_epoch is not None:
            schedules.per_step_beta(final_beta, epochs, steps_per_epoch)
        self.final_beta = float(final_beta)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.per_step = per_step
        self.beta = 1.0
        self._gates = []
        self._schedule = None
        self._epoch = 0
        self._assigned = False

    def on_train_begin(self, logs=None):
        self._assigned = False
        self._gates = gating._require_gates(self.model, "GateTemperature")
        if self.per_step:
            steps = self.steps_per_epoch or (self.params or {}).get("steps")
            if not steps:
                raise ValueError(
                    "GateTemperature(per_step=True) needs the number of steps per "
                    "epoch: pass steps_per_epoch=..., or fit() with "
                    "steps_per_epoch or a dataset of known cardinality."
                )
            self._schedule = schedules.per_step_beta(self.final_beta, self.epochs, int(steps))
            self._steps = int(steps)
        else:
            self._schedule = schedules.per_epoch_beta(self.final_beta, self.epochs)

    def _set(self, beta):
        if beta == self.beta and self._assigned:
            return
        _compat.sync_jax_state(self.model)
        for gate in self._gates:
            gate.beta.assign(beta)
        self.beta = beta
        self._assigned = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if not self.per_step:
            self._set(self._schedule(epoch))
            logging.info("GateTemperature: epoch %d, beta %.4g", epoch, self.beta)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per_step:
            self._set(self._schedule(self._epoch * self._steps + batch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["gate_beta"] = self.beta

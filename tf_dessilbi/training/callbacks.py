"""The CLI's own Keras callbacks: the epoch log line and the stop on a non-finite loss."""

from __future__ import annotations

import math

import keras
import numpy as np
from absl import logging


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or weight; nothing was backed up or exported."""


def sparsity_line(model, optimizer=None) -> str:
    """``units kept 40/112, weights kept 1234/5678 (21.73%)`` (or "dense")."""
    import tf_dessilbi as tfd

    try:
        report = tfd.sparsity_report(model, optimizer)
    except (ValueError, TypeError):
        return "sparsity n/a"
    if not len(report):
        return "dense"
    return (
        f"units kept {report.units_kept}/{report.units_total}, weights kept "
        f"{report.weights_kept}/{report.weights_total} "
        f"({100 * report.weight_fraction:.2f}%)"
    )


class EpochLog(keras.callbacks.Callback):
    """Logs one line per epoch: metrics and the sparsity (units/weights kept)."""

    def __init__(self, num_epochs: int):
        super().__init__()
        self.num_epochs = num_epochs

    def on_epoch_end(self, epoch, logs=None):
        metrics = " ".join(
            f"{k} {float(v):.4f}" for k, v in (logs or {}).items() if np.ndim(v) == 0
        )
        logging.info(
            "epoch %d/%d: %s | %s", epoch + 1, self.num_epochs, metrics,
            sparsity_line(self.model),
        )


def all_finite(model) -> bool:
    """Whether every weight of `model` (and of its optimizer) is finite."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    for variable in variables:
        value = keras.ops.convert_to_numpy(variable)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            return False
    return True


def nonfinite_message(what: str, step: int, epoch: int, steps_per_epoch: int, config=None) -> str:
    """The message of a stopped run: where, and what to try."""
    hint = "lower the learning rate"
    if config is not None:
        lr = config.optimizer.learning_rate
        hint = (
            f"lower --config.optimizer.learning_rate (now {lr:g}; try {lr / 10:g}), "
            f"clip gradients (--config.optimizer.clipnorm=1.0)"
        )
        if config.optimizer.name == "dessilbi":
            hint += f" or lower κ (--config.optimizer.kappa, now {config.optimizer.kappa:g})"
    return (
        f"Training diverged: {what} at global step {step} (epoch {epoch + 1}, batch "
        f"{step - epoch * steps_per_epoch + 1}/{steps_per_epoch}). The run was stopped "
        f"before backing up or exporting the non-finite state; the last backup (if "
        f"any) is the last finite one. To fix it, {hint}."
    )


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises `NonFiniteError` at the first batch whose loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN` (which ends training normally, so
    the run goes on to back up, evaluate and export the NaN model), the error
    propagates out of ``fit``: the epoch never ends, so no backup is written;
    the CLI reports it and exits non-zero. Put it first in the callback list.

    Args:
        steps_per_epoch: batches per epoch (for the message).
        initial_epoch: the epoch training starts at (resumed runs).
        config: the run's config, to suggest values in the message.
    """

    def __init__(self, steps_per_epoch: int, initial_epoch: int = 0, config=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.config = config
        self._epoch = initial_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if not math.isfinite(loss):
            step = self._epoch * self.steps_per_epoch + batch
            raise NonFiniteError(
                nonfinite_message(f"the loss is {loss}", step, self._epoch,
                                  self.steps_per_epoch, self.config)
            )

    def on_epoch_end(self, epoch, logs=None):
        if not all_finite(self.model):  # a finite loss with NaN weights (rare)
            step = (epoch + 1) * self.steps_per_epoch - 1
            raise NonFiniteError(
                nonfinite_message("a weight is not finite", step, epoch,
                                  self.steps_per_epoch, self.config)
            )

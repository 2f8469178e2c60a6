"""The CLI's own Keras callbacks: the epoch log line, the fine-tune's start, the stop on a non-finite loss."""

from __future__ import annotations

import math

import keras
import numpy as np
from absl import logging


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or weight; nothing was backed up or exported."""


def sparsity_line(model, optimizer=None) -> str:
    """``units kept 40/112, weights kept 1234/5678 (21.73%)`` (or "dense")."""
    from tf_dessilbi.sparsity import sparsity_report

    try:
        report = sparsity_report(model, optimizer)
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


class FinetuneLog(keras.callbacks.Callback):
    """Logs once when a `WStarFinetune` fixes supp Γ: the step, the units kept, what moved.

    Placed after the fine-tune callback, it sees the start in the same hook.
    After a resume the fine-tune is re-applied at the resumed run's first
    check, with nothing to trim or add; the line then says so by its step.
    """

    def __init__(self, finetune, steps_per_epoch: int):
        super().__init__()
        self.finetune = finetune
        self.steps_per_epoch = steps_per_epoch
        self.logged = False

    def _check(self):
        ft = self.finetune
        if self.logged or ft.started_at_step is None:
            return
        self.logged = True
        from tf_dessilbi.dessilbi import support_units
        from tf_dessilbi.masks import unwrap_optimizer

        optimizer = unwrap_optimizer(self.model.optimizer)
        per_kernel = ", ".join(f"{optimizer._variable_path(v)} {int(u.sum())}/{u.size}"
                               for v, u in support_units.group_units(optimizer))
        moved = "; ".join(f"{what} {path} {units}"
                          for what, changes in (("trimmed", ft.trimmed), ("added", ft.added))
                          for path, units in changes.items())
        logging.info(
            "W* fine-tune: supp Γ fixed from step %d (epoch %.2f) on, the coupling %s; units kept: "
            "%s%s", ft.started_at_step, ft.started_at_step / self.steps_per_epoch,
            "off" if ft.decouple else "on", per_kernel or "no group-coupled kernel",
            f"; {moved}" if moved else "")

    def on_epoch_begin(self, epoch, logs=None):
        self._check()

    def on_train_batch_end(self, batch, logs=None):
        self._check()


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
            hint += f" or lower κ (--config.dessilbi.kappa, now {config.dessilbi.kappa:g})"
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

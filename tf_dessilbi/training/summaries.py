"""TensorBoard summaries of a sparse run, as a Keras callback.

`SparsitySummaries` writes, on the global step (optimizer iterations) as x axis:

* ``train/``, every ``every_steps`` steps: the running loss and accuracy Keras
  logs, the learning rate, κ/μ/λ of a DessiLBI optimizer and the gates' β;
* ``train/`` at the end of every epoch: per layer the fraction *and* the
  absolute count of units and weights in the support of Γ (or kept by the
  gates), plus the totals; histograms (optional) of the per-unit norms ‖W_g‖
  and ‖Γ_g‖ of every coupled kernel (gated layers: ‖W_g ⊙ mask‖, tagged
  ``unit_norm_masked_w``);
* ``eval/`` at the end of every epoch: every ``val_*`` metric, and the
  accuracy of W* (``eval/w_star_accuracy``) when a ``w_star_eval`` function
  is given;
* the run's config, once, as text (``config``).

Events are written with TensorFlow's low-level `tf.summary.write` and the
TensorBoard plugin metadata ("scalars", "histograms", "text"), so writing
needs only TensorFlow; reading them needs TensorBoard (``tensorboard --logdir
<workdir>/tensorboard``).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tf_dessilbi.training import path as path_lib
from tf_dessilbi.masks import unit_norms, unwrap_optimizer


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata.SerializeToString()


def write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar, under the default summary writer."""
    tf.summary.write(
        tag, tf.constant(float(value), tf.float32), step=step,
        metadata=_metadata("scalars"),
    )


def write_text(tag: str, text: str, step: int) -> None:
    """A TensorBoard text summary (markdown), under the default summary writer."""
    tf.summary.write(tag, tf.constant(text), step=step, metadata=_metadata("text"))


def histogram_buckets(values, bins: int = 30) -> np.ndarray:
    """``(bins, 3)`` rows ``[left, right, count]``, TensorBoard's histogram format.

    Non-finite values are left out. Constant values get one bucket
    ``[v, v + 1)`` for v >= 0 (so all-zero norms never show negative values).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        width = max(abs(low), 1.0) * 1e-3
        low, high = (low, low + width) if low >= 0 else (low - width, low)
        return np.array([[low, high, float(values.size)]])
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def write_histogram(tag: str, values, step: int, bins: int = 30) -> None:
    """A TensorBoard histogram of `values`, under the default summary writer."""
    tf.summary.write(
        tag, tf.constant(histogram_buckets(values, bins), tf.float64), step=step,
        metadata=_metadata("histograms"),
    )


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate now (evaluating a schedule at its step)."""
    optimizer = unwrap_optimizer(optimizer)
    lr = optimizer.learning_rate
    if callable(lr) and not isinstance(lr, tf.Variable):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


def sparsity_scalars(model: keras.Model, optimizer=None) -> dict:
    """``{tag: value}`` of per-layer unit and weight fractions kept, and totals.

    Empty for a model with neither a DessiLBI optimizer nor gates.
    """
    from tf_dessilbi.sparsity import sparsity_report

    try:
        report = sparsity_report(model, optimizer)
    except (ValueError, TypeError):  # optimizer not built yet
        return {}
    out = {}
    for row in report:
        out[f"sparsity/{row.layer}/units_kept"] = row.unit_fraction
        out[f"sparsity/{row.layer}/weights_kept"] = row.weight_fraction
        out[f"support/{row.layer}/units_kept"] = row.units_kept
        out[f"support/{row.layer}/weights_kept"] = row.weights_kept
    if len(report):
        out["sparsity/total/weights_kept"] = report.weight_fraction
        out["sparsity/total/units_kept"] = report.units_kept / max(report.units_total, 1)
        out["support/total/weights_kept"] = report.weights_kept
        out["support/total/units_kept"] = report.units_kept
    return out


def hyperparameters(model, optimizer) -> dict:
    """κ, μ, λ of a DessiLBI optimizer and β of the gates, as scalars."""
    from tf_dessilbi.gates.gating import gated_layers

    out = {}
    inner = unwrap_optimizer(optimizer)
    if hasattr(inner, "coupled_variables"):
        for name in ("kappa", "mu", "lambda_"):
            out[f"dessilbi/{name}"] = float(keras.ops.convert_to_numpy(getattr(inner, name)))
    try:
        gates = gated_layers(model)
    except (ValueError, TypeError):
        gates = []
    if gates:
        out["gates/beta"] = float(keras.ops.convert_to_numpy(gates[0].beta))
    return out


def flat_config(config) -> dict:
    """``{"optimizer.kappa": 1.0, ...}``: the config's leaves as HParams values."""
    out = {}

    def walk(d, prefix):
        for key, value in d.items():
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + key] = value
            else:
                out[prefix + key] = str(value)

    walk(config, "")
    return out


def write_hparams(config) -> bool:
    """The config in TensorBoard's HParams tab (needs the tensorboard package)."""
    try:
        from tensorboard.plugins.hparams import api as hp
    except ImportError:
        return False
    hp.hparams(flat_config(config))
    return True


class SparsitySummaries(keras.callbacks.Callback):
    """Writes per-step and per-epoch scalars, sparsity, histograms and the config.

    Args:
        logdir: the TensorBoard log folder (``<workdir>/tensorboard``).
        histograms: also write per-unit norm histograms. Defaults to `True`.
        optimizer: the optimizer to read Γ from. Defaults to the model's.
        every_steps: train scalars every this many steps (0: per epoch only).
        config: the run's config, written once as text.
        w_star_eval: a function returning ``{"accuracy", "loss"}`` of W*,
            called at the end of every epoch (DessiLBI runs).
    """

    def __init__(self, logdir: str, histograms: bool = True, optimizer=None,
                 every_steps: int = 50, config=None, w_star_eval=None, **unused):
        super().__init__()
        self.logdir = logdir
        self.histograms = histograms
        self.optimizer = optimizer
        self.every_steps = int(every_steps)
        self.config = config
        self.w_star_eval = w_star_eval
        self._writers = {}

    def _writer(self, name):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(
                os.path.join(self.logdir, name)
            )
        return self._writers[name]

    def _optimizer(self):
        return self.optimizer or self.model.optimizer

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(unwrap_optimizer(self._optimizer()).iterations))

    def on_train_begin(self, logs=None):
        if self.config is not None:
            with self._writer("train").as_default():
                text = self.config.to_json_best_effort(indent=2)
                write_text("config", "```\n" + text + "\n```", self._step())
                write_hparams(self.config)

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_steps:
            return
        step = self._step()
        if step % self.every_steps:
            return
        scalars = {k: float(keras.ops.convert_to_numpy(v)) for k, v in (logs or {}).items()
                   if np.ndim(v) == 0}
        scalars["learning_rate"] = current_learning_rate(self._optimizer())
        scalars.update(hyperparameters(self.model, self._optimizer()))
        with self._writer("train").as_default():
            for key, value in scalars.items():
                write_scalar(key, value, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        step = self._step()
        optimizer = self._optimizer()
        train, evals = {"epoch": epoch + 1}, {}
        for key, value in logs.items():
            if np.ndim(value) != 0:
                continue
            if key.startswith("val_"):
                evals[key[4:]] = float(value)
            elif not self.every_steps:
                train[key] = float(value)
        train["learning_rate"] = current_learning_rate(optimizer)
        train.update(hyperparameters(self.model, optimizer))
        train.update(sparsity_scalars(self.model, optimizer))
        if self.w_star_eval is not None:
            result = self.w_star_eval()
            evals["w_star_accuracy"] = result["accuracy"]
            evals["w_star_loss"] = result["loss"]
        with self._writer("train").as_default():
            for key, value in train.items():
                write_scalar(key, value, step)
            if self.histograms:
                self._write_histograms(optimizer, step)
        if evals:
            with self._writer("eval").as_default():
                for key, value in evals.items():
                    write_scalar(key, value, step)
        for writer in self._writers.values():
            writer.flush()

    def _write_histograms(self, optimizer, step):
        kernels = path_lib.coupled_kernels(self.model, optimizer)
        if kernels:
            for name, w, gamma in kernels:
                write_histogram(f"unit_norm_w/{name}", unit_norms(w), step)
                write_histogram(f"unit_norm_gamma/{name}", unit_norms(gamma), step)
            return
        for name, w, masked in path_lib.gated_kernels(self.model):
            write_histogram(f"unit_norm_w/{name}", unit_norms(w), step)
            write_histogram(f"unit_norm_masked_w/{name}", unit_norms(masked), step)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

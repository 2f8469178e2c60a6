"""TensorBoard summaries of a sparse run, as a Keras callback.

`SparsitySummaries` writes, every epoch, to ``<logdir>/train`` (and
``<logdir>/eval`` for ``val_*`` logs):

* scalars: every metric Keras logs (loss, accuracy, val_loss, …), the
  learning rate, κ/μ/λ of a DessiLBI optimizer, and per layer the fraction of
  units and weights in the support of Γ (or kept by the gates of a
  Continuous Sparsification model), plus the totals;
* histograms (optional): per-unit norms ‖W_g‖ and ‖Γ_g‖ of every coupled
  kernel.

Events are written with TensorFlow's low-level `tf.summary.write` and the
TensorBoard plugin metadata ("scalars", "histograms"), so writing needs only
TensorFlow (recent TensorFlow wheels no longer pull in the ``tensorboard``
package that `tf.summary.scalar` needs); reading them needs TensorBoard.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tf_dessilbi import path as path_lib
from tf_dessilbi.sparsity import sparsity_report
from tf_dessilbi.sparsity import unwrap_optimizer


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


def histogram_buckets(values, bins: int = 30) -> np.ndarray:
    """``(bins, 3)`` rows ``[left, right, count]``, TensorBoard's histogram format."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
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
    try:
        report = sparsity_report(model, optimizer)
    except ValueError:  # optimizer not built yet
        return {}
    out = {}
    for row in report:
        out[f"sparsity/{row.layer}/units_kept"] = row.unit_fraction
        out[f"sparsity/{row.layer}/weights_kept"] = row.weight_fraction
    if len(report):
        out["sparsity/total/weights_kept"] = report.weight_fraction
        out["sparsity/total/units_kept"] = report.units_kept / max(report.units_total, 1)
    return out


class SparsitySummaries(keras.callbacks.Callback):
    """Writes loss, accuracy, lr, sparsity and norm histograms to TensorBoard.

    Args:
        logdir: the TensorBoard log folder (``<workdir>/tensorboard``).
        histograms: also write per-unit norm histograms. Defaults to `True`.
        optimizer: the optimizer to read Γ from. Defaults to the model's.
    """

    def __init__(self, logdir: str, histograms: bool = True, optimizer=None):
        super().__init__()
        self.logdir = logdir
        self.histograms = histograms
        self.optimizer = optimizer
        self._writers = {}

    def _writer(self, name):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(
                os.path.join(self.logdir, name)
            )
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        step = epoch + 1
        optimizer = self.optimizer or self.model.optimizer
        train, evals = {}, {}
        for key, value in logs.items():
            if np.ndim(value) != 0:
                continue
            if key.startswith("val_"):
                evals[key[4:]] = float(value)
            else:
                train[key] = float(value)
        train["learning_rate"] = current_learning_rate(optimizer)
        inner = unwrap_optimizer(optimizer)
        for name in ("kappa", "mu", "lambda_"):
            if hasattr(inner, "coupled_variables"):
                train[f"dessilbi/{name}"] = float(
                    keras.ops.convert_to_numpy(getattr(inner, name))
                )
        train.update(sparsity_scalars(self.model, optimizer))
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
        if not kernels:
            kernels = path_lib._gated_kernels(self.model)
        for name, w, gamma in kernels:
            write_histogram(f"unit_norm_w/{name}", path_lib.unit_norms(w), step)
            write_histogram(f"unit_norm_gamma/{name}", path_lib.unit_norms(gamma), step)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

"""A distributed training loop for strategies Keras 3's `fit` cannot drive.

Keras 3 `Model.fit`/`evaluate` fail under `MultiWorkerMirroredStrategy`
with more than one worker (keras-team/keras#20585, tensorflow/tensorflow#72388:
the symbolic build reduces a distributed batch eagerly, and the per-step logs
are reduced with ``axis=0`` although they are scalars). This loop runs the
package's own per-replica step (`tf_dessilbi.make_train_step`) with
``strategy.run`` and drives ordinary Keras callbacks (progress bar, History,
`BackupAndRestore`, the summaries and path recorders), so
`tf_dessilbi.training` behaves the same with every strategy.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from tf_dessilbi import _compat
from tf_dessilbi.dessilbi.train_step import make_train_step


def evaluate(model: keras.Model, dataset, strategy, steps: Optional[int] = None) -> dict:
    """Mean loss and accuracy of `model` on `dataset`, summed over all replicas.

    Args:
        model: a classifier returning logits.
        dataset: batches of ``(images, int labels)`` (global batch size).
        strategy: the `tf.distribute.Strategy` owning the model.
        steps: batches to evaluate (None: the whole dataset).

    Returns:
        ``{"loss": float, "accuracy": float}``.
    """
    if steps:
        dataset = dataset.take(steps)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function
    def sums(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        losses = tf.cast(loss_fn(y, logits), tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float32)
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct), count])

    total = tf.zeros([3])
    for x, y in strategy.experimental_distribute_dataset(dataset):
        total += strategy.reduce("SUM", strategy.run(sums, args=(x, y)), axis=None)
    loss, correct, count = (float(v) for v in total.numpy())
    count = max(count, 1.0)
    return {"loss": loss / count, "accuracy": correct / count}


def fit(
    model: keras.Model,
    train_ds,
    eval_ds,
    epochs: int,
    steps_per_epoch: int,
    strategy,
    callbacks=(),
    eval_steps: Optional[int] = None,
    verbose: int = 1,
    jit_compile: bool = False,
    initial_epoch: int = 0,
):
    """Trains a compiled `model` for `epochs` with ``strategy.run``.

    The epoch loop starts at `initial_epoch` (a restored backup), or at
    the epoch `_compat.initial_epoch` reads when a `keras.callbacks.BackupAndRestore` has
    restored one (as `fit` does).

    Args:
        model: a model compiled inside ``strategy.scope()`` (its optimizer and
            loss are used).
        train_ds: the repeating training dataset (global batches).
        eval_ds: the evaluation dataset, evaluated after every epoch.
        epochs: last epoch (exclusive upper bound of the epoch index).
        steps_per_epoch: batches per epoch.
        strategy: the distribution strategy.
        callbacks: Keras callbacks.
        eval_steps: evaluation batches (None: all).
        verbose: 0, 1 (progress bar) or 2 (one line per epoch).
        jit_compile: compile the train step with XLA.
        initial_epoch: the first epoch to run (0-based).

    Returns:
        The `keras.callbacks.History` (``.history`` maps metric names to
        per-epoch lists).
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with strategy.scope():
        step = make_train_step(model, model.optimizer, loss_fn, jit_compile=jit_compile)

    @tf.function
    def distributed_step(iterator):
        x, y = next(iterator)
        return strategy.reduce("MEAN", strategy.run(step, args=(x, y)), axis=None)

    cbs = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0,
        model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )
    model.stop_training = False
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    cbs.on_train_begin()
    logs = {}
    for epoch in range(_compat.initial_epoch(model) or initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        total = 0.0
        for batch in range(steps_per_epoch):
            cbs.on_train_batch_begin(batch)
            loss = float(distributed_step(iterator))
            total += loss
            cbs.on_train_batch_end(batch, {"loss": loss})
        logs = {"loss": total / steps_per_epoch}
        val = evaluate(model, eval_ds, strategy, eval_steps)
        logs.update({f"val_{k}": v for k, v in val.items()})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return model.history

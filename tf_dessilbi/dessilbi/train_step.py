"""A compiled train step for custom training loops (TensorFlow backend)."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_train_step(model: keras.Model, optimizer, loss_fn, jit_compile: bool = False):
    """A `tf.function` ``step(x, y) -> loss`` doing one optimizer update.

    The step is per replica, so it can run inside ``strategy.run``: the loss
    (mean over the local batch plus ``model.losses``) is divided by the number
    of replicas in sync before differentiation, and the optimizer sums the
    gradients across replicas, which gives the gradient of the global-batch
    mean. Loss scaling (``LossScaleOptimizer``, ``loss_scale_factor``) goes
    through ``optimizer.scale_loss``.

    Args:
        model: a built Keras model.
        optimizer: a Keras optimizer (e.g. `tf_dessilbi.DessiLBI`); it is
            built here for ``model.trainable_variables`` if needed, so call
            this inside the strategy scope that owns the model.
        loss_fn: ``loss_fn(y_true, y_pred)`` returning per-example losses or
            their mean, or a `keras.losses.Loss` (its per-example ``call`` is
            used and averaged here).
        jit_compile: compile the step with XLA. Defaults to `False`.

    Returns:
        The `tf.function`. It returns the replica-local unscaled loss.
    """
    if not callable(loss_fn):
        raise TypeError(
            f"`loss_fn` must be callable(y_true, y_pred). Received: {loss_fn!r}"
        )
    if not isinstance(jit_compile, bool):
        raise TypeError(f"`jit_compile` must be a bool. Received: {jit_compile!r}")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built; build it (or call it on data) "
            "before make_train_step()."
        )
    # A keras.losses.Loss divides its reduced value by the number of replicas
    # itself; take its per-example values instead, so that scaling happens
    # exactly once below, for Keras losses and plain callables alike.
    per_example = loss_fn.call if isinstance(loss_fn, keras.losses.Loss) else loss_fn
    variables = model.trainable_variables
    if not optimizer.built:
        optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = tf.reduce_mean(tf.cast(per_example(y, y_pred), tf.float32))
            if model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return loss

    return train_step

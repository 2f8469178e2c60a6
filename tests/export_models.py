"""Small models shared by the export tests (strip, SavedModel)."""

import keras
import numpy as np
import tensorflow as tf

import tf_dessilbi


def _functional(nested: bool = False):
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.25, name="drop")(x)
    if nested:
        head = keras.Sequential(
            [keras.Input((96,)), keras.layers.Dense(12, activation="relu", name="fc")],
            name="head",
        )
        x = head(x)
    else:
        x = keras.layers.Dense(12, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="net")


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=n)
    return x, y


def dessilbi_steps(model, steps=8):
    """``steps`` DessiLBI steps (lr 0.1, μ 1, λ 0.5) of ``model`` on `_data()`; the optimizer."""
    optimizer = tf_dessilbi.DessiLBI(learning_rate=0.1, mu=1.0, lambda_=0.5)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = _data()
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return optimizer


def _dessilbi_trained(nested=False, steps=8):
    """A small model after a few DessiLBI steps, with a partial support of Γ."""
    keras.utils.set_random_seed(1)
    model = _functional(nested)
    optimizer = dessilbi_steps(model, steps)
    report = tf_dessilbi.sparsity_report(model, optimizer)
    assert 0 < report.weights_kept < report.weights_total  # a real sparse model
    return model, optimizer


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def _same_weights(before, model):
    after = _weights(model)
    return len(before) == len(after) and all(
        np.array_equal(a, b) for a, b in zip(before, after)
    )

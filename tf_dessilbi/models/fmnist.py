"""FMNIST-CNN-S: the small Fashion-MNIST CNN of the benchmarks."""

from __future__ import annotations

import keras
from keras import layers


def fmnist_cnn_s(
    input_shape=(28, 28, 1), num_classes: int = 10, name: str = "fmnist_cnn_s"
) -> keras.Model:
    """Conv16 3×3 → Conv32 3×3 → MaxPool → Conv64 3×3 → MaxPool → Dense128 → Dense10.

    All convolutions are 'same'-padded with ReLU; the output is logits.

    Args:
        input_shape: image shape (H, W, C). Defaults to `(28, 28, 1)`.
        num_classes: number of logits. Defaults to `10`.
        name: model name.

    Returns:
        An unbuilt-optimizer, built-weights functional `keras.Model`.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

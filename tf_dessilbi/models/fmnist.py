"""FMNIST-CNN-S: the small Fashion-MNIST CNN of the benchmarks."""

from __future__ import annotations

import keras
from keras import layers


def fmnist_cnn_s(
    input_shape=(28, 28, 1), num_classes: int = 10, name: str = "fmnist_cnn_s",
    filters=(16, 32, 64),
) -> keras.Model:
    """Conv16 3×3 → Conv32 3×3 → MaxPool → Conv64 3×3 → MaxPool → Dense128 → Dense10.

    All convolutions are 'same'-padded with ReLU; the output is logits.

    Args:
        input_shape: image shape (H, W, C). Defaults to `(28, 28, 1)`.
        num_classes: number of logits. Defaults to `10`.
        name: model name.
        filters: the widths of conv1, conv2, conv3. Defaults to `(16, 32, 64)`;
            narrower widths give the architecture a structured support
            leaves, to train from scratch (the "same widths" control).

    Returns:
        An unbuilt-optimizer, built-weights functional `keras.Model`.
    """
    if (not isinstance(filters, (tuple, list)) or len(filters) != 3
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters)):
        raise ValueError(f"`filters` must be 3 positive integers (conv1, conv2, conv3). "
                         f"Received: filters={filters!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(filters[0], 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(filters[1], 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(filters[2], 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

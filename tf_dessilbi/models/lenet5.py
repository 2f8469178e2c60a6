"""LeNet-5 for 28×28 digits, as in the DessiLBI authors' MNIST example."""

from __future__ import annotations

import keras
from keras import layers


def lenet5(
    input_shape=(28, 28, 1), num_classes: int = 10, name: str = "lenet5"
) -> keras.Model:
    """Conv6 5×5 → pool → Conv16 5×5 → pool → Dense120 → Dense84 → Dense10.

    'valid' convolutions with ReLU and 2×2 max pooling (28 → 24 → 12 → 8 → 4,
    so 16·4·4 = 256 features reach the first dense layer), the LeNet of the
    DessiLBI authors' MNIST example. The output is logits.

    Args:
        input_shape: image shape (H, W, C). Defaults to `(28, 28, 1)`.
        num_classes: number of logits. Defaults to `10`.
        name: model name. Defaults to `"lenet5"`.

    Returns:
        A functional `keras.Model`.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(6, 5, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

"""VGG with batch normalization for 32×32 images (CIFAR)."""

from __future__ import annotations

import keras
from keras import layers

# Filters per conv layer, "M" for 2×2 max pooling (Simonyan & Zisserman,
# configuration D), as used for CIFAR by the lottery-ticket literature.
VGG16_LAYERS = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)


def vgg16_bn(
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    weight_decay: float = 0.0,
    name: str = "vgg16_bn",
) -> keras.Model:
    """VGG-16-BN for CIFAR: 13 Conv3×3-BN-ReLU, 5 max pools, one Dense.

    After five poolings a 32×32 input is 1×1×512, which a single Dense layer
    maps to logits (the CIFAR variant of the DessiLBI lottery experiments
    and of Savarese et al.).

    Args:
        input_shape: image shape (H, W, C). Defaults to `(32, 32, 3)`.
        num_classes: number of logits. Defaults to `10`.
        weight_decay: L2 factor on conv and dense kernels (0 for none).
            Defaults to `0.0`.
        name: model name. Defaults to `"vgg16_bn"`.

    Returns:
        A functional `keras.Model`.
    """
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    conv, pool = 0, 0
    for item in VGG16_LAYERS:
        if item == "M":
            pool += 1
            x = layers.MaxPooling2D(2, name=f"pool{pool}")(x)
            continue
        conv += 1
        x = layers.Conv2D(
            item, 3, padding="same", use_bias=False, kernel_regularizer=reg,
            kernel_initializer="he_normal", name=f"conv{conv}",
        )(x)
        x = layers.BatchNormalization(name=f"bn{conv}")(x)
        x = layers.ReLU(name=f"relu{conv}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

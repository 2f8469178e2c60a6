"""ResNets: the CIFAR family (ResNet-20/56, He et al. 2016 §4.2) and ResNet-18."""

from __future__ import annotations

import keras
from keras import layers


def _conv_bn(x, filters, kernel_size, strides, reg, name, relu=True):
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=reg, name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters, strides, reg, name):
    """Two 3×3 Conv-BN, identity or 1×1 Conv-BN projection shortcut, ReLU."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, reg, f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 3, strides, reg, f"{name}_a")
    y = _conv_bn(y, filters, 3, 1, reg, f"{name}_b", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet_cifar(
    depth: int,
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    weight_decay: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """A CIFAR ResNet of depth 6n + 2: stages of n basic blocks at 16/32/64.

    Shortcuts that change shape are 1×1 Conv-BN projections (option B of
    He et al.; option A's zero-padding needs a Lambda layer, which does not
    serialize portably).

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, …).
        input_shape: image shape (H, W, C). Defaults to `(32, 32, 3)`.
        num_classes: number of logits. Defaults to `10`.
        weight_decay: L2 factor on kernels (0 for none). Defaults to `0.0`.
        name: model name. Defaults to `f"resnet{depth}"`.

    Returns:
        A functional `keras.Model`.

    Raises:
        ValueError: `depth` is not of the form 6n + 2.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, "
            f"110, ...). Received: depth={depth!r}"
        )
    blocks = (depth - 2) // 6
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_bn(inputs, 16, 3, 1, reg, "stem")
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, reg, f"s{stage + 1}b{block + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet20(input_shape=(32, 32, 3), num_classes: int = 10, weight_decay: float = 0.0):
    """ResNet-20 for CIFAR (3 blocks per stage). See `resnet_cifar`."""
    return resnet_cifar(20, input_shape, num_classes, weight_decay)


def resnet56(input_shape=(32, 32, 3), num_classes: int = 10, weight_decay: float = 0.0):
    """ResNet-56 for CIFAR (9 blocks per stage). See `resnet_cifar`."""
    return resnet_cifar(56, input_shape, num_classes, weight_decay)


def resnet18(
    input_shape=(224, 224, 3),
    num_classes: int = 1000,
    weight_decay: float = 0.0,
    name: str = "resnet18",
) -> keras.Model:
    """ResNet-18 for ImageNet: 7×7/2 stem, max pool, 4 stages × 2 basic blocks.

    Args:
        input_shape: image shape (H, W, C). Defaults to `(224, 224, 3)`.
        num_classes: number of logits. Defaults to `1000`.
        weight_decay: L2 factor on kernels (0 for none). Defaults to `0.0`.
        name: model name. Defaults to `"resnet18"`.

    Returns:
        A functional `keras.Model`.
    """
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_bn(inputs, 64, 7, 2, reg, "stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, reg, f"s{stage + 1}b{block + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

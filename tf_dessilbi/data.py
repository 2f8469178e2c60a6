"""Real Fashion-MNIST, offline, as `tf.data` pipelines.

Debian's package ``dataset-fashion-mnist`` ships the four IDX files that
`keras.datasets.fashion_mnist.load_data()` downloads into its cache. We link
them into that cache and reuse Keras' own loader (no IDX parser here).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)
INSTALL_HINT = (
    "Install Debian's package: `sudo apt-get update && sudo apt-get install "
    "dataset-fashion-mnist` (it provides /usr/share/datasets/fashion-mnist/)."
)


def _keras_cache_dir() -> str:
    from keras.src.backend import config

    base = os.path.expanduser(config.keras_home())
    if not os.access(base, os.W_OK) and not os.access(os.path.dirname(base), os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "datasets", "fashion-mnist")


def load_fashion_mnist(source_dir: Optional[str] = None):
    """Fashion-MNIST as NumPy arrays ``(x_train, y_train), (x_test, y_test)``.

    Args:
        source_dir: folder with the four ``*-ubyte.gz`` files. Defaults to
            ``$TF_DESSILBI_FASHION_MNIST_DIR`` or Debian's
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.

    Raises:
        FileNotFoundError: the files are missing; the message says how to
            install them.
    """
    import keras

    source_dir = source_dir or os.environ.get(
        "TF_DESSILBI_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR
    )
    cache = _keras_cache_dir()
    missing = [
        f for f in FASHION_MNIST_FILES
        if not os.path.exists(os.path.join(cache, f))
        and not os.path.exists(os.path.join(source_dir, f))
    ]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {source_dir!r} nor in "
            f"the Keras cache {cache!r}. {INSTALL_HINT}"
        )
    os.makedirs(cache, exist_ok=True)
    for f in FASHION_MNIST_FILES:
        target = os.path.join(cache, f)
        if not os.path.exists(target):
            os.symlink(os.path.join(source_dir, f), target)
    return keras.datasets.fashion_mnist.load_data()


def to_float_images(x: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)`` → float32 ``(N, H, W, 1)`` in [0, 1]."""
    x = x.astype("float32") / 255.0
    return x[..., None] if x.ndim == 3 else x


def fashion_mnist_datasets(
    batch_size: int = 128,
    shuffle_seed: Optional[int] = 0,
    train_limit: Optional[int] = None,
    test_limit: Optional[int] = None,
    drop_remainder: bool = False,
):
    """Train and test `tf.data.Dataset`s of Fashion-MNIST (images in [0, 1]).

    Args:
        batch_size: examples per batch.
        shuffle_seed: seed of the per-epoch shuffle of the training set
            (``None`` for a non-deterministic shuffle).
        train_limit: use only the first N training examples.
        test_limit: use only the first N test examples.
        drop_remainder: drop the last partial batch (static batch shape).

    Returns:
        ``(train_ds, test_ds)`` yielding ``(images float32 (B,28,28,1), labels int32 (B,))``.
    """
    import tensorflow as tf

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = to_float_images(x_train), to_float_images(x_test)
    y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
    if train_limit:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if test_limit:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=shuffle_seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=drop_remainder)
        .prefetch(tf.data.AUTOTUNE)
    )
    test = (
        tf.data.Dataset.from_tensor_slices((x_test, y_test))
        .batch(batch_size, drop_remainder=drop_remainder)
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, test

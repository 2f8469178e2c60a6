"""Real Fashion-MNIST, offline, as NumPy arrays and `tf.data` pipelines.

Debian's package ``dataset-fashion-mnist`` ships the four gzipped IDX files
that `keras.datasets.fashion_mnist.load_data()` downloads. They are read here
straight from the folder given (``source_dir``, else
``$TF_DESSILBI_FASHION_MNIST_DIR``, else Debian's folder): no copy or link
in Keras' cache, so the folder asked for is always the one read. A damaged
file raises an error that names it.
"""

from __future__ import annotations

import gzip
import os
import zlib
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
_EXPECTED = {  # file -> (IDX magic, shape)
    "train-labels-idx1-ubyte.gz": (2049, (60000,)),
    "train-images-idx3-ubyte.gz": (2051, (60000, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": (2049, (10000,)),
    "t10k-images-idx3-ubyte.gz": (2051, (10000, 28, 28)),
}


def resolve_source_dir(directory: Optional[str] = None) -> str:
    """The folder read: `directory`, ``$TF_DESSILBI_FASHION_MNIST_DIR`` or Debian's."""
    return directory or os.environ.get(
        "TF_DESSILBI_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR
    )


def read_idx(path: str, magic: int, shape: tuple) -> np.ndarray:
    """A gzipped IDX file (uint8 data) as an array of `shape`.

    Raises:
        ValueError: the file is not gzip, is truncated, or holds another
            array than expected; the message names the file.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"Fashion-MNIST file {path!r} is damaged ({type(e).__name__}: {e}); "
            f"reinstall it (`sudo apt-get install --reinstall dataset-fashion-mnist`) "
            f"or point TF_DESSILBI_FASHION_MNIST_DIR at a good copy."
        ) from None
    header = 4 + 4 * len(shape)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(
            f"Fashion-MNIST file {path!r} is not an IDX file with magic {magic} "
            f"(a damaged or wrong file)."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(len(shape)))
    count = int(np.prod(dims))
    if dims != tuple(shape) or len(raw) - header != count:
        raise ValueError(
            f"Fashion-MNIST file {path!r} holds {len(raw) - header} bytes for shape "
            f"{dims}; expected shape {tuple(shape)} (a truncated or wrong file)."
        )
    return np.frombuffer(raw, np.uint8, count, header).reshape(dims)


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
        ValueError: a file is damaged; the message names it.
    """
    directory = resolve_source_dir(source_dir)
    missing = [f for f in FASHION_MNIST_FILES if not os.path.exists(os.path.join(directory, f))]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {directory!r}. {INSTALL_HINT}"
        )
    arrays = [read_idx(os.path.join(directory, f), *_EXPECTED[f]) for f in FASHION_MNIST_FILES]
    y_train, x_train, y_test, x_test = arrays
    return (x_train, y_train), (x_test, y_test)


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

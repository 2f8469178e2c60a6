"""Datasets by name as `tf.data` pipelines: TFDS, offline Fashion-MNIST, synthetic.

``config.data.name`` picks the source:

* ``"synthetic"``: noise images with a bright band that depends on the
  label (learnable in a few steps), for smoke tests; no files needed.
* ``"fashion_mnist"``: the real Fashion-MNIST; offline from Debian's
  ``dataset-fashion-mnist`` files (`tf_dessilbi.data`) when ``source`` is
  ``"auto"`` or ``"local"``, through TFDS when ``"tfds"``.
* anything else: a TFDS dataset name (``"mnist"``, ``"cifar10"``,
  ``"imagenet2012"``, …) loaded with `tfds.load` from ``data_dir``.

Training pipelines shuffle, augment (``"cifar"``: pad-4 random crop and flip;
``"imagenet"``: random-resized crop and flip; ``"none"``), batch with
``drop_remainder=True`` (static shapes for XLA and tf.distribute) and
``repeat()``, so an epoch is ``steps_per_epoch`` batches; evaluation
pipelines batch without dropping. Both prefetch with ``AUTOTUNE``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf

AUGMENTATIONS = ("none", "cifar", "imagenet")
SOURCES = ("auto", "local", "tfds")


@dataclasses.dataclass
class Datasets:
    """The train and eval pipelines and what the model needs to know."""

    train: tf.data.Dataset
    eval: tf.data.Dataset
    num_train: int
    num_eval: int
    num_classes: int
    input_shape: tuple


def _normalize(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0 if image.dtype == tf.uint8 else image
    if mean is not None:
        image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return image


def cifar_augment(image: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """Zero-pad by `pad`, random crop back to the input size, random flip."""
    shape = tf.shape(image)
    image = tf.image.pad_to_bounding_box(
        image, pad, pad, shape[0] + 2 * pad, shape[1] + 2 * pad
    )
    image = tf.image.random_crop(image, shape)
    return tf.image.random_flip_left_right(image)


def imagenet_train_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Random-resized crop (area 8–100 %, aspect 3/4–4/3) to `size`, random flip."""
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    channels = image.shape[-1]
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (size, size))
    image.set_shape((size, size, channels))
    return tf.image.random_flip_left_right(image)


def imagenet_eval_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize the short side to size/0.875, then a central `size` crop."""
    channels = image.shape[-1]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / 0.875) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, size, size)
    image.set_shape((size, size, channels))
    return image


def synthetic_arrays(num: int, shape, num_classes: int, seed: int):
    """Learnable random images: class c brightens the c-th vertical band.

    Pixels are uniform noise in [0, 0.5]; the band of columns that belongs to
    the label (width ``W // num_classes``, at least one column) gets +0.5.
    """
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    x = 0.5 * rng.random((num, height, width, channels), dtype=np.float32)
    y = rng.integers(0, num_classes, size=num).astype(np.int32)
    band = max(width // num_classes, 1)
    for c in range(num_classes):
        start = (c * band) % width
        x[y == c, :, start:start + band, :] += 0.5
    return x, y


def _local_fashion_mnist():
    from tf_dessilbi import data as data_lib

    (x_train, y_train), (x_test, y_test) = data_lib.load_fashion_mnist()
    return (
        (x_train[..., None], y_train.astype(np.int32)),
        (x_test[..., None], y_test.astype(np.int32)),
        10,
    )


def _local_available(name: str) -> bool:
    from tf_dessilbi import data as data_lib

    if name != "fashion_mnist":
        return False
    source = os.environ.get(
        "TF_DESSILBI_FASHION_MNIST_DIR", data_lib.DEBIAN_FASHION_MNIST_DIR
    )
    return all(
        os.path.exists(os.path.join(source, f)) for f in data_lib.FASHION_MNIST_FILES
    )


def _tfds(data_config, split: str):
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(
        data_config.name,
        split=split,
        data_dir=data_config.data_dir or None,
        as_supervised=True,
        with_info=True,
        shuffle_files=False,
    )
    try:
        num = info.splits[split].num_examples
    except (KeyError, ValueError):  # no split metadata (e.g. mocked data)
        num = int(dataset.reduce(0, lambda count, _: count + 1))
    num_classes = info.features["label"].num_classes
    return dataset, num, num_classes


def _limit(dataset, num, limit):
    if limit and limit < num:
        return dataset.take(limit), limit
    return dataset, num


def get_datasets(
    data_config, batch_size: int, eval_batch_size: Optional[int] = None, seed: int = 0
) -> Datasets:
    """Builds the train and eval pipelines described by ``config.data``.

    Args:
        data_config: the ``config.data`` section (see the configs).
        batch_size: global training batch size.
        eval_batch_size: global evaluation batch size. Defaults to
            `batch_size`.
        seed: shuffle and augmentation seed.

    Returns:
        A `Datasets`. ``train`` repeats forever (drop-remainder batches);
        ``eval`` is one pass.

    Raises:
        ValueError: an unknown augmentation or source.
        FileNotFoundError: ``source="local"`` and the files are missing.
    """
    name = data_config.name
    augment = data_config.augment
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"config.data.augment must be one of {AUGMENTATIONS}. "
            f"Received: {augment!r}"
        )
    if data_config.source not in SOURCES:
        raise ValueError(
            f"config.data.source must be one of {SOURCES}. "
            f"Received: {data_config.source!r}"
        )
    eval_batch_size = eval_batch_size or batch_size
    use_local = name == "fashion_mnist" and (
        data_config.source == "local"
        or (data_config.source == "auto" and _local_available(name))
    )
    if name == "synthetic":
        shape = tuple(data_config.synthetic_shape)
        num_classes = data_config.synthetic_classes
        xs, ys = synthetic_arrays(data_config.synthetic_train, shape, num_classes, seed)
        xe, ye = synthetic_arrays(data_config.synthetic_eval, shape, num_classes, seed + 1)
        train = tf.data.Dataset.from_tensor_slices((xs, ys))
        evals = tf.data.Dataset.from_tensor_slices((xe, ye))
        num_train, num_eval = len(xs), len(xe)
    elif use_local:
        (xs, ys), (xe, ye), num_classes = _local_fashion_mnist()
        train = tf.data.Dataset.from_tensor_slices((xs, ys))
        evals = tf.data.Dataset.from_tensor_slices((xe, ye))
        num_train, num_eval = len(xs), len(xe)
    else:
        train, num_train, num_classes = _tfds(data_config, data_config.train_split)
        evals, num_eval, _ = _tfds(data_config, data_config.eval_split)
    train, num_train = _limit(train, num_train, data_config.train_limit)
    evals, num_eval = _limit(evals, num_eval, data_config.eval_limit)

    mean = tuple(data_config.mean) if data_config.mean else None
    std = tuple(data_config.std) if data_config.std else None
    size = data_config.image_size

    def train_map(image, label):
        image = _normalize(image, None, None)
        if augment == "cifar":
            image = cifar_augment(image)
        elif augment == "imagenet":
            image = imagenet_train_crop(image, size)
        return _normalize(image, mean, std), tf.cast(label, tf.int32)

    def eval_map(image, label):
        image = _normalize(image, None, None)
        if augment == "imagenet":
            image = imagenet_eval_crop(image, size)
        return _normalize(image, mean, std), tf.cast(label, tf.int32)

    if data_config.cache:
        train, evals = train.cache(), evals.cache()
    buffer = min(data_config.shuffle_buffer, num_train) or 1
    train = (
        train.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    evals = (
        evals.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(eval_batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    input_shape = tuple(int(d) for d in train.element_spec[0].shape[1:])
    return Datasets(train, evals, num_train, num_eval, num_classes, input_shape)

"""Datasets by name as `tf.data` pipelines: TFDS, offline Fashion-MNIST, synthetic.

``config.data.name`` picks the source:

* ``"synthetic"``: noise images with a bright band that depends on the
  label (learnable in a few steps), for smoke tests; no files needed.
* ``"fashion_mnist"``: the real Fashion-MNIST; offline from Debian's
  ``dataset-fashion-mnist`` files (`tf_dessilbi.training.data`) when ``source`` is
  ``"auto"`` or ``"local"``, through TFDS when ``"tfds"``.
* anything else: a TFDS dataset name (``"mnist"``, ``"cifar10"``,
  ``"imagenet2012"``, …) loaded with `tfds.load` from ``data_dir``.

The training stream is a sequence of passes over the training set: pass
``p`` is shuffled with the seed ``(seed, p)``, augmented (``"cifar"``: pad-4
random crop and flip; ``"imagenet"``: random-resized crop and flip;
``"none"``) with stateless random ops seeded by ``(seed, p, example)``, and
batched with ``drop_remainder=True`` (static shapes for XLA and
tf.distribute); the passes follow each other forever. So the batch at any
global step is a function of the seed and the step alone, and
``Datasets.train_from(step)`` restarts the stream exactly there (a resumed
run sees the batches the uninterrupted run saw). Evaluation pipelines batch
without dropping. Both prefetch with ``AUTOTUNE``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tf_dessilbi.training.config_checks import ConfigError

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
    train_from: Callable[[int], tf.data.Dataset] = None
    steps_per_pass: int = 0

    def __post_init__(self):
        if self.train_from is None:  # a plain pair of datasets (no exact resume)
            self.train_from = lambda step: self.train.skip(step)


def _normalize(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0 if image.dtype == tf.uint8 else image
    if mean is not None:
        image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return image


def _seeds(seed, count):
    """`count` stateless seeds ``(2,)`` derived from one ``(2,)`` seed."""
    if seed is None:
        seed = tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int64)
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count)


def cifar_augment(image: tf.Tensor, pad: int = 4, seed=None) -> tf.Tensor:
    """Zero-pad by `pad`, random crop back to the input size, random flip.

    With a ``(2,)`` integer `seed` the crop and the flip are stateless
    functions of it (reproducible); without, random.
    """
    crop_seed, flip_seed = tf.unstack(_seeds(seed, 2))
    shape = tf.shape(image)
    image = tf.image.pad_to_bounding_box(
        image, pad, pad, shape[0] + 2 * pad, shape[1] + 2 * pad
    )
    image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def imagenet_train_crop(image: tf.Tensor, size: int, seed=None) -> tf.Tensor:
    """Random-resized crop (area 8–100 %, aspect 3/4–4/3) to `size`, random flip.

    `seed`: as in `cifar_augment`.
    """
    box_seed, flip_seed = tf.unstack(_seeds(seed, 2))
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        seed=box_seed,
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
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


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


_SPLIT = re.compile(r"^(train|test)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


_SLICE = re.compile(r"^[\w/.-]+(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


def check_split(split, field: str) -> None:
    """Refuses a split slice that is malformed, beyond 100 %, or selects nothing.

    ``"test[5000:100]"`` (empty) and ``"test[:200%]"`` (clipped) are errors
    naming ``config.data.<field>``; the sizes of the split itself are checked
    when the data loads.

    Raises:
        ValueError: naming the field, the value and what is allowed.
    """
    allowed = ("a split name or a slice of one, 'name[start:stop]' in examples or "
               "percents ('train[:50000]', 'test[:10%]'), start before stop, percents in "
               "[-100, 100]")
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"config.data.{field}={split!r} is invalid: allowed {allowed}.")
    for part in split.replace(" ", "").split("+"):  # TFDS' 'train+test'
        _check_one_split(split, part, field, allowed)


def _check_one_split(split, part, field, allowed):
    match = _SLICE.match(part)
    if not match:
        raise ValueError(f"config.data.{field}={split!r} is invalid: allowed {allowed}.")
    start, start_pct, stop, stop_pct = match.groups()
    for text, pct in ((start, start_pct), (stop, stop_pct)):
        if pct and text and abs(int(text)) > 100:
            raise ValueError(f"config.data.{field}={split!r} is invalid: allowed {allowed}.")
    if start and stop and start_pct == stop_pct:
        a, b = int(start), int(stop)
        if (a >= 0) == (b >= 0) and a >= b:
            raise ValueError(f"config.data.{field}={split!r} selects no examples: allowed "
                             f"{allowed}.")


def local_split(arrays: dict, split: str, field: str):
    """``(x, y)`` of a local split: ``"train"``, ``"test"``, or a TFDS-style slice of one.

    Slices: ``"train[:50000]"``, ``"train[50000:]"``, ``"test[:10%]"`` (the
    bounds in examples, or percents with ``%``).

    Raises:
        ValueError: another split name; the message names the config field.
    """
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise ValueError(
            f"config.data.{field}={split!r} is invalid for local data: allowed "
            f"'train', 'test' or a slice of one such as 'train[:50000]' or 'test[:10%]'."
        )
    name, start, start_pct, stop, stop_pct = match.groups()
    x, y = arrays[name]
    num = len(x)

    def bound(text, pct, default):
        if not text:
            return default
        value = int(text)
        return int(round(value * num / 100)) if pct else value

    lo, hi = bound(start, start_pct, 0), bound(stop, stop_pct, num)
    if len(x[lo:hi]) == 0:
        raise ConfigError(f"config.data.{field}={split!r} selects no examples of the {num} in "
                         f"{name!r}.")
    return x[lo:hi], y[lo:hi]


def _local_fashion_mnist(data_config):
    from tf_dessilbi.training import data as data_lib

    (x_train, y_train), (x_test, y_test) = data_lib.load_fashion_mnist()
    arrays = {
        "train": (x_train[..., None], y_train.astype(np.int32)),
        "test": (x_test[..., None], y_test.astype(np.int32)),
    }
    train = local_split(arrays, data_config.train_split, "train_split")
    evals = local_split(arrays, data_config.eval_split, "eval_split")
    return train, evals, 10


def _local_available(name: str) -> bool:
    from tf_dessilbi.training import data as data_lib

    if name != "fashion_mnist":
        return False
    source = data_lib.resolve_source_dir()
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
        A `Datasets`. ``train`` repeats forever (drop-remainder batches,
        ``train_from(step)`` the same stream from a global step); ``eval`` is
        one pass.

    Raises:
        ValueError: an unknown augmentation or source.
        ValueError: also a split local data does not have, or a training
            set smaller than one batch.
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
        (xs, ys), (xe, ye), num_classes = _local_fashion_mnist(data_config)
        train = tf.data.Dataset.from_tensor_slices((xs, ys))
        evals = tf.data.Dataset.from_tensor_slices((xe, ye))
        num_train, num_eval = len(xs), len(xe)
    else:
        try:
            train, num_train, num_classes = _tfds(data_config, data_config.train_split)
            evals, num_eval, _ = _tfds(data_config, data_config.eval_split)
        except (OSError, ConnectionError) as err:
            if name != "fashion_mnist" or data_config.source != "auto":
                raise
            from tf_dessilbi.training import data as data_lib

            raise ConfigError(
                f"config.data.source='auto': no local Fashion-MNIST files in "
                f"{data_lib.resolve_source_dir()} ({', '.join(data_lib.FASHION_MNIST_FILES)}; "
                f"`apt-get install dataset-fashion-mnist` or $TF_DESSILBI_FASHION_MNIST_DIR), "
                f"and TFDS could not get it either: {type(err).__name__}: {err}") from err
    train, num_train = _limit(train, num_train, data_config.train_limit)
    evals, num_eval = _limit(evals, num_eval, data_config.eval_limit)
    if num_train < batch_size:
        raise ValueError(
            f"The training set has {num_train} examples, fewer than one batch "
            f"(batch_size={batch_size}): lower config.batch_size or raise "
            f"config.data.train_limit / the synthetic sizes."
        )

    mean = tuple(data_config.mean) if data_config.mean else None
    std = tuple(data_config.std) if data_config.std else None
    size = data_config.image_size

    def train_map(image, label, example_seed):
        image = _normalize(image, None, None)
        if augment == "cifar":
            image = cifar_augment(image, seed=example_seed)
        elif augment == "imagenet":
            image = imagenet_train_crop(image, size, seed=example_seed)
        return _normalize(image, mean, std), tf.cast(label, tf.int32)

    def eval_map(image, label):
        image = _normalize(image, None, None)
        if augment == "imagenet":
            image = imagenet_eval_crop(image, size)
        return _normalize(image, mean, std), tf.cast(label, tf.int32)

    if data_config.cache:
        train, evals = train.cache(), evals.cache()
    buffer = min(data_config.shuffle_buffer, num_train) or 1
    steps_per_pass = num_train // batch_size

    def one_pass(index):
        """Pass `index` of the training set, shuffled and augmented from (seed, index)."""
        pass_seed = tf.stack([tf.constant(seed, tf.int64), index])
        shuffle_seed = tf.random.experimental.stateless_split(pass_seed, 1)[0][0]
        # Inside this traced function only: a fixed graph-level seed, so the
        # shuffle's seed pair is (1, shuffle_seed) whatever the global seed
        # (TF cannot combine a global seed of 0 with a tensor op seed).
        tf.random.set_seed(1)
        examples = train.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        example_seeds = tf.data.Dataset.range(num_train).map(
            lambda i: tf.stack([pass_seed[0] * 1_000_003 + index, i])
        )
        return tf.data.Dataset.zip(examples, example_seeds).map(
            lambda xy, s: (xy[0], xy[1], s)
        )

    def train_from(step: int = 0) -> tf.data.Dataset:
        """The training stream from global step `step` (batch ``step`` first)."""
        first, offset = divmod(int(step), steps_per_pass)
        stream = (
            tf.data.Dataset.range(first, 2**62)
            .flat_map(
                lambda p: one_pass(p)
                .map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(batch_size, drop_remainder=True)
            )
            .skip(offset)
        )
        return stream.prefetch(tf.data.AUTOTUNE)

    evals = (
        evals.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(eval_batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    first = train_from(0)
    input_shape = tuple(int(d) for d in first.element_spec[0].shape[1:])
    return Datasets(
        first, evals, num_train, num_eval, num_classes, input_shape, train_from, steps_per_pass
    )

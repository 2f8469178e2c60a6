"""The shared accuracy protocol of the mask-method benchmarks, as code.

Every contender (dense SGD, GMP, SET, RigL, SNIP, GraSP, IMP, ...) trains
with exactly this and changes only what its method must (masks, updates):

* Fashion-MNIST (the real Debian files), 60k train / 10k test, pixels
  x/255 normalized with mean 0.2860 and std 0.3530;
* batch 128, drop_remainder (468 steps per epoch); the order of epoch e is a
  permutation seeded by (seed, e), so every contender sees the same batches
  for a given seed;
* FMNIST-CNN-S (`tf_dessilbi.models.fmnist_cnn_s`) initialized after
  ``keras.utils.set_random_seed(seed)``;
* SGD, Nesterov momentum 0.9, peak lr 0.05, linear warm-up over the first
  epoch, cosine decay to 0 at the end of E epochs (default 10), loss sparse
  categorical cross-entropy from logits; seeds 0, 1, 2.

`run_cached` makes runs resumable: a finished run's result is a JSON file in
the work dir, reused when the same run is asked for again.

Example::

    from bench import protocol
    data = protocol.load_data(seed=0, epochs=3)
    model = protocol.build_model(seed=0)
    result = protocol.train(model, data, epochs=3)   # {"accuracy", "wall_s", ...}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np

MEAN, STD = 0.2860, 0.3530
BATCH_SIZE = 128
PEAK_LR = 0.05
MOMENTUM = 0.9
EPOCHS = 10
SEEDS = (0, 1, 2)
NUM_TRAIN, NUM_TEST = 60000, 10000
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE  # 468


@dataclasses.dataclass
class Data:
    """The protocol's data for one seed.

    Attributes:
        train: a `tf.data.Dataset` of ``epochs × steps_per_epoch`` batches in
            the (seed, epoch) order (fit it with ``steps_per_epoch``).
        test: the 10k test images, batched (not shuffled).
        steps_per_epoch: 468 for the full set.
        epochs: the number of epochs ``train`` holds.
        x_train, y_train: the normalized arrays (for extra batches, e.g.
            RigL's gradient batch or SNIP's scoring batches).
    """

    train: object
    test: object
    steps_per_epoch: int
    epochs: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def batches(self, seed: int, count: Optional[int] = None):
        """A `tf.data.Dataset` of training batches in an order of its own (seeded by ``seed``).

        For the extra batches a method draws (RigL's gradients, one-shot
        scores) so the training order of ``train`` is left alone.
        """
        import tensorflow as tf

        order = np.random.RandomState(10_000 + seed).permutation(len(self.x_train))
        ds = tf.data.Dataset.from_tensor_slices((self.x_train[order], self.y_train[order]))
        ds = ds.batch(BATCH_SIZE, drop_remainder=True).repeat()
        return ds.take(count) if count else ds

    def train_from(self, epoch: int):
        """``train`` from the start of (0-based) ``epoch`` on: the batches a run rewound there sees next."""
        epoch = int(epoch)
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"`epoch` must lie in [0, {self.epochs}) (the epochs the data holds); "
                             f"received {epoch}.")
        return self.train.skip(epoch * self.steps_per_epoch)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the training set for ``epoch`` under ``seed``."""
    return np.random.RandomState([int(seed), int(epoch)]).permutation(n)


def load_data(seed: int, epochs: int = EPOCHS, train_limit: Optional[int] = None,
              test_limit: Optional[int] = None) -> Data:
    """Fashion-MNIST for one seed of the protocol.

    Args:
        seed: the seed of the per-epoch orders.
        epochs: epochs the training dataset holds.
        train_limit, test_limit: use only the first N examples (tests).
    """
    import tensorflow as tf

    from tf_dessilbi.training import data as data_lib

    (x_train, y_train), (x_test, y_test) = data_lib.load_fashion_mnist()
    if train_limit:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if test_limit:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    norm = lambda x: ((data_lib.to_float_images(x) - MEAN) / STD).astype("float32")  # noqa: E731
    x_train, x_test = norm(x_train), norm(x_test)
    y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
    steps = len(x_train) // BATCH_SIZE
    order = np.concatenate(
        [epoch_order(seed, e, len(x_train))[: steps * BATCH_SIZE] for e in range(epochs)]
    )
    xs, ys = tf.constant(x_train), tf.constant(y_train)
    train = (
        tf.data.Dataset.from_tensor_slices(order.astype("int32"))
        .batch(BATCH_SIZE, drop_remainder=True)
        .map(lambda idx: (tf.gather(xs, idx), tf.gather(ys, idx)))
        .prefetch(tf.data.AUTOTUNE)
    )
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(512)
    return Data(train, test, steps, epochs, x_train, y_train, x_test, y_test)


def lr_schedule(steps_per_epoch: int, epochs: int, peak: float = PEAK_LR, start_epoch: int = 0):
    """Linear warm-up to ``peak`` over the first epoch, cosine decay to 0 at the end.

    ``start_epoch`` > 0: the same schedule as seen by a run rewound to the end
    of epoch ``start_epoch`` (its step s is the protocol's step
    s + start_epoch · steps_per_epoch), so it trains the remaining
    ``epochs − start_epoch`` epochs of the same curve.
    """
    import keras

    start_epoch = int(start_epoch)
    if not 0 <= start_epoch < epochs:
        raise ValueError(f"`start_epoch` must lie in [0, epochs={epochs}); received {start_epoch}.")
    total = steps_per_epoch * epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total - steps_per_epoch),
        alpha=0.0,
        warmup_target=peak,
        warmup_steps=steps_per_epoch,
    )
    return _from_step(schedule, start_epoch * steps_per_epoch) if start_epoch else schedule


def _from_step(schedule, offset: int):
    """``schedule`` shifted: step s gives ``schedule(s + offset)``."""
    import keras

    class FromStep(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(keras.ops.cast(step, "int64") + offset)

        def get_config(self):
            return {"schedule": keras.saving.serialize_keras_object(schedule), "offset": offset}

    return FromStep()


def lr_at(step: int, steps_per_epoch: int, epochs: int, peak: float = PEAK_LR) -> float:
    """The learning rate of `lr_schedule` at ``step`` (NumPy, for tests)."""
    total = steps_per_epoch * epochs
    if step < steps_per_epoch:
        return peak * step / steps_per_epoch
    t = min(step - steps_per_epoch, total - steps_per_epoch) / max(1, total - steps_per_epoch)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def make_sgd(steps_per_epoch: int, epochs: int, peak: float = PEAK_LR, start_epoch: int = 0):
    """The protocol's optimizer: SGD, Nesterov momentum 0.9, `lr_schedule` (from ``start_epoch``)."""
    import keras

    return keras.optimizers.SGD(
        learning_rate=lr_schedule(steps_per_epoch, epochs, peak, start_epoch),
        momentum=MOMENTUM, nesterov=True,
    )


def build_model(seed: int):
    """FMNIST-CNN-S with weights drawn after ``keras.utils.set_random_seed(seed)``."""
    import keras

    from tf_dessilbi import models

    keras.utils.set_random_seed(int(seed))
    return models.fmnist_cnn_s()


def compile_model(model, steps_per_epoch: int, epochs: int):
    """Compiles ``model`` with the protocol's optimizer and loss."""
    import keras

    model.compile(
        optimizer=make_sgd(steps_per_epoch, epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(model, data: Data, epochs: Optional[int] = None, callbacks=(), compile: bool = True) -> dict:
    """Trains ``model`` under the protocol and evaluates it on the test set.

    Returns:
        ``{"accuracy", "loss", "wall_s", "epochs", "steps", "train_loss"}``
        (test accuracy of the model as trained: masked layers run on W ⊙ M).
    """
    epochs = data.epochs if epochs is None else int(epochs)
    if epochs > data.epochs:
        raise ValueError(f"`epochs` ({epochs}) exceeds the epochs the data holds ({data.epochs}).")
    if compile:
        compile_model(model, data.steps_per_epoch, epochs)
    t0 = time.perf_counter()
    history = model.fit(data.train, epochs=epochs, steps_per_epoch=data.steps_per_epoch,
                        callbacks=list(callbacks), verbose=0)
    wall = time.perf_counter() - t0
    loss, accuracy = model.evaluate(data.test, verbose=0)
    return {
        "accuracy": float(accuracy),
        "loss": float(loss),
        "wall_s": wall,
        "epochs": epochs,
        "steps": epochs * data.steps_per_epoch,
        "train_loss": [float(v) for v in history.history["loss"]],
    }


def run_cached(work_dir: str, name: str, fn: Callable[[], dict], reuse: bool = True) -> dict:
    """``fn()``'s result, cached as ``<work_dir>/<name>.json`` (atomic write).

    With ``reuse`` a finished run is read back instead of rerun, so an
    interrupted benchmark resumes where it stopped.
    """
    path = os.path.join(work_dir, f"{name}.json")
    if reuse and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = fn()
    os.makedirs(work_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return result

"""tf_keras and TF-MOT, imported on first use without leaking ``TF_USE_LEGACY_KERAS``."""

from __future__ import annotations

import functools
import os

import keras
from absl import logging


@functools.lru_cache(maxsize=None)
def modules():
    """``(tf_keras, tfmot)``, imported once without leaking TF_USE_LEGACY_KERAS."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "The TF-MOT bridge needs the TensorFlow Keras backend; "
            f"KERAS_BACKEND is {keras.backend.backend()!r}."
        )
    import tensorflow as tf

    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve the lazy `tf.keras` alias (to Keras 3, unless the user asked for
    # legacy Keras) before TF-MOT flips the variable: it stays as it is.
    getattr(tf.keras, "version", None)
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous
    logging.info("TF-MOT bridge: loaded tf_keras %s", tf_keras.__version__)
    return tf_keras, tfmot

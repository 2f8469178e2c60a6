"""Test-session setup shared by every test module.

Two logical CPU devices are configured before TensorFlow initializes, so
`tf.distribute.MirroredStrategy` tests can run on a CPU-only machine.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def _configure_logical_cpus():
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0],
            [tf.config.LogicalDeviceConfiguration()] * 2,
        )
    except RuntimeError:
        pass  # TensorFlow already initialized (e.g. run inside another tool).


_configure_logical_cpus()


@pytest.fixture(autouse=True)
def _clear_keras_session():
    import keras

    keras.utils.clear_session()
    yield

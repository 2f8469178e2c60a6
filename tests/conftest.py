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
    """A fresh Keras session for every test, with the last test's garbage collected.

    `keras.utils.clear_session()` runs a full `gc.collect()`, which walks every
    object the imports made (TensorFlow, JAX or PyTorch: ~0.3 s a test under
    TensorFlow, ~0.9 s under PyTorch, minutes over the suite). After each
    collection the survivors are frozen (`gc.freeze()`), so the next one walks
    only what the last test allocated; objects that die normally (refcount zero)
    are still freed at once.
    """
    import gc

    import keras

    keras.utils.clear_session(free_memory=False)
    gc.collect()
    gc.freeze()
    yield

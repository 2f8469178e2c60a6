"""The SparseGate wrapper: masks on every supported layer, penalty, modes,
serialization, the GateTemperature callback, mixed precision, and (on
TensorFlow) tracing, tf.train.Checkpoint and MirroredStrategy.

Backend-agnostic except the tests marked TensorFlow-only; tests/test_backends.py
reruns this file under JAX and PyTorch.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

from tf_dessilbi.gates.callbacks import GateTemperature
from tf_dessilbi.layers import SparseGate
from tf_dessilbi.registry import register_gated_layer

BACKEND = keras.backend.backend()
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-only feature")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype="float64")))


# (layer factory, input shape, number of trailing kernel axes indexing outputs)
LAYERS = {
    "dense": (lambda: keras.layers.Dense(4, activation="relu"), (3, 5), 1),
    "conv1d": (lambda: keras.layers.Conv1D(4, 3), (2, 7, 3), 1),
    "conv2d": (lambda: keras.layers.Conv2D(4, 3, padding="same"), (2, 6, 6, 3), 1),
    "conv3d": (lambda: keras.layers.Conv3D(2, 2), (1, 4, 4, 4, 2), 1),
    "depthwise2d": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3), 2),
}


def _plain_twin(inner, input_shape, kernel):
    """A fresh layer of the same config whose kernel is `kernel`."""
    twin = inner.__class__.from_config(inner.get_config())
    twin.build(input_shape)
    weights = inner.get_weights()
    weights[0] = kernel
    twin.set_weights(weights)
    return twin


def _gated(name, granularity="weight", **kwargs):
    factory, shape, out_axes = LAYERS[name]
    inner = factory()
    gate = SparseGate(inner, granularity=granularity, **kwargs)
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    gate(x)
    return gate, inner, x, out_axes


@pytest.mark.parametrize("granularity", ["weight", "filter"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gate_shape_and_identity_at_initialization(name, granularity):
    gate, inner, x, out_axes = _gated(name, granularity)
    kernel_shape = tuple(inner.kernel.shape)
    expected = kernel_shape if granularity == "weight" else kernel_shape[-out_axes:]
    assert tuple(gate.gate_scores.shape) == expected
    assert gate.weight_name == "kernel" and gate.layer is inner
    np.testing.assert_array_equal(ops.convert_to_numpy(gate(x)), ops.convert_to_numpy(inner(x)))


@pytest.mark.parametrize("granularity", ["weight", "filter"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_search_mode_uses_soft_mask_and_adds_penalty(name, granularity):
    gate, inner, x, _ = _gated(name, granularity, gate_init=0.5, penalty=1e-3)
    rng = np.random.RandomState(1)
    s = rng.randn(*gate.gate_scores.shape).astype("float32")
    gate.gate_scores.assign(s)
    gate.beta.assign(3.0)
    w = ops.convert_to_numpy(inner.kernel)
    m = sigmoid(3.0 * s.astype("float64")) / sigmoid(0.5)
    twin = _plain_twin(inner, x.shape, (w * m).astype("float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(gate(x)), ops.convert_to_numpy(twin(x)), rtol=1e-5, atol=1e-6
    )
    assert len(gate.losses) == 1
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(gate.losses[0])), 1e-3 * sigmoid(3.0 * s).sum(), rtol=1e-5
    )


@pytest.mark.parametrize("granularity,gate_init", [("weight", 0.0), ("filter", -0.7)])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_ticket_mode_is_exactly_hard_masked_kernel(name, granularity, gate_init):
    gate, inner, x, _ = _gated(name, granularity, gate_init=gate_init)
    s = np.random.RandomState(2).randn(*gate.gate_scores.shape).astype("float32")
    gate.gate_scores.assign(s)
    gate.beta.assign(50.0)
    gate.ticket.assign(1.0)
    w = ops.convert_to_numpy(inner.kernel)
    hard = (s > 0).astype("float32") * np.float32(1.0 / sigmoid(gate_init))
    expected_kernel = w * hard
    np.testing.assert_array_equal(gate.stripped_kernel(), expected_kernel)
    np.testing.assert_array_equal(gate.kept_mask(), np.broadcast_to(s > 0, w.shape))
    assert gate.kept_mask().dtype == bool and gate.kept_mask().shape == w.shape
    twin = _plain_twin(inner, x.shape, expected_kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(gate(x)), ops.convert_to_numpy(twin(x)))
    assert float(ops.convert_to_numpy(gate.losses[0])) == 0.0  # no penalty in ticket mode
    # The kernel variable itself is untouched and restored after the call.
    assert inner.kernel is gate._kernel_variable or inner._kernel is gate._kernel_variable
    np.testing.assert_array_equal(ops.convert_to_numpy(inner.kernel), w)


def test_mask_methods():
    gate, *_ = _gated("dense", gate_init=1.0)
    s = np.linspace(-1, 1, 20).reshape(5, 4).astype("float32")
    gate.gate_scores.assign(s)
    gate.beta.assign(2.0)
    np.testing.assert_allclose(ops.convert_to_numpy(gate.soft_mask()), sigmoid(2 * s) / sigmoid(1.0), rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(gate.hard_mask()), (s > 0) / sigmoid(1.0), rtol=1e-6)


@pytest.mark.parametrize(
    "make,match,error",
    [
        (lambda: SparseGate(keras.layers.LSTM(3)),
         # Layers other tests registered may sit between the built-in names.
         r"SparseGate cannot gate a LSTM layer \('lstm(_\d+)?'\)\. Supported: Conv1D, Conv2D, Conv3D, (\w+, )*"
         r"Dense, DepthwiseConv1D, DepthwiseConv2D",
         TypeError),
        (lambda: SparseGate("dense"), r"SparseGate wraps a keras.layers.Layer. Received: layer='dense'", TypeError),
        (lambda: SparseGate(keras.layers.Dense(2), granularity="row"),
         r"`granularity` must be one of \('weight', 'filter', 'neuron'\). Received: granularity='row'", ValueError),
        (lambda: SparseGate(keras.layers.Dense(2), gate_init=float("nan")),
         r"`gate_init` must be finite. Received: gate_init=nan", ValueError),
        (lambda: SparseGate(keras.layers.Dense(2), penalty=-1.0),
         r"`penalty` must be >= 0. Received: penalty=-1.0", ValueError),
    ],
)
def test_bad_input(make, match, error):
    with pytest.raises(error, match=match):
        make()


@register_gated_layer(weight_name="w")
class _TinyDense(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")

    def call(self, x):
        return ops.matmul(x, self.w)


class _Unreadable(keras.layers.Layer):
    def build(self, input_shape):
        self.weights_list = [self.add_weight(shape=(input_shape[-1], 2), name="kernel")]

    def call(self, x):
        return ops.matmul(x, self.weights_list[0])


def test_registered_custom_layer_is_gated():
    gate = SparseGate(_TinyDense(3), granularity="neuron")
    x = np.ones((2, 4), "float32")
    gate(x)
    assert gate.weight_name == "w" and tuple(gate.gate_scores.shape) == (3,)
    gate.gate_scores.assign(np.array([1.0, -1.0, 2.0], "float32"))
    gate.ticket.assign(1.0)
    w = ops.convert_to_numpy(gate.layer.w)
    np.testing.assert_array_equal(ops.convert_to_numpy(gate(x)), x @ (w * np.array([2.0, 0.0, 2.0], "float32")))


def test_registered_layer_without_the_attribute_fails_at_build():
    register_gated_layer(_Unreadable)
    with pytest.raises(TypeError, match=r"has no variable in attribute 'kernel' or '_kernel' after build\(\)"):
        SparseGate(_Unreadable())(np.ones((1, 3), "float32"))


def _small_model(granularity="weight"):
    inputs = keras.Input((6, 6, 1))
    x = SparseGate(keras.layers.Conv2D(4, 3, activation="relu", name="conv"), granularity=granularity)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = SparseGate(keras.layers.Dense(3, name="fc"))(x)
    return keras.Model(inputs, outputs)


def _data(n=32):
    rng = np.random.RandomState(0)
    return rng.rand(n, 6, 6, 1).astype("float32"), rng.randint(0, 3, n).astype("int32")


def test_config_roundtrip():
    gate = SparseGate(keras.layers.Conv2D(3, 2), granularity="filter", gate_init=0.25, penalty=1e-4)
    clone = SparseGate.from_config(gate.get_config())
    assert (clone.granularity, clone.gate_init, clone.penalty) == ("filter", 0.25, 1e-4)
    assert isinstance(clone.layer, keras.layers.Conv2D) and clone.layer.filters == 3


def test_keras_file_roundtrip_keeps_gates_and_mode(tmp_path):
    model = _small_model("filter")
    x, _ = _data(4)
    for gate in (model.layers[1], model.layers[3]):
        gate.gate_scores.assign(np.random.RandomState(3).randn(*gate.gate_scores.shape).astype("float32"))
        gate.beta.assign(7.0)
    model.layers[1].ticket.assign(1.0)
    path = os.path.join(tmp_path, "gated.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))
    assert float(ops.convert_to_numpy(loaded.layers[1].ticket)) == 1.0
    assert float(ops.convert_to_numpy(loaded.layers[3].beta)) == 7.0


def _compiled(model, jit_compile="auto"):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("per_step", [True, False])
def test_gate_temperature_anneals_beta_during_fit(per_step):
    model = _compiled(_small_model())
    x, y = _data(32)
    history = model.fit(
        x, y, batch_size=8, epochs=3, verbose=0,
        callbacks=[GateTemperature(100.0, epochs=3, per_step=per_step)],
    )
    # 4 steps per epoch; epoch logs hold β of the epoch's last step.
    if per_step:
        expected = [100.0 ** (3 / 8), 100.0 ** (7 / 8), 100.0]
    else:
        expected = [1.0, 10.0, 100.0]
    np.testing.assert_allclose(history.history["gate_beta"], expected, rtol=1e-6)
    for gate in (model.layers[1], model.layers[3]):
        assert float(ops.convert_to_numpy(gate.beta)) == pytest.approx(100.0)
        # The scores trained (gradient reaches s through the soft mask).
        assert np.any(ops.convert_to_numpy(gate.gate_scores) != 0.0)


def test_gate_temperature_errors():
    with pytest.raises(ValueError, match=r"`final_beta` must be a number >= 1. Received: final_beta=0"):
        GateTemperature(0, epochs=3)
    with pytest.raises(TypeError, match=r"`per_step` must be a bool. Received: per_step=1"):
        GateTemperature(10.0, epochs=3, per_step=1)
    plain = _compiled(keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]))
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"has no SparseGate layers"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[GateTemperature(10.0, epochs=1)])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gates_stay_float32(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = _compiled(_small_model())
        x, y = _data(16)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[GateTemperature(10.0, epochs=2)])
        gate = model.layers[1]
        compute = policy.split("_")[1]
        assert gate.gate_scores.dtype == "float32" and gate.beta.dtype == "float32"
        assert gate.compute_dtype == compute
        assert keras.backend.standardize_dtype(model(x).dtype) == compute
        gate.ticket.assign(1.0)
        assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(model(x), "float32"))))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@tf_only
def test_changing_beta_and_mode_does_not_retrace_under_jit():
    import tensorflow as tf

    model = _small_model()
    x, _ = _data(4)
    f = tf.function(lambda t: model(t), jit_compile=True)
    first = f(x).numpy()
    for gate in (model.layers[1], model.layers[3]):
        gate.gate_scores.assign(np.random.RandomState(5).randn(*gate.gate_scores.shape).astype("float32"))
        gate.beta.assign(30.0)
    second = f(x).numpy()
    for gate in (model.layers[1], model.layers[3]):
        gate.ticket.assign(1.0)
    third = f(x).numpy()
    assert f.experimental_get_tracing_count() == 1
    assert not np.array_equal(first, second) and not np.array_equal(second, third)
    np.testing.assert_allclose(third, model(x).numpy(), rtol=1e-5, atol=1e-6)


@tf_only
def test_tf_train_checkpoint_roundtrip(tmp_path):
    import tensorflow as tf

    model = _small_model()
    gate = model.layers[1]
    gate.gate_scores.assign(np.full(gate.gate_scores.shape, 0.3, "float32"))
    gate.beta.assign(4.0)
    path = tf.train.Checkpoint(model=model).save(os.path.join(tmp_path, "ckpt"))
    gate.gate_scores.assign(np.zeros(gate.gate_scores.shape, "float32"))
    gate.beta.assign(1.0)
    tf.train.Checkpoint(model=model).restore(path).assert_consumed()
    np.testing.assert_array_equal(gate.gate_scores.numpy(), 0.3 * np.ones(gate.gate_scores.shape, "float32"))
    assert gate.beta.numpy() == 4.0


@tf_only
def test_mirrored_strategy_fit_with_annealing():
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (tests/conftest.py)")
    # ReductionToOneDevice: no collective ops, whose process-global instance
    # keys collide with strategies built by earlier tests in this process.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = _compiled(_small_model(), jit_compile=False)
    x, y = _data(32)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[GateTemperature(20.0, epochs=2)])
    gate = model.layers[1]
    per_replica = [v.numpy() for v in gate.beta.value.values] if hasattr(gate.beta.value, "values") else [gate.beta.numpy()]
    assert all(b == pytest.approx(20.0) for b in per_replica)
    assert np.any(gate.gate_scores.numpy() != 0.0)
    scores = [v.numpy() for v in gate.gate_scores.value.values]
    np.testing.assert_array_equal(scores[0], scores[-1])  # replicas agree

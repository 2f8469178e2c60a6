"""Every class the package registers as serializable survives `pickle` (joblib, Ray, Dask, ...).

Unbuilt: equal configs. Built, with state: equal configs and equal variables (the
optimizer's momentum and V, hence Γ; the layers' weights, gate scores, masks).
Backend-agnostic (rerun under JAX and PyTorch by tests/test_backends.py), except the
tf_keras twin at the end.
"""

import json
import pickle

import keras
import numpy as np
import pytest

import tf_dessilbi as tfd
from tf_dessilbi.layers.masked import MaskedLayer
from tf_dessilbi.layers.sparse_gate import SparseGate
from tf_dessilbi.sparse import schedules


def _model():
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(3, 3, name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="logits"),
    ])


def _trained(model, optimizer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6, 6, 1)).astype("float32")
    y = np.array([0, 1] * 4)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return model


def _same_config(a, b):
    """Configs equal up to JSON (a restored build_config holds lists where tuples were)."""
    return json.loads(json.dumps(a.get_config())) == json.loads(json.dumps(b.get_config()))


def _round_trip(obj):
    return pickle.loads(pickle.dumps(obj))


def _assert_same_values(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


def test_unbuilt_dessilbi_pickles_with_its_config():
    optimizer = tfd.DessiLBI(learning_rate=0.05, kappa=2.0, mu=3.0, lambda_=0.5, momentum=0.5,
                             structure={"conv": "filter"}, lambda_scaling="none")
    restored = _round_trip(optimizer)
    assert type(restored) is tfd.DessiLBI and not restored.built
    assert restored.get_config() == optimizer.get_config()


def test_built_dessilbi_pickles_its_state_and_loads_it_when_built():
    model = _trained(_model(), tfd.DessiLBI(learning_rate=0.1, lambda_=0.01, mu=1.0, kappa=2.0))
    optimizer = model.optimizer
    assert any(np.any(keras.ops.convert_to_numpy(optimizer.v(v)))
               for v, _ in optimizer.coupled_variables())
    restored = _round_trip(optimizer)
    assert restored.get_config() == optimizer.get_config()
    restored.build(model.trainable_variables)
    _assert_same_values(optimizer.variables, restored.variables)
    for variable, _ in optimizer.coupled_variables():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(optimizer.gamma(variable)),
                                      keras.ops.convert_to_numpy(restored.gamma(variable)))


def test_a_model_trained_with_dessilbi_pickles_with_the_optimizer_state():
    model = _trained(_model(), tfd.DessiLBI(lambda_=0.01, mu=1.0))
    restored = _round_trip(model)
    _assert_same_values(model.weights, restored.weights)
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    _assert_same_values(model.optimizer.variables, restored.optimizer.variables)


@pytest.mark.parametrize("wrap", ["gate", "mask"])
def test_wrapper_layers_pickle_unbuilt_and_built(wrap):
    if wrap == "gate":
        layer = SparseGate(keras.layers.Dense(3), granularity="neuron", gate_init=0.5, penalty=1e-3)
    else:
        layer = MaskedLayer(keras.layers.Dense(3))
    restored = _round_trip(layer)
    assert type(restored) is type(layer) and _same_config(restored, layer)
    layer(np.ones((2, 4), "float32"))
    if wrap == "gate":
        layer.gate_scores.assign(np.array([[0.3, -0.2, 0.1]], "float32").reshape(layer.gate_scores.shape))
    else:
        layer.set_mask(np.array([[True, False, True]] * 4))
    restored = _round_trip(layer)
    assert _same_config(restored, layer)
    _assert_same_values(layer.weights, restored.weights)


@pytest.mark.parametrize("wrap", ["gate", "mask"])
def test_wrapped_models_pickle_with_their_state(wrap):
    model = tfd.gate_model(_model()) if wrap == "gate" else tfd.mask_model(_model())
    model = _trained(model, keras.optimizers.SGD(0.1))
    restored = _round_trip(model)
    _assert_same_values(model.weights, restored.weights)
    x = np.ones((2, 6, 6, 1), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               keras.ops.convert_to_numpy(restored(x)), rtol=1e-6)


@pytest.mark.parametrize("schedule", [
    schedules.ConstantSparsity(0.5, begin_step=2, end_step=20, frequency=3),
    schedules.PolynomialDecay(0.1, 0.8, begin_step=0, end_step=50, power=2.0, frequency=5),
    schedules.UpdateSchedule(10, end_step=100, begin_step=5),
    schedules.CosineDropFraction(0.3, end_step=200),
    schedules.ConstantDropFraction(0.2),
], ids=lambda s: type(s).__name__)
def test_schedules_pickle(schedule):
    restored = _round_trip(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 5, 7, 60, 300):
        assert restored(step) == schedule(step)


def test_tf_keras_dessilbi_pickles_its_config_and_state():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf_keras twin runs on TensorFlow")
    tf_keras = pytest.importorskip("tf_keras")
    from tf_dessilbi import tfmot
    from tf_dessilbi.tfmot.pruned import fixed_mask_class

    unbuilt = tfmot.DessiLBI(kappa=2.0, mu=3.0, lambda_=0.25)
    assert _round_trip(unbuilt).get_config() == unbuilt.get_config()
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    optimizer = tfmot.DessiLBI(lambda_=0.01, mu=1.0)
    model.compile(optimizer, "mse")
    model.fit(np.ones((4, 4)), np.arange(12.0).reshape(4, 3), verbose=0)
    restored = _round_trip(optimizer)
    assert restored.get_config() == optimizer.get_config()
    restored.build(model.trainable_variables)
    _assert_same_values([v.numpy() for v in optimizer.variables],
                        [v.numpy() for v in restored.variables])
    kernel = model.trainable_variables[0]
    assert np.any(optimizer.gamma(kernel).numpy())
    np.testing.assert_array_equal(optimizer.gamma(kernel).numpy(), restored.gamma(kernel).numpy())
    schedule = fixed_mask_class()()
    assert _round_trip(schedule).get_config() == schedule.get_config()

"""Tests of tf_dessilbi.export.strip: strip() (DessiLBI W*, SparseGate, MaskedLayer)."""

import os
import sys

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi.layers import SparseGate

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")

from tests.export_models import _data, _dessilbi_trained, _functional, _same_weights, _weights  # noqa: F401


# -- strip ----------------------------------------------------------------------
@pytest.mark.parametrize("prune_bias", [True, False])
@pytest.mark.parametrize("nested", [False, True])
def test_strip_dessilbi_equals_w_star(prune_bias, nested):
    model, optimizer = _dessilbi_trained(nested)
    x, _ = _data(seed=1)
    before = _weights(model)

    stripped = tf_dessilbi.strip(model, optimizer, prune_bias=prune_bias)

    assert _same_weights(before, model)  # the input model is untouched
    with tf_dessilbi.apply_w_star(model, optimizer, prune_bias=prune_bias):
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        w_star = _weights(model)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(stripped(x, training=False)), expected
    )
    # Same weights as W*, nothing more, and independent variables.
    assert [w.path.split("/")[-2:] for w in stripped.weights] == [
        w.path.split("/")[-2:] for w in model.weights
    ]
    for a, b in zip(w_star, _weights(stripped)):
        np.testing.assert_array_equal(a, b)
    assert not {id(v) for v in stripped.weights} & {id(v) for v in model.weights}


def test_strip_kernels_are_zero_outside_support():
    model, optimizer = _dessilbi_trained()
    stripped = tf_dessilbi.strip(model, optimizer)
    for variable, _ in optimizer.coupled_variables():
        support = keras.ops.convert_to_numpy(optimizer.support(variable))
        layer_name = variable.path.split("/")[-2]
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(layer_name).kernel)
        assert np.all(kernel[~support] == 0)
        np.testing.assert_array_equal(
            kernel[support], keras.ops.convert_to_numpy(variable)[support]
        )


def _gated(granularity):
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            SparseGate(
                keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
                granularity=granularity,
                gate_init=0.5,
            ),
            keras.layers.Flatten(name="flatten"),
            SparseGate(
                keras.layers.Dense(5, activation="relu", name="fc"),
                granularity=granularity,
                gate_init=0.5,
            ),
            keras.layers.Dense(3, name="logits"),
        ],
        name="gated",
    )
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, SparseGate):
            scores = rng.normal(size=layer.gate_scores.shape).astype("float32")
            layer.gate_scores.assign(scores)
            layer.ticket.assign(1.0)
    return model


@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_strip_gated_equals_ticket_mode(granularity):
    model = _gated(granularity)
    x, _ = _data(seed=4)
    before = _weights(model)

    stripped = tf_dessilbi.strip(model)

    assert _same_weights(before, model)
    assert not any(isinstance(l, SparseGate) for l in stripped._flatten_layers())
    assert [l.name for l in stripped.layers] == ["conv", "flatten", "fc", "logits"]
    plain = keras.Sequential(
        [keras.Input((8, 8, 1))]
        + [
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    assert [tuple(w.shape) for w in stripped.weights] == [
        tuple(w.shape) for w in plain.weights
    ]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stripped(x)),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    for layer in model.layers:
        if isinstance(layer, SparseGate):
            kernel = keras.ops.convert_to_numpy(stripped.get_layer(layer.layer.name).kernel)
            np.testing.assert_array_equal(kernel, layer.stripped_kernel())
            assert np.all(kernel[~layer.kept_mask()] == 0)


def test_strip_without_optimizer_is_an_independent_copy():
    model = _functional()
    x, _ = _data()
    stripped = tf_dessilbi.strip(model)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(stripped(x)), keras.ops.convert_to_numpy(model(x))
    )
    stripped.get_layer("fc").kernel.assign(
        np.zeros(stripped.get_layer("fc").kernel.shape, "float32")
    )
    assert np.any(keras.ops.convert_to_numpy(model.get_layer("fc").kernel) != 0)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_strip_rejects_subclassed_models():
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(
        TypeError,
        match=r"strip\(\) works on Sequential and Functional models; _Subclassed 'sub' is subclassed",
    ):
        tf_dessilbi.strip(model)
    inputs = keras.Input((3,))
    outer = keras.Model(inputs, _Subclassed()(inputs), name="outer")
    with pytest.raises(
        ValueError, match=r"it contains the subclassed model 'sub' of type _Subclassed"
    ):
        tf_dessilbi.strip(outer)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model": "net"}, TypeError, r"strip\(\) needs a keras.Model. Received: model='net'"),
        ({"prune_bias": 1}, TypeError, r"`prune_bias` must be True or False. Received: prune_bias=1 of type int"),
        ({"prune_bias": "no"}, TypeError, r"`prune_bias` must be True or False. Received: prune_bias='no'"),
    ],
)
def test_strip_bad_arguments(kwargs, error, message):
    arguments = {"model": _functional(), **kwargs}
    with pytest.raises(error, match=message):
        tf_dessilbi.strip(**arguments)


def test_strip_with_unbuilt_optimizer_fails_and_leaves_model():
    model = _functional()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"The DessiLBI optimizer is not built yet"):
        tf_dessilbi.strip(model, tf_dessilbi.DessiLBI())
    assert _same_weights(before, model)


# -- issue 14: strip with MaskedLayer / an SGD optimizer; export modes and kills --------
def test_strip_masked_layer_like_a_gate():
    from tf_dessilbi.layers import masked

    keras.utils.set_random_seed(3)
    model = masked.mask_model(_functional())
    wrappers = [l for l in model.layers if isinstance(l, masked.MaskedLayer)]
    rng = np.random.default_rng(0)
    for w in wrappers:
        w.set_mask(rng.random(tuple(w.weight_variable.shape)) < 0.5)
    x, _ = _data(seed=2)
    stripped = tf_dessilbi.strip(model)
    assert not any(isinstance(l, masked.MaskedLayer) for l in stripped.layers)
    assert len(stripped.weights) == len(_functional().weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stripped(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-6)
    for w in wrappers:
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(w.layer.name).kernel)
        np.testing.assert_array_equal(kernel, np.asarray(w.stripped_kernel()))


def test_strip_with_an_sgd_optimizer_says_what_is_needed():
    model = _functional()
    sgd = keras.optimizers.SGD()
    sgd.build(model.trainable_variables)
    with pytest.raises(TypeError, match=r"strip\(optimizer=...\) needs the tf_dessilbi.DessiLBI "
                       r"optimizer that trained the model.*received SGD.*pass no optimizer"):
        tf_dessilbi.strip(model, sgd)



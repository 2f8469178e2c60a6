"""gate_model / gated_layers / gate_masks / reset, strip and sparsity_report on gated models."""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi.layers import SparseGate
from tf_dessilbi.models import fmnist_cnn_s


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype="float64")))


def _randomize(model, seed=0):
    rng = np.random.RandomState(seed)
    for gate in tf_dessilbi.gated_layers(model):
        gate.gate_scores.assign(rng.randn(*gate.gate_scores.shape).astype("float32"))


def _x(n=3):
    return np.random.RandomState(1).rand(n, 28, 28, 1).astype("float32")


def test_gate_model_wraps_supported_layers_and_copies_weights():
    model = fmnist_cnn_s()
    gated = tf_dessilbi.gate_model(model, granularity="filter", penalty=1e-6)
    names = [g.layer.name for g in tf_dessilbi.gated_layers(gated)]
    assert names == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert all(g.granularity == "filter" and g.penalty == 1e-6 for g in tf_dessilbi.gated_layers(gated))
    assert not tf_dessilbi.gated_layers(model)  # original untouched
    np.testing.assert_array_equal(ops.convert_to_numpy(gated(_x())), ops.convert_to_numpy(model(_x())))


def test_layer_filter_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(3, name="b")], name="inner"
    )
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="c")(inner(inputs)))
    gated = tf_dessilbi.gate_model(model, layer_filter=lambda layer: layer.name != "b")
    assert sorted(g.layer.name for g in tf_dessilbi.gated_layers(gated)) == ["a", "c"]
    x = np.ones((2, 6), "float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(gated(x)), ops.convert_to_numpy(model(x)))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.blocks = [SparseGate(keras.layers.Dense(5, name="h")), keras.layers.Dense(2, name="out")]
        self.head = SparseGate(keras.layers.Dense(2, name="head"), granularity="neuron")

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_subclassed_models_are_found_by_walking_layers():
    model = _Subclassed()
    model(np.ones((1, 4), "float32"))
    assert sorted(g.layer.name for g in tf_dessilbi.gated_layers(model)) == ["h", "head"]
    masks = tf_dessilbi.gate_masks(model)
    assert masks["h"].shape == (4, 5) and masks["head"].shape == (2, 2)
    with pytest.raises(TypeError, match=r"gate_model\(\) works on Sequential and Functional models; _Subclassed"):
        tf_dessilbi.gate_model(model)


def test_gate_masks_reset_and_modes():
    gated = tf_dessilbi.gate_model(fmnist_cnn_s())
    _randomize(gated)
    gates = tf_dessilbi.gated_layers(gated)
    masks = tf_dessilbi.gate_masks(gated)
    for gate in gates:
        s = ops.convert_to_numpy(gate.gate_scores)
        np.testing.assert_array_equal(masks[gate.layer.name], s > 0)
    tf_dessilbi.set_beta(gated, 9.0)
    before = [ops.convert_to_numpy(g.gate_scores) for g in gates]
    tf_dessilbi.reset_gates(gated)
    for gate, s in zip(gates, before):
        np.testing.assert_allclose(ops.convert_to_numpy(gate.gate_scores), np.minimum(9.0 * s, 0.0), rtol=1e-6)
        assert float(ops.convert_to_numpy(gate.beta)) == 1.0
    tf_dessilbi.set_ticket_mode(gated, True)
    assert all(float(ops.convert_to_numpy(g.ticket)) == 1.0 for g in gates)


def test_strip_equals_gated_model_in_ticket_mode():
    gated = tf_dessilbi.gate_model(fmnist_cnn_s(), granularity="weight", gate_init=0.3)
    _randomize(gated)
    tf_dessilbi.set_ticket_mode(gated, True)
    stripped = tf_dessilbi.strip(gated)
    assert not tf_dessilbi.gated_layers(stripped)
    np.testing.assert_array_equal(ops.convert_to_numpy(stripped(_x())), ops.convert_to_numpy(gated(_x())))
    conv1 = gated.get_layer("conv1_gate")
    s = ops.convert_to_numpy(conv1.gate_scores)
    w = ops.convert_to_numpy(conv1.layer.kernel)
    np.testing.assert_allclose(
        ops.convert_to_numpy(stripped.get_layer("conv1").kernel), w * (s > 0) / sigmoid(0.3), rtol=1e-6
    )


def test_sparsity_report_has_one_row_per_gate():
    gated = tf_dessilbi.gate_model(fmnist_cnn_s(), granularity="filter")
    _randomize(gated)
    report = tf_dessilbi.sparsity_report(gated)
    assert [r.layer for r in report] == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert {r.structure for r in report} == {"gate:filter"}
    masks = tf_dessilbi.gate_masks(gated)
    for row in report:
        mask = masks[row.layer]
        assert (row.weights_kept, row.weights_total) == (int(mask.sum()), mask.size)
        assert row.units_kept == int(mask.reshape(-1, mask.shape[-1]).any(0).sum())
    assert "gate:filter" in str(report)


def test_bad_input_leaves_the_model_untouched():
    model = fmnist_cnn_s()
    with pytest.raises(TypeError, match=r"SparseGate cannot gate a MaxPooling2D layer \('pool1'\)"):
        tf_dessilbi.gate_model(model, layer_filter=lambda layer: layer.name in ("conv1", "pool1"))
    with pytest.raises(ValueError, match=r"`penalty` must be >= 0. Received: penalty=-1"):
        tf_dessilbi.gate_model(model, penalty=-1)
    with pytest.raises(ValueError, match=r"gate_model\(\) found no layer to gate in model 'fmnist_cnn_s'"):
        tf_dessilbi.gate_model(model, layer_filter=lambda layer: False)
    with pytest.raises(TypeError, match=r"`layer_filter` must be callable\(layer\) -> bool. Received: layer_filter='conv1'"):
        tf_dessilbi.gate_model(model, layer_filter="conv1")
    assert not tf_dessilbi.gated_layers(model)
    with pytest.raises(ValueError, match=r"gate_model\(\) needs a built model"):
        tf_dessilbi.gate_model(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"gate_masks\(\): model 'fmnist_cnn_s' has no SparseGate layers"):
        tf_dessilbi.gate_masks(model)

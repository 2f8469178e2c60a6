"""`MaskedLayer` / `mask_model`: the one fixed-mask wrapper."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi.layers import MaskedLayer


def _model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv", kernel_constraint=keras.constraints.MaxNorm(3.0))(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def _mask(seed=0):
    return np.random.RandomState(seed).rand(3, 3, 2, 4) > 0.5


def test_output_is_the_layer_on_the_masked_kernel():
    model = _model()
    masked = tf_dessilbi.mask_model(model, tf_dessilbi.Mask({"conv/kernel": _mask()}))
    x = np.random.RandomState(1).randn(2, 6, 6, 2).astype("float32")
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    kernel = ops.convert_to_numpy(model.get_layer("conv").kernel)
    reference.get_layer("conv").kernel.assign(kernel * _mask())
    np.testing.assert_allclose(ops.convert_to_numpy(masked(x)), ops.convert_to_numpy(reference(x)), atol=1e-6)
    # The input model is untouched and its weights copied.
    np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer("conv").kernel), kernel)


def test_training_leaves_the_masked_weights_alone_and_keeps_user_constraints():
    masked = tf_dessilbi.mask_model(_model(), tf_dessilbi.Mask({"conv/kernel": _mask()}))
    layer = next(l for l in masked.layers if isinstance(l, MaskedLayer) and l.layer.name == "conv")
    before = ops.convert_to_numpy(layer.layer.kernel).copy()
    masked.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.RandomState(2)
    masked.fit(rng.randn(16, 6, 6, 2), rng.randn(16, 3), epochs=2, verbose=0)
    after = ops.convert_to_numpy(layer.layer.kernel)
    # No loss gradient outside M (MaxNorm's ε rescales every entry by ~1e-7).
    np.testing.assert_allclose(after[~_mask()], before[~_mask()], rtol=1e-5)
    assert not np.allclose(after[_mask()], before[_mask()])  # inside M it trains
    assert isinstance(layer.layer.kernel_constraint, keras.constraints.MaxNorm)


def test_set_mask_validates_and_changes_nothing_on_error():
    masked = tf_dessilbi.mask_model(_model())
    layer = next(l for l in masked.layers if isinstance(l, MaskedLayer))
    assert layer.kept_mask().all()  # dense by default
    with pytest.raises(ValueError, match=r"must have the weight's shape \(3, 3, 2, 4\)"):
        layer.set_mask(np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"must be boolean \(or 0/1\)"):
        layer.set_mask(np.full((3, 3, 2, 4), 0.5))
    assert layer.kept_mask().all()


def test_keras_file_round_trip(tmp_path):
    masked = tf_dessilbi.mask_model(_model(), tf_dessilbi.Mask({"conv/kernel": _mask(3)}))
    path = os.path.join(tmp_path, "m.keras")
    masked.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.RandomState(4).randn(2, 6, 6, 2).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(masked(x)), atol=1e-6)
    np.testing.assert_array_equal(tf_dessilbi.masks.FixedMasks().mask(loaded).weights["conv/kernel"], _mask(3))


def test_mask_model_errors():
    with pytest.raises(TypeError, match=r"mask_model\(\) works on Sequential and Functional models"):
        class Sub(keras.Model):
            def call(self, x):
                return x

        tf_dessilbi.mask_model(Sub())
    with pytest.raises(TypeError, match="MaskedLayer cannot mask a MaxPooling2D layer"):
        MaskedLayer(keras.layers.MaxPooling2D())
    with pytest.raises(TypeError, match=r"`layer_filter` must be callable"):
        tf_dessilbi.mask_model(_model(), layer_filter=3)


def test_sparsity_report_shows_fixed_masks():
    masked = tf_dessilbi.mask_model(_model(), tf_dessilbi.Mask({"conv/kernel": _mask(), "fc/kernel": np.zeros((64, 3), bool)}))
    report = tf_dessilbi.sparsity_report(masked)
    rows = {r.layer: r for r in report}
    assert rows["conv"].structure == "fixed" and rows["conv"].weights_kept == int(_mask().sum())
    assert rows["fc"].empty and report.empty_layers == ["fc"]
    assert "EMPTY" in str(report)

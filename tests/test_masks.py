"""`tf_dessilbi.masks`: the Mask value, the adapters of every source, resolve/apply_to."""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi import masks


def _model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def test_mask_holds_boolean_copies_and_counts():
    source = np.array([[1, 0], [0, 1]])
    mask = masks.Mask({"a/kernel": source}, {"a": np.array([True, False])})
    source[0, 0] = 0  # the mask keeps its own copy
    assert mask.weights["a/kernel"].dtype == bool and mask.weights["a/kernel"][0, 0]
    assert (mask.weights_kept, mask.weights_total, mask.density) == (2, 4, 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(weights={"a/kernel": np.array([0.5, 1.0])}), r"Mask weight 'a/kernel' must be boolean \(or 0/1\)"),
        (dict(units={"a": np.ones((2, 2), bool)}), r"Mask units 'a' must be 1-D"),
    ],
)
def test_bad_masks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        masks.Mask(**kwargs)


def test_intersection():
    a = masks.Mask({"x/kernel": np.array([1, 1, 0], bool)}, {"x": np.array([1, 0], bool)})
    b = masks.Mask({"x/kernel": np.array([0, 1, 1], bool), "y/kernel": np.array([1], bool)})
    both = a & b
    np.testing.assert_array_equal(both.weights["x/kernel"], [False, True, False])
    np.testing.assert_array_equal(both.weights["y/kernel"], [True])
    np.testing.assert_array_equal(both.units["x"], [True, False])
    with pytest.raises(ValueError, match="disagree on the shape"):
        a & masks.Mask({"x/kernel": np.ones(4, bool)})


def test_save_and_load_round_trip(tmp_path):
    mask = masks.Mask({"conv/kernel": np.random.RandomState(0).rand(3, 3, 2, 4) > 0.5}, {"conv": np.array([1, 0, 1, 1], bool)})
    path = str(tmp_path / "m.npz")
    mask.save(path)
    loaded = masks.Mask.load(path)
    assert set(loaded.weights) == {"conv/kernel"} and set(loaded.units) == {"conv"}
    np.testing.assert_array_equal(loaded.weights["conv/kernel"], mask.weights["conv/kernel"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp file left


@pytest.mark.parametrize(
    "weight_mask,unit_axes,want",
    [
        (np.array([[0, 1, 0], [0, 1, 0]], bool), (-1,), [False, True, False]),
        (np.zeros((3, 3, 2, 1), bool), (-2, -1), [False, False]),
    ],
)
def test_unit_mask_of(weight_mask, unit_axes, want):
    np.testing.assert_array_equal(masks.unit_mask_of(weight_mask, unit_axes), want)


def test_optimizer_support_gives_weights_and_units_for_group_structures():
    model = _model()
    opt = tf_dessilbi.DessiLBI(learning_rate=0.5, mu=1.0, lambda_=0.05)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    model.fit(rng.randn(32, 6, 6, 2), rng.randint(0, 3, 32), epochs=2, verbose=0, batch_size=8)
    mask = masks.OptimizerSupport(opt).mask(model)
    assert set(mask.weights) == {"conv/kernel", "fc/kernel"}
    conv_support = np.asarray(ops.convert_to_numpy(opt.support(model.get_layer("conv").kernel)))
    np.testing.assert_array_equal(mask.weights["conv/kernel"], conv_support)
    np.testing.assert_array_equal(mask.units["conv"], conv_support.reshape(-1, 4).any(0))
    assert "fc" not in mask.units  # elementwise: no structural units
    assert masks.resolve(opt, model).weights.keys() == mask.weights.keys()


def test_optimizer_support_needs_dessilbi():
    with pytest.raises(TypeError, match=r"needs a tf_dessilbi.DessiLBI optimizer .*received SGD"):
        masks.OptimizerSupport(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="not built yet"):
        masks.OptimizerSupport(tf_dessilbi.DessiLBI())


def test_gate_masks_adapter_matches_the_gates():
    gated = tf_dessilbi.gate_model(_model(), granularity="filter")
    for gate in tf_dessilbi.gated_layers(gated):
        gate.gate_scores.assign(np.linspace(-1, 1, gate.gate_scores.shape[0]).astype("float32"))
    mask = masks.GateMasks().mask(gated)
    np.testing.assert_array_equal(mask.units["conv"], [False, False, True, True])
    assert mask.weights["conv/kernel"].shape == (3, 3, 2, 4)
    assert mask.weights["conv/kernel"][..., 2:].all() and not mask.weights["conv/kernel"][..., :2].any()


def test_unit_masks_checked_against_the_model():
    model = _model()
    mask = masks.resolve({"conv": [True, False, True, True]}, model)
    np.testing.assert_array_equal(mask.units["conv"], [True, False, True, True])
    with pytest.raises(ValueError, match=r"Unit mask for 'nope' names no layer"):
        masks.resolve({"nope": [True]}, model)
    with pytest.raises(ValueError, match=r"Unit mask for 'conv' has shape \(3,\); layer 'conv' has 4 output units"):
        masks.resolve({"conv": [True, False, True]}, model)
    with pytest.raises(ValueError, match=r"a Flatten layer has no output units"):
        masks.resolve({model.layers[2].name: [True]}, model)


def test_resolve_rejects_unknown_sources():
    with pytest.raises(TypeError, match=r"A mask source must be None, a tf_dessilbi.masks.Mask"):
        masks.resolve(42, _model())


def test_apply_to_broadcasts_units_and_validates():
    model = _model()
    applied = masks.apply_to(masks.Mask(units={"conv": np.array([1, 0, 0, 1], bool)}), model)
    assert [(layer.name, m.shape) for layer, _, m in applied] == [("conv", (3, 3, 2, 4))]
    m = applied[0][2]
    assert m[..., 0].all() and not m[..., 1].any() and not m[..., 2].any() and m[..., 3].all()
    with pytest.raises(ValueError, match=r"match no sparsifiable weight"):
        masks.apply_to(masks.Mask({"other/kernel": np.ones(2, bool)}), model)
    with pytest.raises(ValueError, match=r"Mask for 'fc/kernel' has shape \(2,\); the weight \(64, 3\)"):
        masks.apply_to(masks.Mask({"fc/kernel": np.ones(2, bool)}), model)


def test_masks_key_by_layer_name_so_they_survive_strip():
    gated = tf_dessilbi.gate_model(_model())
    for gate in tf_dessilbi.gated_layers(gated):
        gate.gate_scores.assign(np.random.RandomState(1).randn(*gate.gate_scores.shape).astype("float32"))
    mask = masks.GateMasks().mask(gated)
    stripped = tf_dessilbi.strip(gated)
    applied = {layer.name: m for layer, _, m in masks.apply_to(mask, stripped)}
    assert set(applied) == {"conv", "fc"}
    kernel = ops.convert_to_numpy(stripped.get_layer("conv").kernel)
    assert np.all(kernel[~applied["conv"]] == 0)


def test_masks_compare_by_their_entries():
    kernel = np.zeros((3, 4), bool)
    kernel[:, 1] = True
    a = masks.Mask({"conv/kernel": kernel}, {"conv": kernel.any(0)})
    assert a == masks.Mask({"conv/kernel": kernel.copy()}, {"conv": kernel.any(0).copy()})
    flipped = kernel.copy()
    flipped[0, 2] = True
    assert a != masks.Mask({"conv/kernel": flipped}, {"conv": kernel.any(0)})
    assert a != masks.Mask({"conv/kernel": kernel}, {"conv": flipped.any(0)})  # units differ
    assert a != masks.Mask({"conv/kernel": kernel})  # no units
    assert a != masks.Mask({"other/kernel": kernel}, {"conv": kernel.any(0)})
    assert a != masks.Mask({"conv/kernel": kernel.reshape(4, 3)}, {"conv": kernel.any(0)})
    assert (a == "conv") is False

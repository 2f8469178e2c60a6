"""Greedy forward selection: each pick is the brute-force argmin (NumPy), stopping, masks, bad input."""

import types

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.layers import MaskedLayer
from tf_dessilbi.procedures import greedy
from tf_dessilbi.training import components


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, activation="relu", name="h1")(inputs)
    x = keras.layers.Dense(5, activation="relu", name="h2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _batch(n=32, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    return x, y


def _numpy_loss(weights, x, y, units):
    """Mean CE of the MLP with the units outside `units` removed (kernel column and bias zeroed)."""
    w1, b1, w2, b2, w3, b3 = [w.astype(np.float64) for w in weights]
    u1, u2 = units.get("h1", np.ones(6, bool)), units.get("h2", np.ones(5, bool))
    h = np.maximum(x @ (w1 * u1) + b1 * u1, 0)
    h = np.maximum(h @ (w2 * u2) + b2 * u2, 0)
    p = _softmax(h @ w3 + b3)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


@pytest.mark.parametrize("num_candidates", [50, 3])
def test_every_pick_is_the_brute_force_argmin(num_candidates):
    model = _mlp()
    weights = model.get_weights()
    x, y = _batch()
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    tol = 0.01
    result = greedy.greedy_forward_selection(model, data, num_candidates=num_candidates,
                                             tolerance=tol, seed=2)
    assert list(result.steps) == ["h1", "h2"]  # the output layer is never pruned
    final = {}
    for name, count in (("h1", 6), ("h2", 5)):
        selected = np.zeros(count, bool)
        trace = result.steps[name]
        for i, step in enumerate(trace):
            remaining = set(np.flatnonzero(~selected))
            assert set(step.candidates) <= remaining
            assert len(step.candidates) == min(num_candidates, len(remaining))
            brute = []
            for j in step.candidates:
                trial = selected.copy()
                trial[j] = True
                brute.append(_numpy_loss(weights, x, y, dict(final, **{name: trial})))
            np.testing.assert_allclose(step.losses, brute, rtol=1e-4, atol=1e-6)
            assert step.chosen == step.candidates[int(np.argmin(brute))]
            full = _numpy_loss(weights, x, y, final)
            assert step.full_loss == pytest.approx(full, rel=1e-4)
            stopped = min(brute) <= full + tol
            assert stopped == (i == len(trace) - 1) or selected.sum() + 1 == count
            selected[step.chosen] = True
        np.testing.assert_array_equal(result.mask.units[name], selected)
        assert result.order[name] == [s.chosen for s in trace]
        final[name] = selected
    for a, b in zip(weights, model.get_weights()):  # the trained model is left alone
        np.testing.assert_array_equal(a, b)


def _monotone_mlp():
    """Every unit adds to the true class's logit: any strict subset has a higher loss."""
    c = keras.initializers.Constant(0.3)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, activation="relu", name="h1", kernel_initializer=c)(inputs)
    x = keras.layers.Dense(5, activation="relu", name="h2", kernel_initializer=c)(x)
    kernel = np.zeros((5, 3), np.float32)
    kernel[:, 0] = 0.3
    return keras.Model(inputs, keras.layers.Dense(
        3, name="logits", kernel_initializer=keras.initializers.Constant(kernel))(x))


def test_unit_budget_and_the_masked_model():
    model = _monotone_mlp()
    rng = np.random.default_rng(0)
    x = rng.random((16, 4)).astype(np.float32)
    y = np.zeros(16, np.int32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    result = greedy.greedy_forward_selection(model, data, tolerance=0.0, unit_budget=0.5,
                                             fine_tune_epochs=2, steps_per_epoch=3,
                                             make_optimizer=lambda: keras.optimizers.SGD(0.5),
                                             eval_data=tf.data.Dataset.from_tensors((x, y)))
    # Budgets round(0.5 · 6) = 3 and round(0.5 · 5) = 3 (half up).
    assert {k: int(v.sum()) for k, v in result.mask.units.items()} == {"h1": 3, "h2": 3}
    assert [len(t) for t in result.steps.values()] == [3, 3]  # the budget stopped both
    assert all(t[-1].loss > t[-1].full_loss for t in result.steps.values())
    assert result.unit_density == pytest.approx(6 / 11)
    # Weights kept: h1 4×3, h2 3×3 (inputs from kept h1 units only), logits 3×3 of 24+30+15.
    assert result.weight_density == pytest.approx((12 + 9 + 9) / (24 + 30 + 15))
    wrappers = {w.layer.name: w for w in masks_lib.find_wrappers(result.model, MaskedLayer)}
    for name, units in result.mask.units.items():
        w = wrappers[name]
        np.testing.assert_array_equal(w.kept_mask(), np.broadcast_to(units, w.kept_mask().shape))
        np.testing.assert_array_equal(w.stripped_kernel()[:, ~units], 0.0)
        bias = keras.ops.convert_to_numpy(w.layer.bias)
        np.testing.assert_array_equal(bias[~units], 0.0)  # held at zero while fine-tuning
    (_, _, applied), = [t for t in masks_lib.apply_to(result.mask, result.model) if t[0].name == "h1"]
    np.testing.assert_array_equal(applied, wrappers["h1"].kept_mask())
    assert set(result.eval) == {"loss", "accuracy"}
    d = result.to_dict()
    assert d["units_kept"] == {"h1": 3, "h2": 3}
    import json
    json.dumps(d)


def test_weight_density_counts_the_inputs_after_flatten():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensors(
        (rng.normal(size=(8, 4, 4, 1)).astype(np.float32), rng.integers(0, 2, 8).astype(np.int32))
    ).repeat()
    result = greedy.greedy_forward_selection(model, data, tolerance=0.0, unit_budget=1 / 3)
    assert result.mask.units["conv"].sum() == 1
    # conv: 9 of 27 kept; logits: the 4 spatial rows of the kept channel × 2 of 12 × 2.
    assert result.weight_density == pytest.approx((9 + 8) / (27 + 24))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_candidates": 0}, ValueError, r"`num_candidates` must be >= 1"),
        ({"tolerance": -0.1}, ValueError, r"`tolerance` must be >= 0"),
        ({"unit_budget": 0.0}, ValueError, r"`unit_budget` must be > 0"),
        ({"unit_budget": 1.5}, ValueError, r"`unit_budget` must be <= 1"),
        ({"layers": ["nope"]}, ValueError, r"`layers` names 'nope'"),
        ({"layers": ["logits_act"]}, ValueError, r"has no sparsifiable weight"),
        ({"fine_tune_epochs": 1, "steps_per_epoch": 1}, TypeError, r"`make_optimizer` must be callable"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="h1")(inputs)
    x = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, keras.layers.Activation("linear", name="logits_act")(x))
    data = tf.data.Dataset.from_tensors(_batch()).repeat()
    with pytest.raises(error, match=match):
        greedy.greedy_forward_selection(model, data, **kwargs)


def test_empty_dataset_and_no_layer():
    model = _mlp()
    x, y = _batch()
    with pytest.raises(ValueError, match="empty dataset"):
        greedy.greedy_forward_selection(model, tf.data.Dataset.from_tensors((x, y)).take(0))
    inputs = keras.Input((4,))
    only_output = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
    with pytest.raises(ValueError, match="found no producer layer"):
        greedy.greedy_forward_selection(only_output, tf.data.Dataset.from_tensors((x, y)))


def test_run_hook(tmp_path):
    from tf_dessilbi.training import config_lib

    config = config_lib.base_config()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.num_epochs = 1
    config.steps_per_epoch = 2
    config.eval_steps = 1
    config.verbose = 0
    config.model.name = "lenet5"
    config.sparse = ml_collections.ConfigDict(dict(
        num_candidates=4, tolerance=0.5, unit_budget=0.25, fine_tune_epochs=1,
    ))
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    data = types.SimpleNamespace(train=ds.repeat(), eval=ds, num_train=32,
                                 input_shape=(28, 28, 1), num_classes=10)
    summary = greedy.run(config, str(tmp_path), data, tf.distribute.get_strategy(),
                     build_optimizer=components.build_optimizer)
    assert set(summary["eval"]) == {"loss", "accuracy"}
    assert 0 < summary["unit_density"] <= 0.3
    assert (tmp_path / "greedy.json").exists() and (tmp_path / "mask.npz").exists()
    mask = masks_lib.Mask.load(str(tmp_path / "mask.npz"))
    assert set(mask.units) == set(summary["units_kept"])

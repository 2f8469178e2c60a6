"""`shrink.carry`: optimizer state cut onto the shrunk model, checked against NumPy indexing."""

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tf_dessilbi.shrink import carry


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 4, size=n).astype("int32")
    return x, y


def _cnn(seed=0, bn=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    if bn:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, name="conv2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs)


_GROUPED = ("conv1/kernel", "conv2/kernel", "hidden/kernel")
_REMOVE = {"conv1": [1, 4], "conv2": [0, 3], "hidden": [2, 5, 6]}


def _keep(model):
    return {name: np.array([j not in units for j in range(model.get_layer(name).units
                                                              if name == "hidden" else
                                                              model.get_layer(name).filters)])
            for name, units in _REMOVE.items()}


def _trained(optimizer, steps=3):
    model = _cnn()
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return model


def _expected_index(model, path):
    """NumPy indices of the kept entries of variable ``path`` (written from the model, not shrink)."""
    keep = {k: np.flatnonzero(v) for k, v in _keep(model).items()}
    layer, weight = path.split("/")
    in_conv2 = keep["conv1"]
    flat_in = np.flatnonzero(np.isin(np.arange(4 * 4 * 5) % 5, keep["conv2"]))
    if layer == "conv1":
        return (Ellipsis, keep["conv1"]) if weight == "kernel" else (keep["conv1"],)
    if layer == "bn1":
        return (keep["conv1"],)
    if layer == "conv2":
        return ((slice(None), slice(None), in_conv2[:, None], keep["conv2"][None, :])
                if weight == "kernel" else (keep["conv2"],))
    if layer == "hidden":
        return ((flat_in[:, None], keep["hidden"][None, :]) if weight == "kernel"
                else (keep["hidden"],))
    if layer == "head":
        return ((keep["hidden"], slice(None)) if weight == "kernel" else (slice(None),))
    raise AssertionError(path)


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: keras.optimizers.Adam(1e-2),
    lambda: DessiLBI(0.05, mu=5.0, lambda_=0.1, structure={"conv./kernel": "filter", "hidden/kernel": "neuron",
                                                             "head/kernel": "elementwise"}),
], ids=["sgd_momentum", "nesterov", "adam", "dessilbi"])
def test_slots_are_the_old_slots_at_the_kept_indices(make):
    model = _trained(make())
    small, report = tf_dessilbi.shrink(model, _keep(model), return_report=True)
    new = carry.carry_optimizer(model, small, report)
    assert type(new) is type(model.optimizer)
    assert int(new.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 3
    np.testing.assert_allclose(float(new.learning_rate.numpy()),
                               float(model.optimizer.learning_rate.numpy()))
    old = {v.path: v for v in model.trainable_variables}
    from tf_dessilbi import _compat
    checked = 0
    for variable in small.trainable_variables:
        index = _expected_index(model, variable.path)
        old_slots = {s.name: s for s in _compat.slot_variables(model.optimizer, old[variable.path])}
        new_slots = _compat.slot_variables(new, variable)
        assert len(new_slots) == len(old_slots) > 0
        for slot in new_slots:
            old_slot = np.asarray(old_slots[slot.name].numpy())
            want = old_slot[index]
            if slot.name.endswith("dessilbi_v") and variable.path in _GROUPED:
                # V_g rescaled to its old norm (rows of removed inputs gone), same direction
                kept = index[-1].reshape(-1)
                old_norms = np.linalg.norm(old_slot.reshape(-1, old_slot.shape[-1]), axis=0)
                got = slot.numpy().reshape(-1, len(kept))
                np.testing.assert_allclose(np.linalg.norm(got, axis=0), old_norms[kept], rtol=1e-6)
                cut = want.reshape(-1, len(kept))
                np.testing.assert_allclose(got * np.linalg.norm(cut, axis=0),
                                           cut * np.linalg.norm(got, axis=0), rtol=1e-5, atol=1e-9)
                continue
            np.testing.assert_array_equal(slot.numpy(), want, err_msg=slot.name)
            assert np.any(want != 0) or "dessilbi_v" in slot.name
            checked += 1
    assert checked >= 10
    if isinstance(new, DessiLBI):  # supp Γ of the small model is the big one's, cut
        for variable in small.trainable_variables:
            old_support = model.optimizer.support(old[variable.path])
            if old_support is not None:
                np.testing.assert_array_equal(
                    np.asarray(new.support(variable)),
                    np.asarray(old_support)[_expected_index(model, variable.path)])
    # the big model and its optimizer are untouched
    assert model.optimizer.iterations.numpy() == 3


def test_dessilbi_thresholds_and_hyperparameters_are_the_big_models():
    opt = DessiLBI(0.05, mu=5.0, lambda_=0.1, lambda_scaling="unit_init_norm",
                   structure={"conv./kernel": "filter", "hidden/kernel": "neuron", "head/kernel": "elementwise"})
    model = _trained(opt)
    opt.mu.assign(2.0 ** 40)
    small, report = tf_dessilbi.shrink(model, _keep(model), return_report=True)
    new = carry.carry_optimizer(model, small, report)
    assert float(new.mu.numpy()) == 2.0 ** 40
    for variable in small.trainable_variables:
        old = model.get_layer(variable.path.split("/")[0])
        old_var = [w for w in old.trainable_weights if w.path == variable.path][0]
        old_t = opt.threshold(old_var)
        if old_t is None:
            assert new.threshold(variable) is None
            continue
        old_t = np.asarray(old_t)
        index = _expected_index(model, variable.path)
        want = old_t if old_t.ndim == 0 else old_t[index[-1]].reshape(-1)
        np.testing.assert_allclose(np.asarray(new.threshold(variable)), want, rtol=1e-6)


def test_fan_in_scales_stay_the_big_models():
    opt = DessiLBI(0.05, mu=5.0, lambda_=0.1, structure={"hidden/kernel": "elementwise"})
    model = _trained(opt)
    small, report = tf_dessilbi.shrink(model, _keep(model), return_report=True)
    new = carry.carry_optimizer(model, small, report)
    old_kernel = model.get_layer("hidden").kernel
    new_kernel = small.get_layer("hidden").kernel
    assert new_kernel.shape[0] < old_kernel.shape[0]
    np.testing.assert_allclose(float(new.threshold(new_kernel)), float(opt.threshold(old_kernel)))


def test_bad_arguments():
    model = _trained(keras.optimizers.SGD(0.1, momentum=0.9))
    small, report = tf_dessilbi.shrink(model, _keep(model), return_report=True)
    with pytest.raises(TypeError, match="`report` must be a ShrinkReport"):
        carry.carry_optimizer(model, small, {"conv1": []})
    unbuilt = _cnn()
    unbuilt.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    with pytest.raises(ValueError, match="needs a built optimizer"):
        carry.carry_optimizer(unbuilt, small, report)
    with pytest.raises(ValueError, match="is not a variable of model"):
        carry.cut_like_weights(model, report, {"nope/kernel": np.zeros(3)})
    with pytest.raises(ValueError, match="has shape"):
        carry.cut_like_weights(model, report, {"conv1/bias": np.zeros(3)})

"""Gradual magnitude pruning: Zhu & Gupta's schedule on |W|, TF-MOT's API, strip."""

import types

import keras
import ml_collections
import numpy as np
import pytest
from keras import ops

import tf_dessilbi as tfd
from tf_dessilbi import sparse
from tf_dessilbi.sparse import gmp
from tf_dessilbi.sparse import updater as updater_lib


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="small_cnn")


def data(n=64):
    rng = np.random.RandomState(0)
    return rng.randn(n, 8, 8, 1).astype("float32"), rng.randint(0, 3, n).astype("int32")


def compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def masks_of(model):
    return {t.key: np.asarray(ops.convert_to_numpy(t.mask)).copy() for t in updater_lib.targets(model)}


def weights_of(model):
    return {t.key: np.asarray(ops.convert_to_numpy(t.weight)).copy() for t in updater_lib.targets(model)}


def reference_prune(mask, weight, sparsity):
    """Keep the round((1 − s)·n) active weights of largest |W| (ties: lower flat index)."""
    k = min(int(mask.sum()), int(np.floor((1 - sparsity) * mask.size + 0.5)))
    score = np.where(mask.ravel(), np.abs(weight.ravel()).astype(np.float64), -np.inf)
    order = sorted(range(score.size), key=lambda i: (-score[i], i))
    keep = np.zeros(mask.size, bool)
    keep[order[:k]] = True
    return keep.reshape(mask.shape)


def test_each_prune_step_matches_the_reference():
    schedule = sparse.PolynomialDecay(0.2, 0.9, begin_step=0, end_step=12, frequency=3)
    model = compiled(sparse.prune_low_magnitude(small_cnn(), schedule))
    u = sparse.callback.attached(model)[0]
    x, y = data(24)
    for step in (0, 3, 6, 9, 12):  # a custom loop: the due update, then 3 training steps
        masks, weights = masks_of(model), weights_of(model)
        s_t = schedule(step)[1]
        assert sparse.update_masks(model, u, step) == [u]
        for key, m in masks_of(model).items():
            np.testing.assert_array_equal(m, reference_prune(masks[key], weights[key], s_t))
            assert not (m & ~masks[key]).any()  # pruned weights never return
        assert sparse.update_masks(model, u, step + 1) == []
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)


def test_fit_reaches_the_final_sparsity_per_layer_and_strip_gives_w_times_m():
    schedule = sparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=16, frequency=4)
    model = compiled(sparse.prune_low_magnitude(small_cnn(), schedule))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[sparse.UpdatePruningStep()])
    for t in updater_lib.targets(model):
        n = int(np.prod(t.weight.shape))
        assert int(np.asarray(ops.convert_to_numpy(t.mask)).sum()) == int(np.floor(0.2 * n + 0.5))
    plain = tfd.strip(model)
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in plain.layers)
    by_name = {layer.name: layer for layer in plain.layers}
    for t in updater_lib.targets(model):
        w = np.asarray(ops.convert_to_numpy(t.weight))
        m = np.asarray(ops.convert_to_numpy(t.mask))
        np.testing.assert_array_equal(by_name[t.wrapper.layer.name].kernel.numpy(), np.where(m, w, 0))
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert type(sparse.strip_pruning(model).get_layer("fc")) is keras.layers.Dense


def test_global_scope_and_layer_names():
    model = sparse.prune_low_magnitude(small_cnn(), sparse.ConstantSparsity(0.5, 0), scope="global",
                                       layer_names=["fc", "out"])
    assert [t.key for t in updater_lib.targets(model)] == ["fc/kernel", "out/kernel"]
    u = sparse.callback.attached(model)[0]
    weights = weights_of(model)
    u.update(model, 0)
    flat_w = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    flat_m = np.concatenate([m.ravel() for m in masks_of(model).values()])
    assert flat_m.sum() == int(np.floor(0.5 * flat_w.size + 0.5))
    assert flat_w[flat_m].min() >= flat_w[~flat_m].max()


def test_default_schedule_is_tf_mots():
    model = sparse.prune_low_magnitude(small_cnn())
    schedule = sparse.callback.attached(model)[0].pruning_schedule
    assert schedule.get_config() == {"target_sparsity": 0.5, "begin_step": 0, "end_step": -1,
                                     "frequency": 100}


def test_bad_input_fails_before_anything_changes():
    base = small_cnn()
    before = [w.copy() for w in base.get_weights()]
    with pytest.raises(TypeError, match="cannot mask a Flatten layer"):
        sparse.prune_low_magnitude(base, layer_names=["flatten"])
    with pytest.raises(ValueError, match=r"`layer_names` \['nope'\] name no layer"):
        sparse.prune_low_magnitude(base, layer_names=["nope"])
    with pytest.raises(TypeError, match="`pruning_schedule` must be"):
        sparse.prune_low_magnitude(base, pruning_schedule=0.5)
    with pytest.raises(ValueError, match="`target_sparsity` must be < 1"):
        sparse.prune_low_magnitude(base, sparse.ConstantSparsity(1.0))
    with pytest.raises(ValueError, match="`end_step` must be > `begin_step`"):
        sparse.prune_low_magnitude(base, sparse.PolynomialDecay(0.0, 0.5, 10, 5))
    for a, b in zip(base.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="needs a built model"):
        sparse.prune_low_magnitude(unbuilt)


def test_cli_hooks():
    config = ml_collections.ConfigDict({"num_epochs": 2, "seed": 0, "sparse": {
        "sparsity": 0.75, "initial_sparsity": 0.0, "end_fraction": 0.5, "frequency": 2}})
    fake = types.SimpleNamespace(train=None)
    model = compiled(gmp.prepare(config, small_cnn(), fake, steps_per_epoch=8))
    cbs = gmp.callbacks(config, model, 8)
    assert isinstance(cbs[0], sparse.UpdatePruningStep)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=cbs)
    schedule = sparse.callback.attached(model)[0].pruning_schedule
    assert schedule.end_step == 8 and schedule.frequency == 2
    for t in updater_lib.targets(model):
        n = int(np.prod(t.weight.shape))
        assert int(np.asarray(ops.convert_to_numpy(t.mask)).sum()) == int(np.floor(0.25 * n + 0.5))

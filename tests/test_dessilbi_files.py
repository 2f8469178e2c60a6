"""Γ is computed from V, not stored: state saved by release 0.1 (Γ a slot) still loads.

``tests/data/dessilbi_v0_1*`` were written by tf_dessilbi 0.1.0 (commit
85949de) after 3 epochs of a tiny Conv2D+Dense model: a `.keras` file, a
`.weights.h5` file and a `tf.train.Checkpoint`, with the V, Γ and logits
expected after loading.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import tf_dessilbi

DATA = os.path.join(os.path.dirname(__file__), "data")


def _expected():
    with np.load(os.path.join(DATA, "dessilbi_v0_1_expected.npz")) as data:
        return {k: data[k] for k in data.files}


def _check_state(model, opt, expected):
    gammas = [v for k, v in expected.items() if k.startswith("gamma_")]
    assert any(np.any(g == 0) for g in gammas) and all(np.any(g != 0) for g in gammas)  # prox matters
    for variable, _ in opt.coupled_variables():
        key = variable.path.replace("/", "_")
        np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(variable)), expected[f"v_{key}"])
        np.testing.assert_allclose(ops.convert_to_numpy(opt.gamma(variable)), expected[f"gamma_{key}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["logits"], rtol=1e-5, atol=1e-6)


def _fresh():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    opt = tf_dessilbi.DessiLBI(learning_rate=0.5, mu=1.0, lambda_=0.02)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    opt.build(model.trainable_variables)
    return model, opt


def test_the_optimizer_stores_momentum_and_v_only():
    model, opt = _fresh()
    coupled = sum(int(np.prod(v.shape)) for v, _ in opt.coupled_variables())
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    slot_floats = sum(int(np.prod(v.shape)) for v in opt.variables) - 5  # iteration, lr, κ, μ, λ
    assert slot_floats == params + coupled  # momentum for every parameter, V for coupled ones
    assert not [v.path for v in opt.variables if "gamma" in v.path]


def test_a_keras_file_of_release_0_1_loads_with_gamma_rebuilt_from_v():
    model = keras.models.load_model(os.path.join(DATA, "dessilbi_v0_1.keras"))
    _check_state(model, model.optimizer, _expected())


def test_a_weights_file_of_release_0_1_loads():
    model, opt = _fresh()
    model.load_weights(os.path.join(DATA, "dessilbi_v0_1.weights.h5"))
    _check_state(model, opt, _expected())


def test_a_tf_checkpoint_of_release_0_1_restores():
    model, opt = _fresh()
    tf.train.Checkpoint(model=model, optimizer=opt).read(os.path.join(DATA, "dessilbi_v0_1_ckpt")).expect_partial()
    _check_state(model, opt, _expected())


def test_training_resumes_identically_after_loading():
    a = keras.models.load_model(os.path.join(DATA, "dessilbi_v0_1.keras"))
    b = keras.models.load_model(os.path.join(DATA, "dessilbi_v0_1.keras"))
    x = np.random.RandomState(1).randn(8, 6, 6, 1).astype("float32")
    y = np.arange(8) % 2
    for model in (a, b):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(wa), ops.convert_to_numpy(wb))


@pytest.mark.parametrize("extra", [1, 3])
def test_a_store_of_another_length_is_not_reinterpreted(extra):
    model, opt = _fresh()
    values = [ops.convert_to_numpy(v) for v in opt.variables] + [np.zeros(1)] * extra
    assert opt._drop_stored_gammas(values) == values or extra == 2


def _init_norm_model(tmp_path, lambda_scaling="init_norm"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(6, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    opt = tf_dessilbi.DessiLBI(learning_rate=0.5, mu=1.0, lambda_=1.5, lambda_scaling=lambda_scaling)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    initial = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    x = np.random.RandomState(1).randn(16, 6, 6, 1).astype("float32")
    y = np.arange(16) % 2
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    return model, opt, initial, x


@pytest.mark.parametrize("lambda_scaling", ["init_norm", "unit_init_norm"])
def test_init_norm_scales_are_the_initial_weights_and_survive_saving(tmp_path, lambda_scaling):
    from tf_dessilbi.dessilbi import slbi

    model, opt, initial, x = _init_norm_model(tmp_path, lambda_scaling)
    scale = slbi.init_norm_scale if lambda_scaling == "init_norm" else slbi.unit_init_norm_scale
    want = {v.path: scale(initial[v.path], s) for v, s in opt.coupled_variables()}
    for i, (v, s) in enumerate(zip(opt._trainable_variables, opt._structures)):
        if s is not None:
            got = ops.convert_to_numpy(opt._threshold(i, "float32"))
            assert np.shape(got) == np.shape(want[v.path])  # one per unit with unit_init_norm
            np.testing.assert_allclose(got, 1.5 * np.asarray(want[v.path]), rtol=1e-6)
    supports = {v.path: ops.convert_to_numpy(opt.support(v)) for v, _ in opt.coupled_variables()}
    assert all(0 < s.sum() < s.size for s in supports.values())  # λ·c is selective here
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    # Rebuilt on the trained weights, the scales must come from the file, not be re-measured.
    for v, _ in loaded.optimizer.coupled_variables():
        np.testing.assert_array_equal(ops.convert_to_numpy(loaded.optimizer.support(v)), supports[v.path])
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    ckpt = str(tmp_path / "ckpt")
    tf.train.Checkpoint(model=model, optimizer=opt).write(ckpt)
    fresh, fresh_opt, _, _ = _init_norm_model(tmp_path, lambda_scaling)
    for variable in fresh_opt.variables:
        variable.assign(ops.zeros_like(variable))
    tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).read(ckpt).assert_consumed()
    for v, _ in fresh_opt.coupled_variables():
        np.testing.assert_array_equal(ops.convert_to_numpy(fresh_opt.support(v)), supports[v.path])

"""SET and RigL: initial masks at the layer densities, fixed count, zero growth, RigL's dense gradient."""

import types

import keras
import ml_collections
import numpy as np
import pytest
from keras import ops

from tf_dessilbi import sparse
from tf_dessilbi.sparse import densities, rigl, set_, topk
from tf_dessilbi.sparse import updater as updater_lib

tf_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="GradientTape")


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="small_cnn")


def data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8, 8, 1).astype("float32"), rng.randint(0, 3, n).astype("int32")


def compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def np_(x):
    return np.asarray(ops.convert_to_numpy(x)).copy()


def state(model):
    return {t.key: (np_(t.weight), np_(t.mask)) for t in updater_lib.targets(model)}


def ref_drop_grow(mask, drop, grow, k):
    def rank(score, cand, k):
        flat = np.where(cand.ravel(), score.ravel().astype(np.float64), -np.inf)
        return sorted(range(flat.size), key=lambda i: (-flat[i], i))[:k]
    kept = np.zeros(mask.size, bool)
    kept[rank(drop, mask, int(mask.sum()) - k)] = True
    grown = np.zeros(mask.size, bool)
    grown[rank(grow, ~kept.reshape(mask.shape), k)] = True
    return (kept | grown).reshape(mask.shape), grown.reshape(mask.shape) & ~mask


@pytest.mark.parametrize("distribution", ["erdos_renyi_kernel", "uniform"])
def test_initial_masks_at_the_layer_densities(distribution):
    u = sparse.SET(end_step=100)
    model = set_.sparsify(small_cnn(), 0.8, u, distribution=distribution, seed=3)
    shapes = densities.model_shapes(model)
    want = densities.densities(distribution, shapes, 0.2)
    for key, (_, m) in state(model).items():
        assert m.sum() == topk.kept_count(m.size, want[key])
    again = set_.sparsify(small_cnn(), 0.8, sparse.SET(end_step=100), distribution=distribution, seed=3)
    other = set_.sparsify(small_cnn(), 0.8, sparse.SET(end_step=100), distribution=distribution, seed=4)
    s, a, o = state(model), state(again), state(other)
    assert all((s[k][1] == a[k][1]).all() for k in s)  # deterministic for a seed
    assert any((s[k][1] != o[k][1]).any() for k in s)


@tf_only
def test_effective_gradient_is_the_dense_gradient_and_restores_state():
    import tensorflow as tf

    model = compiled(set_.sparsify(small_cnn(), 0.7, sparse.SET(end_step=10), distribution="uniform"))
    x, y = data(16)
    before = state(model)
    grads = rigl.effective_gradients(model, x, y)
    after = state(model)
    for key in before:  # W and M exactly as they were
        np.testing.assert_array_equal(before[key][0], after[key][0])
        np.testing.assert_array_equal(before[key][1], after[key][1])
    # Independent reference: a plain model whose kernels are W ⊙ M, gradient w.r.t. its kernels.
    plain = small_cnn()
    for layer in plain.layers:
        key = f"{layer.name}/kernel"
        if key in before:
            w, m = before[key]
            layer.kernel.assign(np.where(m, w, 0.0))
            layer.bias.assign(np_(model.get_layer(f"{layer.name}_masked").layer.bias))
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, plain(x))
    kernels = [layer.kernel for layer in plain.layers if f"{layer.name}/kernel" in before]
    ref = tape.gradient(loss, kernels)
    for key, g in zip([f"{layer.name}/kernel" for layer in plain.layers if f"{layer.name}/kernel" in before], ref):
        np.testing.assert_allclose(np_(grads[key]), g.numpy(), rtol=1e-4, atol=1e-6)
        assert np.abs(np_(grads[key])[~before[key][1]]).sum() > 0  # dense: nonzero where M = 0


def test_rigl_update_matches_reference_and_zeroes_growth():
    u = sparse.RigL(end_step=1000, delta_t=10)
    model = set_.sparsify(small_cnn(), 0.75, u, distribution="uniform")
    rng = np.random.RandomState(0)
    before = state(model)
    grads = {k: rng.randn(*w.shape).astype("float32") for k, (w, _) in before.items()}
    assert sparse.update_masks(model, u, 10, grads=grads) == [u]
    f = 0.3 / 2 * (1 + np.cos(np.pi * 10 / 1000))
    for key, (w, m) in state(model).items():
        w0, m0 = before[key]
        k = int(np.floor(f * m0.sum() + 0.5))
        want, newly = ref_drop_grow(m0, np.abs(w0), np.abs(grads[key]), k)
        np.testing.assert_array_equal(m, want)
        assert m.sum() == m0.sum() and newly.sum() > 0
        assert np.all(w[newly] == 0.0)
    with pytest.raises(ValueError, match=r"gradient for 'conv/kernel' has shape"):
        sparse.update_masks(model, u, 20, grads={**grads, "conv/kernel": np.ones(3, "float32")})
    with pytest.raises(ValueError, match="RigL needs the dense gradient"):
        sparse.update_masks(model, u, 20)


def test_set_grows_only_inactive_and_keeps_count():
    u = sparse.SET(end_step=1000, delta_t=10, seed=1)
    model = set_.sparsify(small_cnn(), 0.75, u, distribution="uniform")
    before = state(model)
    assert sparse.update_masks(model, u, 0) == [u]
    for key, (w, m) in state(model).items():
        w0, m0 = before[key]
        k = int(np.floor(0.3 * m0.sum() + 0.5))
        assert m.sum() == m0.sum()
        score = np.where(m0.ravel(), np.abs(w0.ravel()).astype(np.float64), -np.inf)
        order = sorted(range(score.size), key=lambda i: (-score[i], i))
        kept = np.zeros(m0.size, bool)
        kept[order[:int(m0.sum()) - k]] = True
        kept = kept.reshape(m0.shape)
        assert (m & kept).sum() == kept.sum()  # the largest active |W| survive
        assert (m & ~kept).sum() == k  # k grown among the inactive-after-drop weights
        newly = m & ~m0
        assert np.all(w[newly] == 0.0)


@tf_only
def test_rigl_in_fit_keeps_count_exactly():
    import tensorflow as tf

    x, y = data()
    batches = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=1).batch(16).repeat()
    model = compiled(rigl.sparsify(small_cnn(), 0.8, total_steps=24, batches=batches, delta_t=3))
    u = sparse.callback.attached(model)[0]
    assert u.update_schedule.end_step == 18 and u.drop_fraction.initial_fraction == 0.3
    counts = {k: m.sum() for k, (_, m) in state(model).items()}
    first = state(model)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[sparse.UpdateMasks()])
    assert u.updates == 6  # t = 0, 3, ..., 15 (f = 0 at T_end = 18)
    after = state(model)
    assert {k: m.sum() for k, (_, m) in after.items()} == counts
    assert any((after[k][1] != first[k][1]).any() for k in after)


def test_defaults():
    u = sparse.RigL(end_step=750)
    assert u.update_schedule.delta_t == 100 and u.drop_fraction(0) == pytest.approx(0.3)
    model = rigl.sparsify(small_cnn(), 0.9, total_steps=1000)
    assert sparse.callback.attached(model)[0].update_schedule.end_step == 750


@pytest.mark.parametrize("call, error, match", [
    (lambda m: rigl.sparsify(m, 1.0, 100), ValueError, r"`sparsity` must be < 1. Received: sparsity=1"),
    (lambda m: rigl.sparsify(m, -0.5, 100), ValueError, r"`sparsity` must be >= 0"),
    (lambda m: rigl.sparsify(m, 0.9, 100, delta_t=0), ValueError, r"`delta_t` must be >= 1"),
    (lambda m: rigl.sparsify(m, 0.9, 100, end_fraction=0.0), ValueError, r"`end_fraction` must be > 0"),
    (lambda m: sparse.SET(end_step=10, begin_step=20), ValueError, r"`end_step` must be > `begin_step`"),
    (lambda m: set_.sparsify(m, 0.9, "rigl"), TypeError, r"`updater` must be a MaskUpdater"),
    (lambda m: set_.sparsify(m, 0.9, sparse.SET(end_step=10), distribution="magic"), ValueError,
     r"`method` must be one of"),
    (lambda m: rigl.sparsify(m, 0.9999, 100), ValueError, r"unreachable"),
])
def test_bad_input_before_training(call, error, match):
    model = small_cnn()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        call(model)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@tf_only
@pytest.mark.parametrize("module", [set_, rigl])
def test_cli_hooks(module):
    import tensorflow as tf

    x, y = data()
    config = ml_collections.ConfigDict({"num_epochs": 2, "seed": 0, "sparse": {
        "sparsity": 0.8, "distribution": "uniform", "delta_t": 2, "drop_fraction": 0.3,
        "end_fraction": 0.75, "first_layer_dense": True}})
    fake = types.SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    model = compiled(module.prepare(config, small_cnn(), fake, steps_per_epoch=8))
    counts = {k: m.sum() for k, (_, m) in state(model).items()}
    assert counts["conv/kernel"] == 36  # first layer dense
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=module.callbacks(config, model, 8))
    u = sparse.callback.attached(model)[0]
    assert u.update_schedule.end_step == 12 and u.updates == 6  # t = 0, 2, ..., 10
    assert {k: m.sum() for k, (_, m) in state(model).items()} == counts

"""UpdateMasks in fit, update_masks in custom loops, and identical masks under MirroredStrategy."""

import keras
import numpy as np
import pytest
from keras import ops

from tf_dessilbi import sparse
from tf_dessilbi.layers import mask_model
from tf_dessilbi.sparse import callback as callback_lib
from tf_dessilbi.sparse import set_
from tf_dessilbi.sparse import updater as updater_lib

tf_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")


def tiny(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="d2")(x), name="tiny")


def data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8).astype("float32"), rng.randint(0, 3, n).astype("int32")


def compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class Recorder(updater_lib.MaskUpdater):
    """Prune-only updater that records the steps it is called at (density stays 1)."""

    def __init__(self, every):
        super().__init__()
        self.every, self.steps = every, []

    def amount(self, step):
        return 1.0 if step % self.every == 0 else None

    def drop_scores(self, targets, gradients):
        self.steps.append(self._step)
        return super().drop_scores(targets, gradients)

    def update(self, model, step, gradients=None):
        self._step = step
        return super().update(model, step, gradients)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_update_masks_called_at_the_due_steps(steps_per_execution):
    model = compiled(mask_model(tiny()))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    rec = Recorder(every=4)
    x, y = data(96)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[sparse.UpdateMasks(rec)])
    # 24 steps; t = 0 at train begin, then every 4th (with 3 steps per execution the
    # due step is caught at the next callback call, with its own t).
    assert rec.steps == [0, 4, 8, 12, 16, 20, 24]


def test_set_in_fit_keeps_count_and_changes_mask():
    u = sparse.SET(end_step=20, delta_t=2, initial_fraction=0.5)
    model = compiled(set_.sparsify(tiny(), 0.5, u, distribution="uniform"))
    before = [np.asarray(ops.convert_to_numpy(t.mask)).copy() for t in updater_lib.targets(model)]
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[sparse.UpdateMasks()])
    after = [np.asarray(ops.convert_to_numpy(t.mask)) for t in updater_lib.targets(model)]
    assert [a.sum() for a in after] == [b.sum() for b in before]
    assert any((a != b).any() for a, b in zip(after, before))
    assert u.updates == 9  # t = 0, 2, ..., 16 (t = 18 is the last step: f > 0 up to T_end)


def test_update_masks_in_a_custom_loop():
    u = sparse.SET(end_step=10, delta_t=5)
    model = set_.sparsify(tiny(), 0.8, u, distribution="uniform")
    assert [x.name for x in sparse.update_masks(model, u, 5)] == ["SET"]
    assert sparse.update_masks(model, [u], 6) == []
    with pytest.raises(TypeError, match="must be tf_dessilbi.sparse.MaskUpdater"):
        sparse.update_masks(model, ["SET"], 5)


def test_callback_without_updaters_or_with_a_foreign_model_fails_before_training():
    model = compiled(mask_model(tiny()))
    x, y = data(16)
    with pytest.raises(ValueError, match="found no mask updater"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[sparse.UpdateMasks()])
    u = sparse.SET(end_step=10, delta_t=5)
    set_.sparsify(tiny(), 0.5, u)
    inputs = keras.Input((8,))
    other = compiled(mask_model(keras.Model(inputs, keras.layers.Dense(3, name="z")(inputs))))
    w = other.get_weights()
    with pytest.raises(ValueError, match="use one updater per model"):
        other.fit(x, y, epochs=1, verbose=0, callbacks=[sparse.UpdateMasks(u)])
    for a, b in zip(other.get_weights(), w):
        np.testing.assert_array_equal(a, b)


def _two_cpus():
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (tests/conftest.py)")
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@tf_only
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_mirrored_strategy_masks_identical_on_replicas(method):
    import tensorflow as tf

    strategy = _two_cpus()
    x, y = data(64)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    with strategy.scope():
        if method == "set":
            model = set_.sparsify(tiny(), 0.6, sparse.SET(end_step=30, delta_t=2), distribution="uniform")
        else:
            model = sparse.rigl.sparsify(tiny(), 0.6, total_steps=16, batches=batches, delta_t=2,
                                         end_fraction=1.0, distribution="uniform")
        compiled(model)
    counts = [int(np.asarray(ops.convert_to_numpy(t.mask)).sum()) for t in updater_lib.targets(model)]
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[sparse.UpdateMasks()])
    assert callback_lib.attached(model)[0].updates >= 5
    for t, count in zip(updater_lib.targets(model), counts):
        replicas = [np.asarray(v.numpy()) for v in t.mask.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
        assert replicas[0].sum() == count
        weights = [np.asarray(v.numpy()) for v in t.weight.value.values]
        np.testing.assert_allclose(weights[0], weights[1], rtol=1e-6, atol=1e-7)


@tf_only
def test_update_masks_refuses_replica_context():
    strategy = _two_cpus()
    with strategy.scope():
        u = sparse.SET(end_step=10, delta_t=5)
        model = set_.sparsify(tiny(), 0.5, u)
    errors = []

    def step():
        try:
            sparse.update_masks(model, u, 5)
        except RuntimeError as e:
            errors.append(str(e))

    strategy.run(step)
    assert errors and "cross-replica context" in errors[0]


def test_consecutive_fits_update_each_step_once():
    model = compiled(mask_model(tiny()))
    rec = Recorder(every=4)
    cb = sparse.UpdateMasks(rec)
    x, y = data(32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])  # steps 1..4
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])  # begins at t = 4
    assert rec.steps == [0, 4, 8]

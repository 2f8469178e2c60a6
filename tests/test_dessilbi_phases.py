"""`SteadyPathSpeed` (μ tracks a decaying α) and `WStarFinetune` (train W* on its support).

Backend-agnostic (pure Keras 3): tests/test_backends.py reruns this file under
the JAX and PyTorch backends.
"""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tf_dessilbi.dessilbi import finetune
from tf_dessilbi.dessilbi import path_speed
from tf_dessilbi.dessilbi.fork import Fork


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32") + 2 * (x[..., 1].mean(axis=(1, 2)) > 0)
    return x, y.astype("int32")


def _model(bn=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, use_bias=not bn, name="conv")(inputs)
    if bn:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs)


def _compile(model, lr, **kwargs):
    opt = DessiLBI(lr, **{"kappa": 1.0, "mu": 5.0, "lambda_": 0.3, **kwargs})
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return opt


def _reference_path(recorder, **kwargs):
    """The free path (no fine-tune) of the test model, seen by a NumPy ``recorder`` callback."""
    x, y = _data()
    model = _model()
    _compile(model, 0.2, **kwargs)
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[recorder])
    return recorder


class _Trace(keras.callbacks.Callback):
    """μ and α as the step about to run sees them (runs after the callback under test)."""

    def __init__(self):
        super().__init__()
        self.mu, self.lr = [], []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.mu.append(float(ops.convert_to_numpy(opt.mu)))
        self.lr.append(float(ops.convert_to_numpy(opt.learning_rate)))


def _warmup_cosine(total, warmup, peak):
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, alpha=0.0,
                                                  warmup_target=peak, warmup_steps=warmup)


def _reference_mu(lrs, mu0, floor, peak=0.0):
    """NumPy: μ_k = μ₀·min(1, max(α_k/α_peak, floor)), α_peak the running max of α."""
    out, running = [], peak
    for lr in lrs:
        running = max(running, lr)
        out.append(mu0 if running == 0 else mu0 * min(1.0, max(lr / running, floor)))
    return np.array(out)


def test_path_mu_formula():
    assert path_speed.path_mu(20.0, 0.05, 0.05, 1e-3) == 20.0
    assert path_speed.path_mu(20.0, 0.0125, 0.05, 1e-3) == pytest.approx(5.0)
    assert path_speed.path_mu(20.0, 0.0, 0.05, 1e-3) == pytest.approx(0.02)
    assert path_speed.path_mu(20.0, 0.1, 0.05, 1e-3) == 20.0  # never above μ₀


def test_steady_path_speed_follows_the_decay_and_restores_mu():
    x, y = _data()
    model = _model()
    steps, warmup = 16, 4  # 4 batches of 16 per epoch, 4 epochs
    opt = _compile(model, _warmup_cosine(steps, warmup, 0.2))
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
              callbacks=[path_speed.SteadyPathSpeed(floor=0.05), trace])
    np.testing.assert_allclose(trace.mu, _reference_mu(trace.lr, 5.0, 0.05), rtol=1e-5)
    # Warm-up: the paper's μ; decay: α/μ held at the peak's 0.2/5 (until the floor).
    assert trace.mu[:warmup + 1] == pytest.approx([5.0] * (warmup + 1))
    speed = np.array(trace.lr[warmup:]) / np.array(trace.mu[warmup:])
    above_floor = np.array(trace.lr[warmup:]) > 0.05 * 0.2
    np.testing.assert_allclose(speed[above_floor], 0.2 / 5.0, rtol=1e-5)
    assert trace.mu[-1] < 5.0 * 0.5  # it really moved
    assert float(ops.convert_to_numpy(opt.mu)) == 5.0  # μ₀ back for the config
    assert opt.get_config()["mu"] == 5.0


def test_steady_path_speed_resumed_mid_decay_keeps_the_peak():
    """A second fit in the decay phase reads α_peak from the schedule, not from α now."""
    x, y = _data()
    model = _model()
    opt = _compile(model, _warmup_cosine(16, 4, 0.2))
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)  # 8 steps, peak passed
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[path_speed.SteadyPathSpeed(floor=0.05), trace])
    np.testing.assert_allclose(trace.mu, _reference_mu(trace.lr, 5.0, 0.05, peak=0.2), rtol=1e-5)
    assert trace.mu[0] < 5.0
    assert float(ops.convert_to_numpy(opt.mu)) == 5.0


def test_steady_path_speed_moves_v_further_under_decay():
    """V's path time Σα/μ: the steady run's V travels further than the paper's."""
    x, y = _data()
    norms = []
    for callbacks in ([], [path_speed.SteadyPathSpeed()]):
        model = _model()
        opt = _compile(model, _warmup_cosine(16, 4, 0.2))
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
        norms.append(float(np.linalg.norm(ops.convert_to_numpy(opt.v(model.get_layer("conv").kernel)))))
    assert norms[1] > 1.2 * norms[0]


def test_steady_path_speed_arguments_and_optimizer():
    with pytest.raises(ValueError, match="floor"):
        path_speed.SteadyPathSpeed(floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        path_speed.SteadyPathSpeed(floor=1.5)
    with pytest.raises(TypeError, match="floor"):
        path_speed.SteadyPathSpeed(floor="x")
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="needs a tf_dessilbi.DessiLBI optimizer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[path_speed.SteadyPathSpeed()])


class _Snapshots(keras.callbacks.Callback):
    """W and supp Γ of the conv kernel at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.w, self.support = [], []

    def on_epoch_end(self, epoch, logs=None):
        kernel = self.model.get_layer("conv").kernel
        self.w.append(ops.convert_to_numpy(kernel).copy())
        self.support.append(ops.convert_to_numpy(self.model.optimizer.support(kernel)).copy())


def _assert_is_w_star(model, opt, bn=False):
    for name in ("conv", "hidden", "head"):
        layer = model.get_layer(name)
        w = ops.convert_to_numpy(layer.kernel)
        support = ops.convert_to_numpy(opt.support(layer.kernel))
        np.testing.assert_array_equal(w[~support], 0)
        kept = support.reshape(-1, support.shape[-1]).any(axis=0)
        if layer.bias is not None:
            np.testing.assert_array_equal(ops.convert_to_numpy(layer.bias)[~kept], 0)
    if bn:
        kept = ops.convert_to_numpy(opt.support(model.get_layer("conv").kernel))
        kept = kept.reshape(-1, kept.shape[-1]).any(axis=0)
        norm = model.get_layer("bn")
        np.testing.assert_array_equal(ops.convert_to_numpy(norm.gamma)[~kept], 0)
        np.testing.assert_array_equal(ops.convert_to_numpy(norm.beta)[~kept], 0)


@pytest.mark.parametrize("bn,decouple", [(False, True), (True, True), (False, False), (True, False)])
def test_w_star_finetune_ends_at_w_star_and_freezes_entries(bn, decouple):
    x, y = _data()
    model = _model(bn=bn)
    opt = _compile(model, 0.2, structure="auto")
    snaps = _Snapshots()
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[finetune.WStarFinetune(3, decouple=decouple), snaps, trace])
    mu_during = set(trace.mu[12:])  # 4 steps per epoch: epochs 3, 4
    assert mu_during == ({finetune.DECOUPLED_MU} if decouple else {5.0})
    assert set(trace.mu[:12]) == {5.0}
    assert float(ops.convert_to_numpy(opt.mu)) == 5.0
    if decouple:  # V, hence the support, is fixed
        for later in snaps.support[3:]:
            np.testing.assert_array_equal(later, snaps.support[2])
    # Before the fine-tune W is dense off the support; at the end W == W*.
    assert np.any(snaps.w[2][~snaps.support[2]] != 0)
    assert snaps.support[2].any() and not snaps.support[2].all()  # a selective support
    _assert_is_w_star(model, opt, bn=bn)
    # No weight enters the support during the fine-tune (V is still off it).
    start = snaps.support[2]
    for later in snaps.support[3:]:
        assert not np.any(later & ~start)
    # Evaluating the model is evaluating W*: apply_w_star changes nothing.
    before = [ops.convert_to_numpy(v).copy() for v in model.weights]
    with tf_dessilbi.apply_w_star(model, opt):
        after = [ops.convert_to_numpy(v) for v in model.weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_w_star_finetune_with_steady_path_speed_keeps_mu_decoupled_then_restores_it():
    x, y = _data()
    model = _model()
    opt = _compile(model, _warmup_cosine(20, 4, 0.2), structure="auto")
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[finetune.WStarFinetune(3), path_speed.SteadyPathSpeed(), trace])
    assert set(trace.mu[12:]) == {finetune.DECOUPLED_MU}  # SteadyPathSpeed yields
    assert min(trace.mu[4:12]) < 5.0  # and it ran before
    assert float(ops.convert_to_numpy(opt.mu)) == 5.0
    assert not finetune.is_decoupled(opt)


def test_w_star_finetune_trains_the_support():
    """The fine-tune is training, not a freeze: W* moves and the loss keeps falling."""
    x, y = _data()
    model = _model()
    opt = _compile(model, 0.2, structure="auto")
    snaps = _Snapshots()
    history = model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
                        callbacks=[finetune.WStarFinetune(3), snaps])
    w3 = np.where(snaps.support[2], snaps.w[2], 0)
    assert np.abs(snaps.w[4] - w3)[snaps.support[4]].max() > 1e-4
    assert history.history["loss"][-1] < history.history["loss"][3]
    assert opt.iterations is not None


def test_w_star_finetune_arguments_and_optimizer():
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0. Received: epoch=-1"):
        finetune.WStarFinetune(-1)
    with pytest.raises(TypeError, match=r"`fork` must be a tf_dessilbi.Fork or an int epoch.*fork=1.5"):
        finetune.WStarFinetune(1.5)
    with pytest.raises(TypeError, match="prune_bias"):
        finetune.WStarFinetune(1, prune_bias="yes")
    with pytest.raises(TypeError, match="decouple"):
        finetune.WStarFinetune(1, decouple=1)
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="needs a tf_dessilbi.DessiLBI optimizer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[finetune.WStarFinetune(0)])


class _UnitFraction(keras.callbacks.Callback):
    """NumPy: the fraction of conv filters in supp Γ after every step."""

    def __init__(self):
        super().__init__()
        self.fractions = []

    def on_train_batch_end(self, batch, logs=None):
        support = ops.convert_to_numpy(self.model.optimizer.support(self.model.get_layer("conv").kernel))
        self.fractions.append(float(support.reshape(-1, support.shape[-1]).any(axis=0).mean()))


def test_w_star_finetune_starts_when_the_support_holds_the_units_fraction():
    x, y = _data()
    reference = _reference_path(_UnitFraction(), structure="auto")  # conv filters as groups, dense weights elementwise
    fractions = np.array(reference.fractions)
    rho = next(f for f in fractions if 0.0 < f < fractions.max())  # reached mid-run
    every = 2
    want = next(step for step in range(every, len(fractions) + 1, every) if fractions[step - 1] >= rho)
    assert 0 < want < len(fractions) - 2

    model = _model()
    opt = _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(Fork(units=rho, check_every=every))
    trace, after = _Trace(), _UnitFraction()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[callback, trace, after])
    assert callback.started_at_step == want
    assert set(trace.mu[:want]) == {5.0} and set(trace.mu[want:]) == {finetune.DECOUPLED_MU}
    np.testing.assert_allclose(after.fractions[:want], fractions[:want])  # the same path until then
    assert set(after.fractions[want - 1:]) == {after.fractions[want - 1]}  # then the support is fixed
    assert after.fractions[want - 1] >= rho
    _assert_is_w_star(model, opt)
    assert float(ops.convert_to_numpy(opt.mu)) == 5.0
    assert finetune.support_unit_fraction(opt) == pytest.approx(after.fractions[-1])
    config = callback.get_config()
    assert config == {"fork": {"epoch": None, "units": rho, "weights": None, "trim": False,
                               "round_to": 1, "dependency_groups": False, "check_every": every},
                      "decouple": True, "prune_bias": True, "allow_empty_layers": False}
    assert finetune.WStarFinetune.from_config(config).get_config() == config


class _WeightFraction(keras.callbacks.Callback):
    """NumPy: |supp Γ| / |W| over the model's kernels after every step (all are coupled)."""

    def __init__(self):
        super().__init__()
        self.fractions = []

    def on_train_batch_end(self, batch, logs=None):
        supports = [ops.convert_to_numpy(self.model.optimizer.support(layer.kernel))
                    for layer in self.model.layers if hasattr(layer, "kernel")]
        self.fractions.append(sum(float(m.sum()) for m in supports) / sum(m.size for m in supports))


def test_w_star_finetune_starts_when_the_support_holds_the_weights_fraction():
    """An elementwise run: the fine-tune starts at the first check where |supp Γ| / |W| ≥ ρ_w."""
    x, y = _data()
    reference = _reference_path(_WeightFraction(), structure="elementwise")
    fractions = np.array(reference.fractions)
    rho = float(np.quantile(fractions[fractions > 0], 0.3))  # reached mid-run
    want = next(step for step in range(1, len(fractions) + 1) if fractions[step - 1] >= rho)
    assert 0 < want < len(fractions) - 2 and fractions[want - 2] < rho

    model = _model()
    opt = _compile(model, 0.2, structure="elementwise")
    callback = finetune.WStarFinetune(Fork(weights=rho, check_every=1))
    trace, after = _Trace(), _WeightFraction()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[callback, trace, after])
    assert callback.started_at_step == want
    assert set(trace.mu[:want]) == {5.0} and set(trace.mu[want:]) == {finetune.DECOUPLED_MU}
    np.testing.assert_allclose(after.fractions[:want], fractions[:want])
    assert set(after.fractions[want - 1:]) == {after.fractions[want - 1]}  # the support is fixed
    _assert_is_w_star(model, opt)
    assert finetune.support_weight_fraction(opt) == pytest.approx(after.fractions[-1])
    assert callback.get_config()["fork"]["weights"] == rho
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="`weights` must be"):
            finetune.WStarFinetune(Fork(weights=bad))


def test_w_star_finetune_start_epoch_comes_first_when_the_fraction_is_never_reached():
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(Fork(epoch=3, units=1.0, check_every=1))
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[callback, trace])
    fraction = finetune.support_unit_fraction(model.optimizer)
    assert fraction < 1.0 and callback.started_at_step == 12
    assert set(trace.mu[12:]) == {finetune.DECOUPLED_MU}


def test_w_star_finetune_units_fraction_arguments():
    with pytest.raises(ValueError, match="WStarFinetune needs `fork`"):
        finetune.WStarFinetune()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="units"):
            finetune.WStarFinetune(Fork(units=bad))
    with pytest.raises(TypeError, match="units"):
        finetune.WStarFinetune(Fork(units="half"))
    with pytest.raises(ValueError, match="check_every"):
        finetune.WStarFinetune(Fork(units=0.5, check_every=0))
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="elementwise")
    with pytest.raises(ValueError, match="couples no kernel by groups"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[finetune.WStarFinetune(Fork(units=0.5, check_every=1))])


class _Emptiness(keras.callbacks.Callback):
    """NumPy: after every step, |supp Γ| / |W| and the coupled kernels whose supp Γ is empty."""

    def __init__(self):
        super().__init__()
        self.fractions, self.empty = [], []

    def on_train_batch_end(self, batch, logs=None):
        opt, kept, total, empty = self.model.optimizer, 0, 0, []
        for layer in self.model.layers:
            if hasattr(layer, "kernel"):
                support = ops.convert_to_numpy(opt.support(layer.kernel))
                kept, total = kept + int(support.sum()), total + support.size
                if not support.any():
                    empty.append(f"{layer.name}/kernel")
        self.fractions.append(kept / total)
        self.empty.append(empty)


def test_w_star_finetune_waits_for_every_coupled_layer_to_keep_a_unit():
    """A fraction reached while a layer's supp Γ is empty does not fix that (dead) support."""
    x, y = _data()
    reference = _reference_path(_Emptiness(), structure="auto")  # the conv filters enter after the dense weights
    fractions, empty = np.array(reference.fractions), reference.empty
    naive = next(i + 1 for i, (f, e) in enumerate(zip(fractions, empty)) if f > 0 and e)
    rho = float(fractions[naive - 1])
    want = next(i + 1 for i, (f, e) in enumerate(zip(fractions, empty)) if f >= rho and not e)
    assert naive < want < len(fractions) - 2  # a crossing with an empty layer, filled later

    model = _model()
    opt = _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(Fork(weights=rho, check_every=1))
    trace = _Trace()
    with pytest.warns(UserWarning, match=r"empty in conv/kernel.*waits"):
        model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
                  callbacks=[callback, trace])
    assert callback.started_at_step == want
    assert callback.deferred_for == empty[want - 2] and callback.empty_at_start == []
    assert set(trace.mu[:want]) == {5.0} and set(trace.mu[want:]) == {finetune.DECOUPLED_MU}
    _assert_is_w_star(model, opt)
    assert finetune.empty_coupled_layers(opt) == []

    # allow_empty_layers: the first crossing starts it, empty layer and all.
    model = _model()
    _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(Fork(weights=rho, check_every=1), allow_empty_layers=True)
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.started_at_step == naive and callback.empty_at_start == empty[naive - 1]
    assert callback.deferred_for == []
    assert callback.get_config()["allow_empty_layers"] is True
    with pytest.raises(TypeError, match="allow_empty_layers"):
        finetune.WStarFinetune(1, allow_empty_layers="no")


def test_w_star_finetune_started_by_epoch_on_an_empty_layer_says_so():
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="auto", lambda_=50.0)  # nothing enters in 3 epochs
    callback = finetune.WStarFinetune(2)
    with pytest.warns(UserWarning, match=r"starts at step 8 with supp Γ empty in "
                                         r"conv/kernel, hidden/kernel, head/kernel"):
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.started_at_step == 8
    assert callback.empty_at_start == ["conv/kernel", "hidden/kernel", "head/kernel"]

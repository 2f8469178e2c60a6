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
              callbacks=[finetune.WStarFinetune(start_epoch=3, decouple=decouple), snaps, trace])
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
              callbacks=[finetune.WStarFinetune(start_epoch=3), path_speed.SteadyPathSpeed(), trace])
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
                        callbacks=[finetune.WStarFinetune(start_epoch=3), snaps])
    w3 = np.where(snaps.support[2], snaps.w[2], 0)
    assert np.abs(snaps.w[4] - w3)[snaps.support[4]].max() > 1e-4
    assert history.history["loss"][-1] < history.history["loss"][3]
    assert opt.iterations is not None


def test_w_star_finetune_arguments_and_optimizer():
    with pytest.raises(ValueError, match="start_epoch"):
        finetune.WStarFinetune(start_epoch=-1)
    with pytest.raises(TypeError, match="start_epoch"):
        finetune.WStarFinetune(start_epoch=1.5)
    with pytest.raises(TypeError, match="prune_bias"):
        finetune.WStarFinetune(start_epoch=1, prune_bias="yes")
    with pytest.raises(TypeError, match="decouple"):
        finetune.WStarFinetune(start_epoch=1, decouple=1)
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
    callback = finetune.WStarFinetune(units_fraction=rho, check_every=every)
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
    assert config == {"start_epoch": None, "decouple": True, "prune_bias": True,
                      "units_fraction": rho, "check_every": every, "weights_fraction": None,
                      "allow_empty_layers": False, "trim": False,
                      "dependency_groups": False, "group_margin": "joint", "layer_units": None,
                      "round_to": 1}
    assert finetune.WStarFinetune(**config).get_config() == config


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
    callback = finetune.WStarFinetune(weights_fraction=rho, check_every=1)
    trace, after = _Trace(), _WeightFraction()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[callback, trace, after])
    assert callback.started_at_step == want
    assert set(trace.mu[:want]) == {5.0} and set(trace.mu[want:]) == {finetune.DECOUPLED_MU}
    np.testing.assert_allclose(after.fractions[:want], fractions[:want])
    assert set(after.fractions[want - 1:]) == {after.fractions[want - 1]}  # the support is fixed
    _assert_is_w_star(model, opt)
    assert finetune.support_weight_fraction(opt) == pytest.approx(after.fractions[-1])
    assert callback.get_config()["weights_fraction"] == rho
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="weights_fraction"):
            finetune.WStarFinetune(weights_fraction=bad)


def test_w_star_finetune_start_epoch_comes_first_when_the_fraction_is_never_reached():
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(start_epoch=3, units_fraction=1.0, check_every=1)
    trace = _Trace()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[callback, trace])
    fraction = finetune.support_unit_fraction(model.optimizer)
    assert fraction < 1.0 and callback.started_at_step == 12
    assert set(trace.mu[12:]) == {finetune.DECOUPLED_MU}


def test_w_star_finetune_units_fraction_arguments():
    with pytest.raises(ValueError, match="start_epoch`, `units_fraction` or `weights_fraction"):
        finetune.WStarFinetune()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="units_fraction"):
            finetune.WStarFinetune(units_fraction=bad)
    with pytest.raises(TypeError, match="units_fraction"):
        finetune.WStarFinetune(units_fraction="half")
    with pytest.raises(ValueError, match="check_every"):
        finetune.WStarFinetune(units_fraction=0.5, check_every=0)
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="elementwise")
    with pytest.raises(ValueError, match="couples no kernel by groups"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[finetune.WStarFinetune(units_fraction=0.5, check_every=1)])


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
    callback = finetune.WStarFinetune(weights_fraction=rho, check_every=1)
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
    callback = finetune.WStarFinetune(weights_fraction=rho, check_every=1, allow_empty_layers=True)
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.started_at_step == naive and callback.empty_at_start == empty[naive - 1]
    assert callback.deferred_for == []
    assert callback.get_config()["allow_empty_layers"] is True
    with pytest.raises(TypeError, match="allow_empty_layers"):
        finetune.WStarFinetune(start_epoch=1, allow_empty_layers="no")


def test_w_star_finetune_started_by_epoch_on_an_empty_layer_says_so():
    x, y = _data()
    model = _model()
    _compile(model, 0.2, structure="auto", lambda_=50.0)  # nothing enters in 3 epochs
    callback = finetune.WStarFinetune(start_epoch=2)
    with pytest.warns(UserWarning, match=r"starts at step 8 with supp Γ empty in "
                                         r"conv/kernel, hidden/kernel, head/kernel"):
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.started_at_step == 8
    assert callback.empty_at_start == ["conv/kernel", "hidden/kernel", "head/kernel"]


def _units(opt, layer):
    support = ops.convert_to_numpy(opt.support(layer.kernel))
    return support.reshape(-1, support.shape[-1]).any(axis=0)


def _margins(opt, layer):
    """NumPy: ‖V_g‖₂ / λ_l per unit."""
    v = ops.convert_to_numpy(opt.v(layer.kernel)).astype("float64")
    return np.sqrt((v.reshape(-1, v.shape[-1]) ** 2).sum(0)) / float(ops.convert_to_numpy(
        opt.threshold(layer.kernel)))


def _assert_group_kernels_are_w_star(model, opt, names=("conv", "hidden")):
    """W is W* on the group-coupled kernels: zero off the support, a removed unit's bias too."""
    for name in names:
        layer = model.get_layer(name)
        kept = _units(opt, layer)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel)[..., ~kept], 0)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.bias)[~kept], 0)


def _trained_filters_and_neurons(epochs):
    """The test model after ``epochs`` with conv filters and hidden neurons coupled by groups (λ 0.1).

    Returns the model, the optimizer, the two layers, and per layer the
    units in supp Γ and their margins ‖V_g‖₂ / λ_l (NumPy).
    """
    x, y = _data()
    model = _model()
    opt = _compile(model, 0.2, structure={"conv/kernel": "filter", "hidden/kernel": "neuron"}, lambda_=0.1)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    conv, hidden = model.get_layer("conv"), model.get_layer("hidden")
    units = {layer.name: _units(opt, layer) for layer in (conv, hidden)}
    margins = {layer.name: _margins(opt, layer) for layer in (conv, hidden)}
    return model, opt, conv, hidden, units, margins


def test_trim_units_drops_the_smallest_margins_but_never_a_layers_last_unit():
    model, opt, conv, hidden, units, margins = _trained_filters_and_neurons(epochs=3)
    for name in units:  # in the support ⇔ margin > 1
        np.testing.assert_array_equal(units[name], margins[name] > 1)
    assert units["conv"].sum() >= 3 and units["hidden"].sum() >= 3
    total = int(units["conv"].sum() + units["hidden"].sum())
    # NumPy reference: drop the 2 smallest margins over both layers.
    ranked = sorted((margins[n][u], n, u) for n in units for u in np.flatnonzero(units[n]))
    want = {}
    for _, name, unit in ranked[:2]:
        want.setdefault(f"{name}/kernel", []).append(int(unit))
    assert finetune.trim_units(opt, total - 2) == {k: sorted(v) for k, v in want.items()}
    for layer in (conv, hidden):
        expect = units[layer.name].copy()
        expect[want.get(f"{layer.name}/kernel", [])] = False
        np.testing.assert_array_equal(_units(opt, layer), expect)
    assert finetune.trim_units(opt, total) == {}  # already within the budget: nothing moves
    # keep = 1 over two layers: each keeps its strongest unit.
    finetune.trim_units(opt, 1)
    for layer in (conv, hidden):
        kept = np.flatnonzero(_units(opt, layer))
        assert list(kept) == [int(np.argmax(np.where(units[layer.name], margins[layer.name], -1)))]
    with pytest.raises(ValueError, match=r"coupled by groups.*'head/kernel' has structure None"):
        opt.drop_units(model.get_layer("head").kernel, [0])
    with pytest.raises(ValueError, match=r"`units` must lie in \[0, 8\)"):
        opt.drop_units(conv.kernel, [8])


def test_trim_units_ranks_by_each_units_own_threshold_with_unit_init_norm():
    """λ_g = λ·‖W₀_g‖ per unit: supp Γ and the trim's margins come from each unit's own start."""
    model = _model()
    rng = np.random.default_rng(5)
    # W₀ with chosen unit norms, V_g with chosen margins m_g = ‖V_g‖ / (λ·‖W₀_g‖).
    init_norms = {"conv": np.array([1.0, 3.0, 0.5, 2.0, 1.0, 4.0, 0.7, 1.5]),
                  "hidden": np.array([2.0, 1.0, 3.0, 0.5, 1.0, 0.6])}
    margins = {"conv": np.array([1.3, 0.7, 1.1, 1.45, 0.9, 1.05, 1.2, 0.95]),
               "hidden": np.array([1.25, 0.7, 1.02, 1.5, 0.8, 1.15])}

    def unit_directions(shape):
        d = rng.normal(size=shape)
        return d / np.sqrt((d.reshape(-1, shape[-1]) ** 2).sum(0))

    for name, norms in init_norms.items():
        kernel = model.get_layer(name).kernel
        kernel.assign((unit_directions(kernel.shape) * norms).astype("float32"))
    opt = _compile(model, 0.2, structure={"conv/kernel": "filter", "hidden/kernel": "neuron"},
                   lambda_=0.5, lambda_scaling="unit_init_norm")
    opt.build(model.trainable_variables)  # measures λ_g on these W₀
    v_norms = {}
    for name, m in margins.items():
        kernel = model.get_layer(name).kernel
        v_norms[name] = m * 0.5 * init_norms[name]
        opt._vs[opt._slot_index(kernel)].assign(
            (unit_directions(kernel.shape) * v_norms[name]).astype("float32"))
        np.testing.assert_allclose(ops.convert_to_numpy(opt.threshold(kernel)),
                                   0.5 * init_norms[name], rtol=1e-6)
        np.testing.assert_array_equal(_units(opt, model.get_layer(name)), m > 1)
    total = int(sum((m > 1).sum() for m in margins.values()))

    def smallest(score, k=3):  # NumPy: the k in-support units of smallest score
        ranked = sorted((score[n][u], n, u) for n in margins for u in np.flatnonzero(margins[n] > 1))
        out = {}
        for _, name, unit in ranked[:k]:
            out.setdefault(f"{name}/kernel", []).append(int(unit))
        return {key: sorted(units) for key, units in out.items()}

    want = smallest(margins)
    assert want == {"conv/kernel": [2, 5], "hidden/kernel": [2]}
    assert smallest(v_norms) != want  # ranking by ‖V_g‖ alone (one λ per layer) drops others
    assert finetune.trim_units(opt, total - 3) == want


def test_w_star_finetune_trim_fixes_the_width_exactly():
    """Several filters cross λ in the step that reaches ρ: trim keeps ⌈ρ·N⌉, the last to enter go."""
    x, y = _data()
    reference = _reference_path(_UnitFraction(), structure="auto")
    fractions = np.array(reference.fractions)
    jumps = [i for i in range(1, len(fractions)) if fractions[i] - fractions[i - 1] > 1.5 / 8]
    assert jumps, fractions  # a step where ≥ 2 of the 8 filters enter at once
    step = jumps[0] + 1
    rho = (fractions[step - 2] * 8 + 1) / 8  # one filter more than before: crossed with extras
    keep = int(np.ceil(rho * 8 - 1e-9))

    class _AtStep(keras.callbacks.Callback):  # NumPy: the margins after the crossing step
        def on_train_batch_end(self, batch, logs=None):
            if int(ops.convert_to_numpy(self.model.optimizer.iterations)) == step:
                conv = self.model.get_layer("conv")
                self.units = _units(self.model.optimizer, conv)
                self.margins = _margins(self.model.optimizer, conv)

    at = _AtStep()
    model = _model()
    opt = _compile(model, 0.2, structure="auto")
    callback = finetune.WStarFinetune(units_fraction=rho, check_every=1, trim=True)
    after = _UnitFraction()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[at, callback, after])
    assert callback.started_at_step == step and at.units.sum() > keep
    order = sorted(np.flatnonzero(at.units), key=lambda u: at.margins[u])
    dropped = sorted(int(u) for u in order[: int(at.units.sum()) - keep])
    assert callback.trimmed == {"conv/kernel": dropped}
    assert set(after.fractions[step - 1:]) == {keep / 8}  # exactly ⌈ρ·N⌉ from then on
    expect = at.units.copy()
    expect[dropped] = False
    np.testing.assert_array_equal(_units(opt, model.get_layer("conv")), expect)
    _assert_is_w_star(model, opt)
    assert callback.get_config()["trim"] is True
    with pytest.raises(ValueError, match="trim=True.*units_fraction=None"):
        finetune.WStarFinetune(start_epoch=1, trim=True)


def test_set_layer_units_keeps_each_kernels_largest_margins():
    """k_l units per matched kernel, by ‖V_g‖₂/λ_g: units below λ enter, the rest of the support leaves."""
    model, opt, conv, hidden, units, margins = _trained_filters_and_neurons(epochs=1)
    n_conv, n_hidden = int(units["conv"].sum()), int(units["hidden"].sum())
    assert 1 <= n_conv < 8 and n_hidden >= 2  # room to admit one filter and to drop one neuron
    before = {layer.name: ops.convert_to_numpy(opt.v(layer.kernel)).copy() for layer in (conv, hidden)}
    # Nothing moves on a bad argument.
    with pytest.raises(ValueError, match=r"asks 9 units of 'conv/kernel'.*which has 8"):
        finetune.set_layer_units(opt, {"hidden": 1, "conv": 9})
    with pytest.raises(ValueError, match=r"patterns \['head'\] match none.*'conv/kernel', 'hidden/kernel'"):
        finetune.set_layer_units(opt, {"conv": 2, "head": 1})
    for layer in (conv, hidden):
        np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(layer.kernel)), before[layer.name])
    # NumPy reference: the k largest margins of each layer (ties: the lower index).
    want = {"conv": n_conv + 1, "hidden": n_hidden - 1}
    expect, changes = {}, {}
    for name, k in want.items():
        order = sorted(range(units[name].size), key=lambda u: (-margins[name][u], u))
        expect[name] = np.isin(np.arange(units[name].size), order[:k])
        changes[f"{name}/kernel"] = {
            "added": [int(u) for u in np.flatnonzero(expect[name] & ~units[name])],
            "dropped": [int(u) for u in np.flatnonzero(~expect[name] & units[name])]}
    assert [len(c["added"]) for c in changes.values()] == [1, 0]
    assert [len(c["dropped"]) for c in changes.values()] == [0, 1]
    assert finetune.set_layer_units(opt, {"^conv/": want["conv"], "hidden": want["hidden"]}) == changes
    for layer in (conv, hidden):
        np.testing.assert_array_equal(_units(opt, layer), expect[layer.name])
    entered = changes["conv/kernel"]["added"][0]
    assert 1.0 < _margins(opt, conv)[entered] < 1.01  # as if it had just crossed λ
    kept = expect["conv"] & units["conv"]  # the other filters' V did not move
    np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(conv.kernel))[..., kept],
                                  before["conv"][..., kept])
    assert finetune.set_layer_units(opt, {"conv": want["conv"]}) == {
        "conv/kernel": {"added": [], "dropped": []}}  # already so: nothing moves


def test_w_star_finetune_layer_units_trains_the_chosen_widths():
    x, y = _data()
    model = _model()
    opt = _compile(model, 0.2, structure={"conv/kernel": "filter", "hidden/kernel": "neuron"}, lambda_=0.1)
    callback = finetune.WStarFinetune(start_epoch=2, layer_units={"conv": 3, "hidden": 5})
    after = _UnitFraction()
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[callback, after])
    assert callback.started_at_step == 8
    assert int(_units(opt, model.get_layer("conv")).sum()) == 3
    assert int(_units(opt, model.get_layer("hidden")).sum()) == 5
    assert set(after.fractions[8:]) == {3 / 8}  # fixed from the start on
    assert callback.trimmed or callback.added
    _assert_group_kernels_are_w_star(model, opt)
    config = callback.get_config()
    assert config["layer_units"] == {"conv": 3, "hidden": 5}
    assert finetune.WStarFinetune(**config).get_config() == config


@pytest.mark.parametrize("layer_units, error, match", [
    ([("conv", 2)], TypeError, r"`layer_units` must be None or a non-empty dict"),
    ({}, TypeError, r"non-empty dict"),
    ({3: 2}, TypeError, r"`layer_units` keys must be regex strings matched against variable paths. "
                        r"Received key 3"),
    ({"conv(": 2}, ValueError, r"`layer_units` key 'conv\(' is not a valid regular expression"),
    ({"conv": 0}, ValueError, r"`layer_units\['conv'\]` must be >= 1. Received: layer_units\['conv'\]=0"),
    ({"conv": 2.0}, TypeError, r"`layer_units\['conv'\]` must be an integer"),
])
def test_w_star_finetune_layer_units_arguments(layer_units, error, match):
    with pytest.raises(error, match=match):
        finetune.WStarFinetune(start_epoch=1, layer_units=layer_units)


def test_parse_layer_units_reads_a_configs_text():
    assert finetune.parse_layer_units("conv1/=12, conv2/=16") == {"conv1/": 12, "conv2/": 16}
    assert finetune.parse_layer_units("^conv3/kernel$=1") == {"^conv3/kernel$": 1}
    for bad, match in [("conv1/", r"'pattern=k'.*Received: 'conv1/'"), ("=3", r"Received: '=3'"),
                       ("a=x", r"Received: 'a=x'"), ("a=-1", r"Received: 'a=-1'"),
                       ("a=1,a=2", r"pattern 'a' twice"), ("a=0", r"must be >= 1"),
                       ("a(=1", r"`layer_units` key 'a\(' is not a valid regular expression")]:
        with pytest.raises(ValueError, match=match):
            finetune.parse_layer_units(bad)
    with pytest.raises(TypeError, match="must be a string"):
        finetune.parse_layer_units({"a": 1})


def test_w_star_finetune_layer_units_are_checked_before_the_first_step():
    x, y = _data()
    with pytest.raises(ValueError, match=r"without trim and dependency_groups. Received: trim=True"):
        finetune.WStarFinetune(units_fraction=0.5, trim=True, layer_units={"conv": 2})
    for layer_units, match in [({"head": 2}, r"patterns \['head'\] match none.*'conv/kernel'"),
                               ({"conv": 9}, r"asks 9 units of 'conv/kernel'")]:
        model = _model()
        _compile(model, 0.2, structure="auto")  # head and hidden are elementwise: no units
        start = [ops.convert_to_numpy(w).copy() for w in model.weights]
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[finetune.WStarFinetune(start_epoch=1, layer_units=layer_units)])
        for w, w0 in zip(model.weights, start):  # raised before any step
            np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)
    model = _model()
    _compile(model, 0.2, structure={"conv/kernel": "filter"},
             unit_groups=[[["conv/kernel", 0], ["conv/kernel", 1]]])
    with pytest.raises(ValueError, match=r"couples units jointly \(unit_groups\)"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[finetune.WStarFinetune(start_epoch=1, layer_units={"conv": 2})])


def test_round_units_raises_each_kernel_to_a_multiple_by_margin():
    """min(N_l, ⌈k_l/r⌉·r) units per kernel: the largest margins outside supp Γ enter, none leaves."""
    model, opt, conv, hidden, units, margins = _trained_filters_and_neurons(epochs=1)
    r = 4
    counts = {name: int(u.sum()) for name, u in units.items()}
    assert counts["conv"] % r and counts["conv"] < 8  # conv widens; hidden (6 of 6) is capped at N
    assert counts["hidden"] == 6
    before = ops.convert_to_numpy(opt.v(conv.kernel)).copy()
    # NumPy reference: the support plus the best outsiders, up to the rounded width.
    target = min(8, -(-counts["conv"] // r) * r)
    outside = sorted(np.flatnonzero(~units["conv"]), key=lambda u: (-margins["conv"][u], u))
    entering = sorted(int(u) for u in outside[:target - counts["conv"]])
    assert finetune.round_units(opt, r) == {"conv/kernel": {"added": entering, "dropped": []}}
    expect = units["conv"].copy()
    expect[entering] = True
    np.testing.assert_array_equal(_units(opt, conv), expect)
    np.testing.assert_array_equal(_units(opt, hidden), units["hidden"])
    assert np.all((_margins(opt, conv)[entering] > 1.0) & (_margins(opt, conv)[entering] < 1.01))
    np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(conv.kernel))[..., units["conv"]],
                                  before[..., units["conv"]])  # the support's V did not move
    assert finetune.round_units(opt, r) == {}  # already multiples (or full): nothing moves
    assert finetune.round_units(opt, 1) == {}
    opt.drop_units(conv.kernel, list(range(8)))  # an empty kernel stays empty
    assert finetune.round_units(opt, 3) == {} and not _units(opt, conv).any()
    with pytest.raises(ValueError, match=r"`round_to` must be >= 1. Received: round_to=0"):
        finetune.round_units(opt, 0)
    with pytest.raises(TypeError, match=r"`round_to` must be an integer"):
        finetune.round_units(opt, 2.0)


class _SupportAtEpoch(keras.callbacks.Callback):
    """NumPy: supp Γ's units and margins of ``layer`` when ``epoch`` begins (before later callbacks)."""

    def __init__(self, layer, epoch):
        super().__init__()
        self.layer, self.epoch = layer, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            opt = self.model.optimizer
            self.units = _units(opt, self.model.get_layer(self.layer))
            self.margins = _margins(opt, self.model.get_layer(self.layer))


def test_w_star_finetune_round_to_trains_multiples_of_r():
    x, y = _data()
    model = _model()
    opt = _compile(model, 0.2, structure={"conv/kernel": "filter", "hidden/kernel": "neuron"}, lambda_=0.1)
    at = _SupportAtEpoch("conv", 1)
    callback = finetune.WStarFinetune(start_epoch=1, round_to=4)
    after = _UnitFraction()
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[at, callback, after])
    k = int(at.units.sum())
    assert callback.started_at_step == 4 and k % 4
    outside = sorted(np.flatnonzero(~at.units), key=lambda u: (-at.margins[u], u))
    entering = sorted(int(u) for u in outside[:-(-k // 4) * 4 - k])
    assert callback.added == {"conv/kernel": entering} and callback.trimmed == {}
    expect = at.units.copy()
    expect[entering] = True
    np.testing.assert_array_equal(_units(opt, model.get_layer("conv")), expect)
    assert set(after.fractions[4:]) == {expect.sum() / 8}  # fixed from the start on
    _assert_group_kernels_are_w_star(model, opt)
    config = callback.get_config()
    assert config["round_to"] == 4 and finetune.WStarFinetune(**config).get_config() == config


def test_w_star_finetune_round_to_is_checked_before_the_first_step():
    for kwargs, error, match in [
        ({"round_to": 0}, ValueError, r"`round_to` must be >= 1. Received: round_to=0"),
        ({"round_to": "8"}, TypeError, r"`round_to` must be an integer"),
        ({"round_to": 2, "layer_units": {"conv": 4}}, ValueError,
         r"with layer_units choose multiples yourself.*Received: round_to=2, layer_units=\{'conv': 4\}"),
        ({"round_to": 2, "dependency_groups": True}, ValueError,
         r"dependency_groups keeps whole groups.*dependency_groups=True"),
    ]:
        with pytest.raises(error, match=match):
            finetune.WStarFinetune(start_epoch=1, **kwargs)
    finetune.WStarFinetune(start_epoch=1, round_to=1, layer_units={"conv": 4})  # 1 is off
    x, y = _data()
    for kwargs, match in [({"structure": "elementwise"}, r"round_to>1\) count filters.*couples no kernel"),
                          ({"structure": {"conv/kernel": "filter"},
                            "unit_groups": [[["conv/kernel", 0], ["conv/kernel", 1]]]},
                           r"`round_to` sets each kernel's units on its own.*\(unit_groups\)")]:
        model = _model()
        _compile(model, 0.2, **kwargs)
        start = [ops.convert_to_numpy(w).copy() for w in model.weights]
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[finetune.WStarFinetune(start_epoch=1, round_to=2)])
        for w, w0 in zip(model.weights, start):  # raised before any step
            np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)

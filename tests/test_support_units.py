"""The units of supp Γ when `WStarFinetune` starts (`support_units`): trim, layer_units, round_to.

Each is checked against a NumPy reference of the margins ‖V_g‖₂/λ_g and of
the widths it should leave. Backend-agnostic (pure Keras 3):
tests/test_backends.py reruns this file under the JAX and PyTorch backends.
"""

import keras
import numpy as np
import pytest
from keras import ops

from tf_dessilbi.dessilbi import finetune
from tf_dessilbi.dessilbi.fork import Fork
from tests.test_dessilbi_phases import (_UnitFraction, _assert_is_w_star, _compile, _data, _model,
                                        _reference_path)


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
    callback = finetune.WStarFinetune(Fork(units=rho, check_every=1, trim=True))
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
    assert callback.get_config()["fork"]["trim"] is True
    with pytest.raises(ValueError, match="trim=True.*units=None"):
        finetune.WStarFinetune(Fork(epoch=1, trim=True))


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
    callback = finetune.WStarFinetune(2, layer_units={"conv": 3, "hidden": 5})
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
    with pytest.warns(DeprecationWarning, match="layer_units"):
        assert finetune.WStarFinetune.from_config(config).get_config() == config


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
        finetune.WStarFinetune(1, layer_units=layer_units)


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
        finetune.WStarFinetune(Fork(units=0.5, trim=True), layer_units={"conv": 2})
    for layer_units, match in [({"head": 2}, r"patterns \['head'\] match none.*'conv/kernel'"),
                               ({"conv": 9}, r"asks 9 units of 'conv/kernel'")]:
        model = _model()
        _compile(model, 0.2, structure="auto")  # head and hidden are elementwise: no units
        start = [ops.convert_to_numpy(w).copy() for w in model.weights]
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[finetune.WStarFinetune(1, layer_units=layer_units)])
        for w, w0 in zip(model.weights, start):  # raised before any step
            np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)
    model = _model()
    _compile(model, 0.2, structure={"conv/kernel": "filter"},
             unit_groups=[[["conv/kernel", 0], ["conv/kernel", 1]]])
    with pytest.raises(ValueError, match=r"couples units jointly \(unit_groups\)"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[finetune.WStarFinetune(1, layer_units={"conv": 2})])


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
    callback = finetune.WStarFinetune(Fork(epoch=1, round_to=4))
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
    assert config["fork"]["round_to"] == 4
    assert finetune.WStarFinetune.from_config(config).get_config() == config


def test_w_star_finetune_round_to_is_checked_before_the_first_step():
    for fork, kwargs, error, match in [
        ({"round_to": 0}, {}, ValueError, r"`round_to` must be >= 1. Received: round_to=0"),
        ({"round_to": "8"}, {}, TypeError, r"`round_to` must be an integer"),
        ({"round_to": 2}, {"layer_units": {"conv": 4}}, ValueError,
         r"with layer_units choose multiples yourself.*Received: round_to=2, layer_units=\{'conv': 4\}"),
    ]:
        with pytest.raises(error, match=match):
            finetune.WStarFinetune(Fork(epoch=1, **fork), **kwargs)
    finetune.WStarFinetune(Fork(epoch=1, round_to=1), layer_units={"conv": 4})  # 1 is off
    finetune.WStarFinetune(Fork(epoch=1, round_to=2, dependency_groups=True))  # rounds whole groups
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
                      callbacks=[finetune.WStarFinetune(Fork(epoch=1, round_to=2))])
        for w, w0 in zip(model.weights, start):  # raised before any step
            np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)

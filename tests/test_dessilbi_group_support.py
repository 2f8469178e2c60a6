"""supp Γ on the dependency groups of physical removal (`group_support`, `DessiLBI.add_units`).

The margins and the choice of groups are checked against a NumPy reference
of the module docstring's formulas, and the end state against `shrink`: the
units W* keeps are the units of the exported model.
"""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tf_dessilbi.dessilbi import finetune
from tf_dessilbi.dessilbi import group_support
from tf_dessilbi.shrink import unit_groups
from tf_dessilbi.dessilbi.fork import Fork

WIDTHS = {"stem": 4, "a": 3, "b": 4, "c": 5}
COUPLED = {f"{name}/kernel": "filter" for name in WIDTHS}


def _model(seed=0):
    """stem → a → b, Add(stem, b) → c → head: stem_j and b_j are one dependency group."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU()(stem)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="a")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([stem, x]))
    x = keras.layers.Conv2D(5, 3, activation="relu", name="c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _data():
    """96 random 6×6×2 images, 3 classes from the signs of the two channels' means."""
    x = np.random.default_rng(0).normal(size=(96, 6, 6, 2)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32") + (x[..., 1].mean(axis=(1, 2)) > 0)
    return x, y.astype("int32")


def _directions(shape, rng):
    d = rng.normal(size=shape)
    return d / np.sqrt((d.reshape(-1, shape[-1]) ** 2).sum(0))


def _optimizer(model, structure=None, init_norms=None, v_norms=None, seed=1):
    """A built DessiLBI (λ_j = 0.5·‖W_j(0)‖) with ‖V_j‖ set per unit."""
    rng = np.random.default_rng(seed)
    for name, norms in (init_norms or {}).items():
        kernel = model.get_layer(name).kernel
        kernel.assign((_directions(kernel.shape, rng) * norms).astype("float32"))
    opt = DessiLBI(0.1, kappa=1.0, mu=5.0, lambda_=0.5, structure=structure or COUPLED,
                   lambda_scaling="unit_init_norm")
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    opt.build(model.trainable_variables)
    for name, norms in (v_norms or {}).items():
        kernel = model.get_layer(name).kernel
        if opt.variable_structure(kernel) is None:
            continue
        opt._vs[opt._slot_index(kernel)].assign((_directions(kernel.shape, rng) * norms).astype("float32"))
    return opt


def _units(opt, model, name):
    support = ops.convert_to_numpy(opt.support(model.get_layer(name).kernel))
    return support.reshape(-1, support.shape[-1]).any(axis=0)


INIT = {"stem": np.array([1.0, 2.0, 0.5, 1.5]), "a": np.array([1.0, 2.0, 1.0]),
        "b": np.array([2.0, 1.0, 1.0, 3.0]), "c": np.array([1.0, 1.0, 2.0, 1.0, 0.5])}
# margins ‖V_j‖/λ_j per unit (λ_j = 0.5·INIT): in the support iff > 1
MARGINS = {"stem": np.array([1.2, 0.5, 0.9, 0.2]), "a": np.array([0.3, 0.6, 0.2]),
           "b": np.array([0.4, 1.3, 1.05, 0.1]), "c": np.array([1.5, 0.8, 1.1, 0.2, 2.0])}


def _groups_and_margins(rule):
    """NumPy: the model's dependency groups and each one's margin, from INIT and MARGINS.

    ``rule="joint"``: ‖V_G‖₂/λ_G; ``"max"``: the largest member's ‖V_g‖/λ_g.
    """
    lam = {n: 0.5 * INIT[n] for n in INIT}
    v = {n: MARGINS[n] * lam[n] for n in INIT}
    groups = [[("stem", j), ("b", j)] for j in range(4)]
    groups += [[(n, j)] for n in ("a", "c") for j in range(WIDTHS[n])]
    if rule == "joint":
        margin = [np.sqrt(sum(v[n][j] ** 2 for n, j in g) / sum(lam[n][j] ** 2 for n, j in g))
                  for g in groups]
    else:
        margin = [max(v[n][j] / lam[n][j] for n, j in g) for g in groups]
    return groups, margin


def _reference(keep_units=None, rule="joint"):
    """NumPy: the units kept per layer (module docstring's rule), from INIT and MARGINS.

    ``rule="max"``: a group's margin is its largest member's ‖V_g‖/λ_g.
    """
    groups, margin = _groups_and_margins(rule)
    order = sorted(range(len(groups)), key=lambda i: (-margin[i], i))
    # first every layer's best group, then the rule
    stays = {next(i for i in order if any(n == name for n, _ in groups[i])) for name in INIT}
    if keep_units is None:
        stays |= {i for i in order if margin[i] > 1}
    else:
        held = sum(len(groups[i]) for i in stays)
        for i in order:  # by decreasing margin, each group that still fits in K
            if i not in stays and held + len(groups[i]) <= keep_units:
                stays.add(i)
                held += len(groups[i])
    keep = {n: np.zeros(WIDTHS[n], bool) for n in INIT}
    for i in stays:
        for n, j in groups[i]:
            keep[n][j] = True
    return keep


def test_unit_groups_join_the_channels_a_residual_add_sums():
    groups = unit_groups(_model())
    by_unit = {m: g for g in groups for m in g.members}
    assert len(by_unit) == sum(WIDTHS.values()) + 3  # every producer unit in exactly one group
    assert sum(len(g) for g in groups) == len(by_unit)
    for j in range(4):
        assert by_unit[("stem", j)].members == (("stem", j), ("b", j))
        assert by_unit[("stem", j)].removable
    assert all(len(by_unit[(n, j)]) == 1 for n in ("a", "c") for j in range(WIDTHS[n]))
    assert [g.removable for g in groups if g.members[0][0] == "head"] == [False] * 3  # outputs
    assert not any(g.removable for g in unit_groups(_model(), keep=["c"]) if g.members[0][0] == "c")


@pytest.mark.parametrize("keep_units", [None, 7, 3])
@pytest.mark.parametrize("rule", ["joint", "max"])
def test_align_support_keeps_whole_groups_by_their_margin(keep_units, rule):
    model = _model()
    opt = _optimizer(model, init_norms=INIT,
                     v_norms={n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    before = {n: _units(opt, model, n) for n in INIT}
    for n in INIT:
        np.testing.assert_array_equal(before[n], MARGINS[n] > 1)
    want = _reference(keep_units, rule)
    if keep_units is None and rule == "max":  # a group with one member over λ_g stays whole
        np.testing.assert_array_equal(want["stem"], [True, True, True, False])
    if keep_units is None and rule == "joint":  # stem 0 / b 0: one member in, joint margin < 1 → goes; (stem 2, b 2) enters
        assert not want["stem"][0] and want["stem"][2] and want["b"][2]
        assert want["a"].sum() == 1  # every unit of a is out; its best group is kept
    alignment = group_support.align_support(opt, model, keep_units, margin=rule)
    for n in INIT:
        np.testing.assert_array_equal(_units(opt, model, n), want[n], err_msg=n)
        np.testing.assert_array_equal(want["stem"], want["b"])
    dropped = {f"{n}/kernel": np.flatnonzero(before[n] & ~want[n]).tolist() for n in INIT}
    added = {f"{n}/kernel": np.flatnonzero(~before[n] & want[n]).tolist() for n in INIT}
    assert alignment.dropped == {k: v for k, v in dropped.items() if v}
    assert alignment.added == {k: v for k, v in added.items() if v}
    assert alignment.units_kept == sum(int(w.sum()) for w in want.values())
    assert alignment.groups_total == 4 + 3 + 5
    assert alignment.keep_units == keep_units
    if keep_units == 7 and rule == "joint":  # c4 c0 c2 (stem2, b2) c1 hold 6; (stem1, b1) does not fit, a1 fills in
        assert alignment.units_kept == 7 and want["a"][1] and not want["stem"][1]
    elif keep_units == 3:  # the best groups of c, (stem, b) and a must stay: 4 > K
        assert alignment.units_kept == 4
    # support and export agree: the shrunk model keeps exactly the units in supp Γ
    _, report = tf_dessilbi.shrink(model, optimizer=opt, return_report=True)
    rows = {r.layer: r for r in report.rows}
    for n in INIT:
        assert rows[n].units_after == int(want[n].sum()), n


def test_align_support_keeps_a_group_with_an_uncoupled_member():
    model = _model()
    structure = {**COUPLED, "b/kernel": None}  # W* never zeroes b's filters: the channels stay
    opt = _optimizer(model, structure, INIT, {n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    alignment = group_support.align_support(opt, model, keep_units=1)
    np.testing.assert_array_equal(_units(opt, model, "stem"), [True] * 4)
    # K = 1 is held by the fixed groups: a and c keep their best unit only (margins 0.6, 2.0)
    assert alignment.added == {"stem/kernel": [1, 2, 3], "a/kernel": [1]}
    assert alignment.dropped == {"c/kernel": [0, 2]}
    np.testing.assert_array_equal(_units(opt, model, "c"), [False] * 4 + [True])


def test_add_units_puts_units_just_over_the_threshold():
    model = _model()
    opt = _optimizer(model, init_norms=INIT, v_norms={n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    kernel = model.get_layer("stem").kernel
    slot = opt._vs[opt._slot_index(kernel)]
    v0 = ops.convert_to_numpy(slot).copy()
    v0[..., 3] = 0.0
    slot.assign(v0)
    opt.add_units(kernel, [0, 1, 3])  # 0 is in the support already
    v1 = ops.convert_to_numpy(slot)
    lam = 0.5 * INIT["stem"]
    norms = np.sqrt((v1.reshape(-1, 4) ** 2).sum(0))
    np.testing.assert_array_equal(v1[..., [0, 2]], v0[..., [0, 2]])  # in the support / not asked
    np.testing.assert_allclose(norms[[1, 3]], lam[[1, 3]] * (1 + 2 ** -8), rtol=1e-6)
    np.testing.assert_allclose(v1[..., 1] / norms[1], v0[..., 1] / np.linalg.norm(v0[..., 1]),
                               rtol=1e-5, atol=1e-7)  # along V_j
    w = ops.convert_to_numpy(kernel)[..., 3]
    np.testing.assert_allclose(v1[..., 3] / norms[3], w / np.linalg.norm(w), rtol=1e-5, atol=1e-7)
    gamma = ops.convert_to_numpy(opt.gamma(kernel))
    np.testing.assert_array_equal(_units(opt, model, "stem"), [True, True, False, True])
    np.testing.assert_allclose(gamma[..., 1], v1[..., 1] * (1 - 1 / (1 + 2 ** -8)), rtol=1e-3)


def test_bad_calls_raise_and_change_nothing():
    model = _model()
    opt = _optimizer(model, init_norms=INIT, v_norms={n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    vs = [ops.convert_to_numpy(v).copy() for v in opt._vs if v is not None]
    with pytest.raises(ValueError, match="keep_units"):
        group_support.align_support(opt, model, keep_units=0)
    with pytest.raises(ValueError, match="margin"):
        group_support.align_support(opt, model, margin="mean")
    with pytest.raises(ValueError, match=r"`units` must lie in \[0, 4\)"):
        opt.add_units(model.get_layer("stem").kernel, [4])
    elementwise = _model()
    eopt = _optimizer(elementwise, structure="elementwise")
    with pytest.raises(ValueError, match="add_units needs a variable coupled by groups"):
        eopt.add_units(elementwise.get_layer("stem").kernel, [0])
    with pytest.raises(ValueError, match="couples none of the model's kernels"):
        group_support.align_support(eopt, elementwise)
    with pytest.raises(TypeError, match="DessiLBI"):
        group_support.align_support(keras.optimizers.SGD(), model)
    for before, v in zip(vs, [v for v in opt._vs if v is not None]):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), before)


@pytest.mark.parametrize("rule", ["joint", "max"])
def test_w_star_finetune_with_dependency_groups_exports_its_support(rule, monkeypatch):
    x, y = _data()
    model = _model()
    opt = DessiLBI(0.2, kappa=1.0, mu=5.0, lambda_=0.3, structure=COUPLED)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    calls = []
    align = group_support.align_support
    monkeypatch.setattr(group_support, "align_support",
                        lambda *a, **k: calls.append(a[4:] or k) or align(*a, **k))
    callback = finetune.WStarFinetune(Fork(units=0.5, check_every=1, trim=True, dependency_groups=True),
                                      group_margin=rule)
    model.fit(x, y.astype("int32"), batch_size=16, epochs=6, shuffle=False, verbose=0,
              callbacks=[callback])
    assert callback.started_at_step is not None and callback.aligned is not None
    assert calls == [(rule,)]  # the callback's rule reached the alignment
    keep = int(np.ceil(0.5 * sum(WIDTHS.values())))
    units = {n: _units(opt, model, n) for n in WIDTHS}
    np.testing.assert_array_equal(units["stem"], units["b"])
    # K = ⌈ρ·N⌉ is asked and kept (every layer's best group fits in it here)
    assert callback.aligned.keep_units == keep == callback.aligned.units_kept
    assert callback.aligned.units_kept == sum(int(u.sum()) for u in units.values())
    _, report = tf_dessilbi.shrink(model, optimizer=opt, return_report=True)
    rows = {r.layer: r for r in report.rows}
    assert {n: rows[n].units_after for n in WIDTHS} == {n: int(units[n].sum()) for n in WIDTHS}
    assert callback.get_config()["fork"]["dependency_groups"] is True
    assert callback.group_margin == rule  # deprecated: in get_config only when "max"
    with pytest.raises(ValueError, match="group_margin"):
        finetune.WStarFinetune(1, group_margin="mean")
    with pytest.raises(TypeError, match="dependency_groups"):
        finetune.WStarFinetune(Fork(epoch=1, dependency_groups="yes"))


def _round_reference(round_to, rule):
    """NumPy: the units in supp Γ after `round_groups` (each channel space's groups the export
    keeps raised to min(N, ⌈k/r⌉·r), the best outside by margin entering whole)."""
    groups, margin = _groups_and_margins(rule)
    support = {n: MARGINS[n] > 1 for n in INIT}
    keep = {n: support[n].copy() for n in INIT}
    for layers in ({"stem", "b"}, {"a"}, {"c"}):
        space = [i for i, g in enumerate(groups) if {n for n, _ in g} == layers]
        held = [any(support[n][j] for n, j in groups[i]) for i in space]
        k = sum(held)
        target = min(len(space), int(np.ceil(k / round_to)) * round_to)
        outside = sorted((i for i, h in zip(space, held) if not h), key=lambda i: (-margin[i], i))
        for i in outside[:target - k]:
            for n, j in groups[i]:
                keep[n][j] = True
    return keep


@pytest.mark.parametrize("round_to", [2, 3, 4])
@pytest.mark.parametrize("rule", ["joint", "max"])
def test_round_groups_rounds_each_channel_space_by_margin(round_to, rule):
    model = _model()
    opt = _optimizer(model, init_norms=INIT, v_norms={n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    before = {n: _units(opt, model, n) for n in INIT}
    want = _round_reference(round_to, rule)
    if round_to == 2:  # stem/b: 3 of 4 channels kept → 4; a: empty, stays empty; c: 3 of 5 → 4
        assert (want["stem"] | want["b"]).all() and want["stem"][3] and want["b"][3]
        assert not want["a"].any() and want["c"].sum() == 4
    added = group_support.round_groups(opt, model, round_to, margin=rule)
    for n in INIT:
        np.testing.assert_array_equal(_units(opt, model, n), want[n], err_msg=n)
    expected = {f"{n}/kernel": np.flatnonzero(want[n] & ~before[n]).tolist() for n in INIT}
    assert added == {k: u for k, u in expected.items() if u}
    # every exported width is now a multiple of r or the layer's width
    _, report = tf_dessilbi.shrink(model, optimizer=opt, return_report=True)
    rows = {r.layer: r for r in report.rows}
    for n in ("stem", "b", "c"):
        assert rows[n].units_after % round_to == 0 or rows[n].units_after == WIDTHS[n], n


def test_round_groups_bad_calls_change_nothing():
    model = _model()
    opt = _optimizer(model, init_norms=INIT, v_norms={n: MARGINS[n] * 0.5 * INIT[n] for n in INIT})
    vs = [ops.convert_to_numpy(v).copy() for v in opt._vs if v is not None]
    with pytest.raises(ValueError, match=r"`round_to` must be >= 1. Received: round_to=0"):
        group_support.round_groups(opt, model, 0)
    with pytest.raises(TypeError, match=r"`round_to` must be an integer"):
        group_support.round_groups(opt, model, 2.0)
    with pytest.raises(ValueError, match="margin"):
        group_support.round_groups(opt, model, 2, margin="mean")
    elementwise = _model()
    with pytest.raises(ValueError, match="round_groups needs a kernel coupled by groups"):
        group_support.round_groups(_optimizer(elementwise, structure="elementwise"), elementwise, 2)
    for before, v in zip(vs, [v for v in opt._vs if v is not None]):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), before)


def test_w_star_finetune_rounds_the_aligned_groups():
    """The same path with and without ``round_to``: each exported width k → min(N, ⌈k/r⌉·r)."""
    x, y = _data()
    widths, callbacks = [], []
    for round_to in (1, 2):
        model = _model()
        opt = DessiLBI(0.2, kappa=1.0, mu=5.0, lambda_=0.3, structure=COUPLED)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callback = finetune.WStarFinetune(Fork(units=0.3, check_every=1, trim=True,
                                               dependency_groups=True, round_to=round_to))
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[callback])
        units = {n: _units(opt, model, n) for n in WIDTHS}
        _, report = tf_dessilbi.shrink(model, optimizer=opt, return_report=True)
        rows = {r.layer: r.units_after for r in report.rows}
        assert {n: rows[n] for n in WIDTHS} == {n: int(units[n].sum()) for n in WIDTHS}
        np.testing.assert_array_equal(units["stem"], units["b"])
        widths.append({n: rows[n] for n in WIDTHS})
        callbacks.append(callback)
    assert callbacks[0].started_at_step == callbacks[1].started_at_step is not None
    assert any(k % 2 for k in widths[0].values())  # something to round
    assert widths[1] == {n: min(WIDTHS[n], -(-k // 2) * 2) for n, k in widths[0].items()}
    added = sum(len(u) for u in callbacks[1].added.values())
    assert added == sum(widths[1][n] - widths[0][n] for n in WIDTHS)
    assert callbacks[1].get_config()["fork"]["round_to"] == 2

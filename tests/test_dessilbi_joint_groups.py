"""Joint coupling of dependency groups during the whole path (`DessiLBI(unit_groups=...)`).

Checked against an independent NumPy reference of the joint group lasso
(`tests/dessilbi_reference.joint_group_gammas`: Γ_G = κ·max(0, 1 − λ_G/‖V_G‖₂)·V_G
on the concatenated group, λ_G² = Σ λ_g²), step by step, so a per-unit prox,
a Gauss–Seidel step (a member's threshold read after another member moved)
or a wrong λ_G fails.
"""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tf_dessilbi.dessilbi import group_support
from tests.dessilbi_reference import JointReferenceDessiLBI, joint_group_gammas, threshold
from tests.test_dessilbi_group_support import COUPLED, WIDTHS
from tests.test_dessilbi_group_support import _model as _residual_model
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model(seed=0):
    """`test_dessilbi_group_support`'s residual model (stem_j and b_j one dependency group),
    its weights redrawn by NumPy so every backend starts from the same θ₀."""
    model = _residual_model()
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        fan_in = int(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 1
        v.assign(rng.normal(scale=1.0 / np.sqrt(fan_in), size=v.shape).astype("float32"))
    return model


def _gradients(rng, variables, step):
    """Random gradients, larger for later units and a shrinking group of early steps."""
    return [(rng.normal(size=v.shape) * np.linspace(0.05, 1.0, v.shape[-1]) * (1.0 + 0.2 * step)
             ).astype("float32") for v in variables]


def _unit_in(gamma):
    g = np.asarray(ops.convert_to_numpy(gamma))
    return np.any(g.reshape(-1, g.shape[-1]) != 0, axis=0)


def test_joint_unit_groups_are_the_residual_groups():
    model = _model()
    assert tf_dessilbi.joint_unit_groups(model) == [[["stem/kernel", j], ["b/kernel", j]]
                                                      for j in range(4)]
    # a plain stack has no group of more than one unit
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.Dense(2, name="d2")])
    assert tf_dessilbi.joint_unit_groups(plain) == []


@pytest.mark.parametrize("lambda_scaling,momentum", [("unit_init_norm", 0.9), ("fan_in", 0.0)])
def test_steps_match_the_joint_group_lasso_reference(lambda_scaling, momentum):
    model = _model()
    variables = model.trainable_variables
    groups = tf_dessilbi.joint_unit_groups(model)
    lam = 0.6 if lambda_scaling == "unit_init_norm" else 0.15
    opt = DessiLBI(0.3, kappa=1.5, mu=2.0, lambda_=lam, momentum=momentum, structure=COUPLED,
                   lambda_scaling=lambda_scaling, unit_groups=groups)
    paths = [v.path for v in variables]
    structures = [COUPLED.get(p) for p in paths]
    index_groups = [[(paths.index(p), u) for p, u in g] for g in groups]
    ref = JointReferenceDessiLBI([ops.convert_to_numpy(v) for v in variables], structures, 1.5, 2.0,
                                 lam, momentum, False, lambda_scaling, groups=index_groups)
    rng = np.random.default_rng(3)
    stem, b = paths.index("stem/kernel"), paths.index("b/kernel")
    disagreements = 0  # steps where the per-unit prox would put a member elsewhere
    partial = 0  # steps where some residual groups are in supp Γ and others not
    for step in range(14):
        grads = _gradients(rng, variables, step)
        opt.apply([ops.convert_to_tensor(g) for g in grads], variables)
        ref.step(grads, 0.3)
        for i, v in enumerate(variables):
            np.testing.assert_allclose(ops.convert_to_numpy(v), ref.w[i], rtol=2e-5, atol=2e-6,
                                       err_msg=f"W of {v.path} at step {step}")
            if structures[i] is None:
                continue
            np.testing.assert_allclose(ops.convert_to_numpy(opt.v(v)), ref.v[i], rtol=2e-5, atol=2e-6)
            np.testing.assert_allclose(ops.convert_to_numpy(opt.gamma(v)), ref.gamma[i], rtol=2e-5,
                                       atol=2e-6, err_msg=f"Γ of {v.path} at step {step}")
        in_stem, in_b = _unit_in(ref.gamma[stem]), _unit_in(ref.gamma[b])
        np.testing.assert_array_equal(in_stem, in_b)  # members enter and leave together
        partial += 0 < in_stem.sum() < 4
        for i in (stem, b):
            lams = np.broadcast_to(threshold(lam, ref.w[i].shape, "filter", lambda_scaling, ref.w0[i]), (4,))
            alone = np.sqrt((ref.v[i].reshape(-1, 4) ** 2).sum(0)) > lams
            disagreements += int(np.any(alone != _unit_in(ref.gamma[i])))
    assert partial > 0 and disagreements > 0, (partial, disagreements)


def test_joint_prox_on_set_values_and_accessors():
    """‖V_G‖ > λ_G takes in a member below its own λ_g; ‖V_G‖ ≤ λ_G keeps out one above it."""
    model = _model()
    opt = DessiLBI(0.1, kappa=2.0, mu=5.0, lambda_=1.0, structure=COUPLED, lambda_scaling="none",
                   unit_groups=tf_dessilbi.joint_unit_groups(model))
    opt.build(model.trainable_variables)
    stem, b = model.get_layer("stem").kernel, model.get_layer("b").kernel
    rng = np.random.default_rng(0)
    directions = {"stem": rng.normal(size=stem.shape), "b": rng.normal(size=b.shape)}
    # member norms (stem, b) per group: in (2, 0.1), out (1.2, 0.5), in (1.0, 1.0) + ε, out (0, 0)
    norms = {"stem": [2.0, 1.2, 1.0 + 1e-3, 0.0], "b": [0.1, 0.5, 1.0 + 1e-3, 0.0]}
    for name, kernel in (("stem", stem), ("b", b)):
        d = directions[name].reshape(-1, 4)
        d = d / np.sqrt((d ** 2).sum(0))
        opt._vs[opt._slot_index(kernel)].assign((d * norms[name]).reshape(kernel.shape).astype("float32"))
    np.testing.assert_array_equal(_unit_in(opt.gamma(stem)), [True, False, True, False])
    np.testing.assert_array_equal(_unit_in(opt.gamma(b)), [True, False, True, False])
    v = {0: ops.convert_to_numpy(opt.v(stem)).astype(np.float64), 1: ops.convert_to_numpy(opt.v(b)).astype(np.float64)}
    expected = joint_group_gammas(v, {0: 1.0, 1: 1.0}, 2.0, [[(0, j), (1, j)] for j in range(4)])
    np.testing.assert_allclose(ops.convert_to_numpy(opt.gamma(stem)), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(opt.gamma(b)), expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(opt.support(b)), expected[1] != 0)
    # the threshold accessor stays each unit's own λ_g
    assert float(ops.convert_to_numpy(opt.threshold(stem))) == 1.0
    # layers outside every group keep the per-unit prox
    a = model.get_layer("a").kernel
    opt._vs[opt._slot_index(a)].assign(np.full(a.shape, 0.3, "float32"))  # ‖V_j‖ = 0.3·√54 > 1
    assert _unit_in(opt.gamma(a)).all()


def _built_joint():
    """The residual model and a built joint DessiLBI (λ_g = 1, V = 0); its stem and b kernels."""
    model = _model()
    opt = DessiLBI(0.1, mu=5.0, lambda_=1.0, structure=COUPLED, lambda_scaling="none",
                   unit_groups=tf_dessilbi.joint_unit_groups(model))
    opt.build(model.trainable_variables)
    return model, opt, model.get_layer("stem").kernel, model.get_layer("b").kernel


def test_add_units_takes_in_the_whole_group_and_align_support_agrees():
    model, opt, stem, b = _built_joint()
    assert not _unit_in(opt.gamma(stem)).any()
    opt.add_units(stem, [2])
    np.testing.assert_array_equal(_unit_in(opt.gamma(stem)), [False, False, True, False])
    np.testing.assert_array_equal(_unit_in(opt.gamma(b)), [False, False, True, False])
    group_norm = np.sqrt(sum((ops.convert_to_numpy(opt.v(k))[..., 2].astype(np.float64) ** 2).sum()
                             for k in (stem, b)))
    assert group_norm == pytest.approx(np.sqrt(2.0) * (1 + 2.0 ** -8), rel=1e-5)  # λ_G = √2
    # every coupled layer in, then the m_G > 1 rule of align_support is already the support
    for name in ("a", "c"):
        opt.add_units(model.get_layer(name).kernel, [0])
    before = {k.path: ops.convert_to_numpy(opt.v(k)) for k, _ in opt.coupled_variables()}
    alignment = group_support.align_support(opt, model)
    assert alignment.dropped == {} and alignment.added == {}
    for k, _ in opt.coupled_variables():
        np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(k)), before[k.path])


def test_training_keeps_groups_whole_and_w_star_is_what_shrink_removes(tmp_path):
    model = _model()
    opt = DessiLBI(0.2, mu=5.0, lambda_=0.7, structure=COUPLED, lambda_scaling="unit_init_norm",
                   unit_groups=tf_dessilbi.joint_unit_groups(model))
    model.compile(optimizer=opt, loss=LOSS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=64)
    model.fit(x, y, batch_size=16, epochs=6, shuffle=False, verbose=0)
    kept = {name: _unit_in(opt.gamma(model.get_layer(name).kernel)) for name in WIDTHS}
    np.testing.assert_array_equal(kept["stem"], kept["b"])
    assert 0 < kept["stem"].sum() < 4, kept  # a partial support: the check above means something
    small = tf_dessilbi.shrink(model, optimizer=opt)
    for name in WIDTHS:
        assert small.get_layer(name).kernel.shape[-1] == max(1, kept[name].sum()), name
    # the config and a .keras file keep the groups, so a reloaded run keeps coupling them
    path = str(tmp_path / "joint.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.unit_groups == opt.unit_groups
    for name in WIDTHS:
        np.testing.assert_array_equal(
            ops.convert_to_numpy(loaded.optimizer.gamma(loaded.get_layer(name).kernel)),
            ops.convert_to_numpy(opt.gamma(model.get_layer(name).kernel)))
    assert DessiLBI.from_config(opt.get_config()).unit_groups == opt.unit_groups


def test_members_not_coupled_by_groups_are_left_out():
    model = _model()
    groups = tf_dessilbi.joint_unit_groups(model)
    opt = DessiLBI(0.1, structure={"stem/kernel": "filter", "b/kernel": "elementwise"}, unit_groups=groups)
    opt.build(model.trainable_variables)
    assert opt._joint is None  # each group kept one group-coupled member: nothing joint
    k = model.get_layer("stem").kernel
    opt._vs[opt._slot_index(k)].assign(np.full(k.shape, 1.0, "float32"))  # ‖V_j‖ = √18 > λ = 1
    assert _unit_in(opt.gamma(k)).all()


@pytest.mark.parametrize("unit_groups,error,match", [
    ("stem/kernel", TypeError, "unit_groups"),
    ([[["stem/kernel", 0]]], ValueError, "at least 2"),
    ([[["stem/kernel", 0], ["b/kernel"]]], TypeError, "pair"),
    ([[["stem/kernel", 0], ["b/kernel", 1.0]]], TypeError, "pair"),
    ([[["stem/kernel", 0], ["b/kernel", -1]]], ValueError, ">= 0"),
    ([[["stem/kernel", 0], ["b/kernel", 0]], [["b/kernel", 0], ["a/kernel", 0]]], ValueError, "twice"),
])
def test_bad_unit_groups_raise_at_construction(unit_groups, error, match):
    with pytest.raises(error, match=match):
        DessiLBI(unit_groups=unit_groups)


@pytest.mark.parametrize("unit_groups,match", [
    ([[["stem/kernel", 0], ["nope/kernel", 0]]], "nope/kernel"),
    ([[["stem/kernel", 0], ["b/kernel", 4]]], r"out of range \[0, 4\)"),
])
def test_bad_unit_groups_raise_at_build_before_anything_is_created(unit_groups, match):
    model = _model()
    opt = DessiLBI(0.1, structure=COUPLED, unit_groups=unit_groups)
    with pytest.raises(ValueError, match=match):
        opt.build(model.trainable_variables)
    assert not opt.built
    assert not any("dessilbi_v" in v.path for v in opt.variables)


def test_round_groups_adds_whole_joint_groups():
    """`group_support.round_groups` on a jointly coupled DessiLBI: a group enters whole, by m_G."""
    model, opt, stem, b = _built_joint()
    rng = np.random.default_rng(3)
    for k in (stem, b):  # below the joint threshold, channel 1 the strongest outside
        v = rng.normal(size=k.shape) * np.array([0.01, 0.05, 0.02, 0.03])
        opt._vs[opt._slot_index(k)].assign(v.astype("float32"))
    for name in ("stem", "a", "c"):
        opt.add_units(model.get_layer(name).kernel, [0])
    added = group_support.round_groups(opt, model, 2)
    # a and c: V = 0 outside, ties go to the lower unit
    assert added == {"stem/kernel": [1], "b/kernel": [1], "a/kernel": [1], "c/kernel": [1]}
    np.testing.assert_array_equal(_unit_in(opt.gamma(stem)), [True, True, False, False])
    np.testing.assert_array_equal(_unit_in(opt.gamma(b)), [True, True, False, False])
    small = tf_dessilbi.shrink(model, optimizer=opt)
    for name in WIDTHS:
        assert small.get_layer(name).kernel.shape[-1] == 2, name

"""DessiLBI optimizer: update rule vs the NumPy reference, accessors, config, errors.

Backend-agnostic (pure Keras 3): tests/test_backends.py reruns this file under
the JAX and PyTorch backends.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tests.dessilbi_reference import ReferenceDessiLBI


def conv_dense_model(seed=0):
    """Conv2D + Dense with weights drawn by NumPy: identical on every backend."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        fan_in = int(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 1
        v.assign(rng.normal(scale=1.0 / np.sqrt(fan_in), size=v.shape).astype("float32"))
    return model


def expected_structures(model, spec):
    out = []
    for v in model.trainable_variables:
        layer, name = v.path.split("/")[-2:]
        if name != "kernel":
            out.append(None)
        elif spec == "auto":
            out.append("filter" if layer == "conv" else "elementwise")
        else:
            out.append(spec.get(layer))
    return out


def unit_scaled_gradients(rng, variables):
    """Random gradients whose size grows along the last axis, so that output
    units (groups) leave the zero state at different times."""
    return [
        (rng.normal(size=v.shape) * np.linspace(0.02, 1.0, v.shape[-1])).astype("float32")
        for v in variables
    ]


STRUCTURE_CASES = {
    "auto": "auto",
    "elementwise": {"conv": "elementwise", "dense": "elementwise"},
    "groups": {"conv": "filter", "dense": "neuron"},
    "mixed": {"conv": "elementwise", "dense": "neuron"},
}


def _spec_for_optimizer(spec):
    if spec == "auto":
        return "auto"
    return {rf"{layer}/kernel$": s for layer, s in spec.items()}


def run_against_reference(spec, momentum, nesterov, lr, lambda_scaling="fan_in",
                          steps=12, kappa=1.5, mu=2.0, lam=1.0):
    model = conv_dense_model()
    variables = model.trainable_variables
    opt = DessiLBI(
        learning_rate=lr, kappa=kappa, mu=mu, lambda_=lam, momentum=momentum,
        nesterov=nesterov, structure=_spec_for_optimizer(spec),
        lambda_scaling=lambda_scaling,
    )
    structures = expected_structures(model, spec)
    ref = ReferenceDessiLBI(
        [ops.convert_to_numpy(v) for v in variables], structures, kappa, mu,
        lam, momentum, nesterov, lambda_scaling,
    )
    rng = np.random.default_rng(1)
    for step in range(steps):
        grads = unit_scaled_gradients(rng, variables)
        opt.apply([ops.convert_to_tensor(g) for g in grads], variables)
        lr_now = lr(step) if callable(lr) else lr
        ref.step(grads, float(ops.convert_to_numpy(lr_now)))
        for i, v in enumerate(variables):
            np.testing.assert_allclose(
                ops.convert_to_numpy(v), ref.w[i], rtol=2e-5, atol=2e-6,
                err_msg=f"W of {v.path} differs at step {step}",
            )
            gamma = opt.gamma(v)
            if structures[i] is None:
                assert gamma is None
                continue
            np.testing.assert_allclose(
                ops.convert_to_numpy(gamma), ref.gamma[i], rtol=2e-5, atol=2e-6,
                err_msg=f"Γ of {v.path} differs at step {step}",
            )
            np.testing.assert_allclose(
                ops.convert_to_numpy(opt.v(v)), ref.v[i], rtol=2e-5, atol=2e-6
            )
    return model, opt, ref, structures


@pytest.mark.parametrize("spec_name", sorted(STRUCTURE_CASES))
@pytest.mark.parametrize(
    "momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)],
    ids=["plain", "momentum", "nesterov"],
)
def test_update_matches_numpy_reference(spec_name, momentum, nesterov):
    spec = STRUCTURE_CASES[spec_name]
    _, opt, ref, structures = run_against_reference(spec, momentum, nesterov, lr=0.3)
    # Only meaningful if every coupled kernel has a partial support.
    supports = [np.count_nonzero(g) for g, s in zip(ref.gamma, structures) if s]
    sizes = [g.size for g, s in zip(ref.gamma, structures) if s]
    assert all(0 < n < size for n, size in zip(supports, sizes)), supports


@pytest.mark.parametrize("lambda_scaling", ["none", "fan_in", "init_norm", "unit_init_norm"])
def test_lambda_scaling_matches_reference(lambda_scaling):
    run_against_reference(
        STRUCTURE_CASES["mixed"], 0.9, False, lr=0.3, lambda_scaling=lambda_scaling,
    )


def test_learning_rate_schedule_matches_reference():
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.5, decay_steps=1, decay_rate=0.85
    )
    run_against_reference("auto", 0.9, True, lr=schedule)


def test_support_starts_empty_and_grows():
    """Inverse scale space: V = Γ = 0 at start, structures enter over time."""
    model = conv_dense_model()
    variables = model.trainable_variables
    opt = DessiLBI(learning_rate=0.2, mu=1.0, lambda_=1.0, momentum=0.0)
    opt.build(variables)
    kernel = model.get_layer("conv").kernel
    assert not np.any(ops.convert_to_numpy(opt.support(kernel)))
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(30):
        grads = [ops.convert_to_tensor(rng.normal(scale=0.1, size=v.shape).astype("float32"))
                 for v in variables]
        opt.apply(grads, variables)
        counts.append(int(np.count_nonzero(ops.convert_to_numpy(opt.support(kernel)))))
    assert counts[0] == 0 < counts[-1]


def test_support_is_boolean_and_matches_gamma():
    model, opt, ref, _ = run_against_reference("auto", 0.9, False, lr=0.3)
    for v in model.trainable_variables:
        support = opt.support(v)
        if support is None:
            continue
        support = ops.convert_to_numpy(support)
        assert support.dtype == bool and support.shape == tuple(v.shape)
        np.testing.assert_array_equal(support, ops.convert_to_numpy(opt.gamma(v)) != 0)


def test_auto_structure_couples_conv_by_filter_and_dense_elementwise():
    model = conv_dense_model()
    opt = DessiLBI()
    opt.build(model.trainable_variables)
    got = {v.path: opt.variable_structure(v) for v in model.trainable_variables}
    assert got == {
        "conv/kernel": "filter", "conv/bias": None,
        "dense/kernel": "elementwise", "dense/bias": None,
    }
    assert [v.path for v, _ in opt.coupled_variables()] == ["conv/kernel", "dense/kernel"]


def test_auto_leaves_normalization_embedding_and_depthwise_uncoupled():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2DTranspose(2, 3)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    opt = DessiLBI()
    opt.build(model.trainable_variables)
    coupled = {v.path: s for v, s in opt.coupled_variables()}
    assert list(coupled.values()) == ["elementwise"]
    assert next(iter(coupled)).endswith("dense/kernel")


def test_structures_for_uses_layer_classes_not_names():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="depthwise_named_conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    mapping = tf_dessilbi.structures_for(model)
    opt = DessiLBI(structure=mapping)
    opt.build(model.trainable_variables)
    got = {v.path: s for v, s in opt.coupled_variables()}
    assert got == {"depthwise_named_conv/kernel": "filter", "head/kernel": "elementwise"}


def test_uncoupled_variables_get_momentum_sgd_with_step_kappa_alpha():
    model = conv_dense_model()
    opt = DessiLBI(learning_rate=0.1, kappa=2.0, momentum=0.5,
                   structure={"conv/kernel": "filter"})
    bias = model.get_layer("dense").bias
    before = ops.convert_to_numpy(bias).copy()
    g = np.full(bias.shape, 0.3, "float32")
    grads = [ops.zeros(v.shape) if v is not bias else ops.convert_to_tensor(g)
             for v in model.trainable_variables]
    opt.apply(grads, model.trainable_variables)
    opt.apply(grads, model.trainable_variables)
    # b1 = g, b2 = 0.5 g + g = 1.5 g; total step = κα(g + 1.5 g)
    np.testing.assert_allclose(ops.convert_to_numpy(bias), before - 2.0 * 0.1 * 2.5 * g, rtol=1e-5)


def test_hyperparameters_are_variables_and_setters_take_effect():
    model = conv_dense_model()
    variables = model.trainable_variables
    opt = DessiLBI(learning_rate=0.3, kappa=1.0, mu=1.0, lambda_=0.1)
    names = {v.name for v in opt.variables}
    assert {"kappa", "mu", "lambda"} <= names
    opt.kappa = 1.5
    opt.mu = 2.0
    opt.lambda_ = 1.0
    assert float(ops.convert_to_numpy(opt.kappa)) == 1.5
    # Same trajectory as an optimizer constructed with those values.
    ref_model, _, ref, _ = run_against_reference("auto", 0.9, False, lr=0.3, steps=12)
    rng = np.random.default_rng(1)
    for _ in range(12):
        grads = unit_scaled_gradients(rng, variables)
        opt.apply([ops.convert_to_tensor(g) for g in grads], variables)
    for v, w in zip(variables, ref.w):
        np.testing.assert_allclose(ops.convert_to_numpy(v), w, rtol=2e-5, atol=2e-6)


def test_get_config_round_trip_and_registered():
    opt = DessiLBI(learning_rate=0.05, kappa=2.0, mu=50.0, lambda_=0.5, momentum=0.8,
                   nesterov=True, structure={"conv": "filter", "dense": None},
                   lambda_scaling="none", clipnorm=1.0)
    config = opt.get_config()
    clone = DessiLBI.from_config(config)
    assert clone.get_config() == config
    assert config["structure"] == [["conv", "filter"], ["dense", None]]
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, DessiLBI)
    assert restored.get_config() == config
    assert keras.saving.get_registered_name(DessiLBI) == "tf_dessilbi>DessiLBI"


def test_base_optimizer_features_still_apply():
    """clipnorm from the base class clips before the DessiLBI update."""
    model = conv_dense_model()
    variables = model.trainable_variables
    opt = DessiLBI(learning_rate=0.1, momentum=0.0, clipnorm=1e-3,
                   structure={"conv/bias": "elementwise"})
    bias = model.get_layer("conv").bias
    bias.assign(ops.zeros(bias.shape))  # so the coupling term (W−Γ)/μ is 0
    grads = [ops.ones(v.shape) * 100.0 for v in variables]
    opt.apply(grads, variables)
    # Δ = κα·clip(g): each of the 4 entries moves by 0.1·1e-3/√4 exactly.
    np.testing.assert_allclose(ops.convert_to_numpy(bias), np.full(4, -0.1 * 1e-3 / 2), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"kappa": 0.0}, ValueError, r"`kappa` must be > 0\. Received: kappa=0\.0"),
        ({"kappa": -1}, ValueError, r"`kappa` must be > 0\. Received: kappa=-1\.0"),
        ({"mu": 0}, ValueError, r"`mu` must be > 0\. Received: mu=0\.0"),
        ({"mu": math.inf}, ValueError, r"`mu` must be finite\. Received: mu=inf"),
        ({"lambda_": -0.1}, ValueError, r"`lambda_` must be >= 0\. Received: lambda_=-0\.1"),
        ({"lambda_": math.nan}, ValueError, r"`lambda_` must be finite"),
        ({"kappa": "1"}, TypeError, r"`kappa` must be a real number\. Received: kappa='1'"),
        ({"momentum": 1.0}, ValueError, r"`momentum` must be in \[0, 1\)\. Received: momentum=1\.0"),
        ({"momentum": -0.1}, ValueError, r"`momentum` must be >= 0"),
        ({"momentum": 0.0, "nesterov": True}, ValueError, r"`nesterov=True` needs `momentum` > 0"),
        ({"nesterov": "yes"}, TypeError, r"`nesterov` must be a bool"),
        ({"structure": "filters"}, ValueError, r"`structure` must be one of \('auto', 'elementwise', 'filter', 'filter_neuron'\) or a mapping.*Received: structure='filters'"),
        ({"structure": {"conv": "filters"}}, ValueError, r"`structure\['conv'\]` must be one of .*Received: 'filters'"),
        ({"structure": {"conv[": "filter"}}, ValueError, r"`structure` key 'conv\[' is not a valid regular expression"),
        ({"structure": {3: "filter"}}, TypeError, r"`structure` keys must be regex strings"),
        ({"structure": {}}, ValueError, r"`structure` mapping is empty"),
        ({"structure": 5}, TypeError, r"`structure` must be 'auto' or a mapping"),
        ({"lambda_scaling": "sqrt"}, ValueError, r"`lambda_scaling` must be one of \('fan_in', 'none', 'init_norm', 'unit_init_norm'\)\. Received: lambda_scaling='sqrt'"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        DessiLBI(**kwargs)


def test_setters_validate():
    opt = DessiLBI()
    with pytest.raises(ValueError, match=r"`kappa` must be > 0"):
        opt.kappa = -2.0
    with pytest.raises(ValueError, match=r"`lambda_` must be >= 0"):
        opt.lambda_ = -1.0
    assert float(ops.convert_to_numpy(opt.kappa)) == 1.0


def test_pattern_matching_nothing_is_an_error_at_build():
    model = conv_dense_model()
    opt = DessiLBI(structure={"conv/kernel": "filter", "convv/kernel": "filter"})
    with pytest.raises(ValueError, match=r"patterns \['convv/kernel'\] match no trainable variable"):
        opt.build(model.trainable_variables)
    assert not opt.built


def test_group_structure_on_a_vector_is_an_error():
    model = conv_dense_model()
    opt = DessiLBI(structure={"bias": "neuron"})
    with pytest.raises(ValueError, match=r"'neuron' .* needs a variable of rank >= 2, but variable 'conv/bias' has shape \(4,\)"):
        opt.build(model.trainable_variables)


def test_accessors_before_build_and_for_unknown_variables():
    model = conv_dense_model()
    opt = DessiLBI()
    with pytest.raises(ValueError, match="not built yet"):
        opt.gamma(model.trainable_variables[0])
    opt.build(model.trainable_variables[:2])
    with pytest.raises(ValueError, match="not one of the variables this optimizer was built with"):
        opt.support(model.trainable_variables[3])


def test_apply_w_star_sets_kernels_to_w_on_support_and_restores():
    model, opt, ref, structures = run_against_reference(STRUCTURE_CASES["groups"], 0.9, False, lr=0.3)
    dense_before = [ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    conv = model.get_layer("conv")
    handle = tf_dessilbi.apply_w_star(model, opt)
    mask = ref.gamma[0] != 0
    np.testing.assert_allclose(ops.convert_to_numpy(conv.kernel), np.where(mask, dense_before[0], 0), rtol=1e-6)
    units = mask.reshape(-1, mask.shape[-1]).any(axis=0)
    np.testing.assert_allclose(ops.convert_to_numpy(conv.bias), np.where(units, dense_before[1], 0), rtol=1e-6)
    assert 0 < units.sum() < units.size
    handle.restore()
    for v, before in zip(model.trainable_variables, dense_before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), before)


def test_apply_w_star_context_manager_and_keep_bias():
    model, opt, ref, _ = run_against_reference(STRUCTURE_CASES["groups"], 0.9, False, lr=0.3)
    bias_before = ops.convert_to_numpy(model.get_layer("conv").bias).copy()
    with tf_dessilbi.apply_w_star(model, opt, prune_bias=False):
        np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer("conv").bias), bias_before)
        assert np.count_nonzero(ops.convert_to_numpy(model.get_layer("conv").kernel) == 0) > 0
    assert np.count_nonzero(ops.convert_to_numpy(model.get_layer("conv").kernel) == 0) == 0


def _conv_bn_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_apply_w_star_prunes_the_batch_norm_channel_of_a_pruned_filter():
    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    # Trained-looking statistics: a zeroed filter would come out of BN as β − γ·m/√(v+ε) ≠ 0.
    bn.moving_mean.assign(rng.normal(size=4).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=4).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=4).astype("float32"))
    bn.beta.assign(rng.uniform(0.5, 1.0, size=4).astype("float32"))
    conv = model.get_layer("conv")
    opt = DessiLBI(0.1, lambda_=1.0, structure={"conv/kernel": "filter"})
    opt.build(model.trainable_variables)
    v = np.zeros(conv.kernel.shape, "float32")
    v[..., :2] = 10.0  # filters 0, 1 in the support; 2, 3 out
    v_slot, = [w for w in opt.variables if "dessilbi_v" in w.path and w.shape == conv.kernel.shape]
    v_slot.assign(v)
    np.testing.assert_array_equal(ops.convert_to_numpy(opt.v(conv.kernel)), v)
    gamma_before = ops.convert_to_numpy(bn.gamma).copy()
    x = rng.normal(size=(5, 6, 6, 2)).astype("float32")
    relu = keras.Model(model.inputs, model.get_layer("relu").output)
    with tf_dessilbi.apply_w_star(model, opt):
        np.testing.assert_array_equal(ops.convert_to_numpy(bn.gamma)[2:], 0)
        np.testing.assert_array_equal(ops.convert_to_numpy(bn.beta)[2:], 0)
        np.testing.assert_array_equal(ops.convert_to_numpy(bn.gamma)[:2], gamma_before[:2])
        act = ops.convert_to_numpy(relu(x, training=False))
        assert np.all(act[..., 2:] == 0) and np.any(act[..., :2] != 0)
        w_star_out = ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_array_equal(ops.convert_to_numpy(bn.gamma), gamma_before)  # restored
    # The shrunk model drops filters 2, 3 and computes W*'s function.
    small = tf_dessilbi.shrink(model, optimizer=opt)
    assert small.get_layer("conv").kernel.shape[-1] == 2
    np.testing.assert_allclose(ops.convert_to_numpy(small(x, training=False)), w_star_out, atol=1e-5)
    with tf_dessilbi.apply_w_star(model, opt, prune_bias=False):  # the authors' W*: BN kept
        np.testing.assert_array_equal(ops.convert_to_numpy(bn.gamma), gamma_before)


def test_apply_w_star_needs_a_built_optimizer():
    model = conv_dense_model()
    with pytest.raises(ValueError, match="needs an optimizer that has been built"):
        tf_dessilbi.apply_w_star(model, DessiLBI())


def test_sparsity_report_counts_units_and_weights():
    model, opt, ref, structures = run_against_reference(STRUCTURE_CASES["mixed"], 0.9, False, lr=0.3)
    report = tf_dessilbi.sparsity_report(model, opt)
    rows = {r.layer: r for r in report}
    assert set(rows) == {"conv", "dense"}
    for i, layer in [(0, "conv"), (2, "dense")]:
        mask = ref.gamma[i] != 0
        assert rows[layer].weights_kept == int(mask.sum())
        assert rows[layer].weights_total == mask.size
        assert rows[layer].units_kept == int(mask.reshape(-1, mask.shape[-1]).any(axis=0).sum())
        assert rows[layer].units_total == mask.shape[-1]
    assert rows["dense"].structure == "neuron"
    assert report.weights_kept == sum(r.weights_kept for r in report)
    text = str(report)
    assert "conv" in text and "total" in text and f"{rows['dense'].weights_kept}/{rows['dense'].weights_total}" in text
    data = report.to_dict()
    assert data["weights_total"] == ref.gamma[0].size + ref.gamma[2].size


def _reference_gamma_now(ref, i):
    """Γ = κ·prox_λ(V) of reference variable ``i`` with the reference's current κ and λ."""
    from tests.dessilbi_reference import group_soft_threshold, soft_threshold, threshold

    s = ref.structures[i]
    lam = threshold(ref.lam, ref.w[i].shape, s, ref.lambda_scaling, ref.w0[i])
    prox = soft_threshold if s == "elementwise" else group_soft_threshold
    return ref.kappa * prox(ref.v[i], lam)


@pytest.mark.parametrize("name,value", [("kappa", 2.5), ("lambda_", 0.3), ("mu", 0.7)])
def test_hyperparameters_changed_mid_run_follow_the_documented_semantics(name, value):
    """κ, μ, λ assigned between steps: Γ is κ·prox_λ(V) with the values *now*.

    The NumPy reference changes the value after step 5 of 10. DessiLBI keeps V, not Γ,
    so the next step's coupling term (W − Γ)/μ uses Γ = κ_new·prox_{λ_new}(V_5); the
    paper's iteration (and release 0.1, which stored Γ) uses Γ_5 = κ_old·prox_{λ_old}(V_5).
    μ enters the step directly, so both agree for μ. The test also runs the paper's
    variant and checks it differs for κ and λ, so it tells the two apart.
    """
    model = conv_dense_model()
    variables = model.trainable_variables
    opt = DessiLBI(learning_rate=0.3, kappa=1.0, mu=1.0, lambda_=0.05, momentum=0.5)
    structures = expected_structures(model, "auto")
    start = [ops.convert_to_numpy(v) for v in variables]
    ours = ReferenceDessiLBI(start, structures, 1.0, 1.0, 0.05, 0.5, False, "fan_in")
    paper = ReferenceDessiLBI(start, structures, 1.0, 1.0, 0.05, 0.5, False, "fan_in")
    rng = np.random.default_rng(3)
    for step in range(10):
        if step == 5:
            setattr(opt, name, value)
            for ref in (ours, paper):
                setattr(ref, {"lambda_": "lam"}.get(name, name), value)
            for i, s in enumerate(structures):  # ours: Γ recomputed from V with the new value
                if s is not None:
                    ours.gamma[i] = _reference_gamma_now(ours, i)
        grads = unit_scaled_gradients(rng, variables)
        opt.apply([ops.convert_to_tensor(g) for g in grads], variables)
        ours.step(grads, 0.3)
        paper.step(grads, 0.3)
    for i, v in enumerate(variables):
        np.testing.assert_allclose(ops.convert_to_numpy(v), ours.w[i], rtol=2e-5, atol=2e-6,
                                   err_msg=f"W of {v.path}")
        if structures[i] is not None:
            np.testing.assert_allclose(ops.convert_to_numpy(opt.gamma(v)), ours.gamma[i],
                                       rtol=2e-5, atol=2e-6, err_msg=f"Γ of {v.path}")
    gap = max(np.max(np.abs(a - b)) for a, b in zip(ours.w, paper.w))
    if name == "mu":
        assert gap == 0.0
    else:
        assert gap > 1e-4  # the two semantics differ, and the optimizer follows ours

"""tf_dessilbi.compress: cost counter, importances, budgets, Pruner, DessiLBI warm start."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dessilbi
from tf_dessilbi.compress import budget as budget_lib
from tf_dessilbi.compress import importance as importance_lib
from tf_dessilbi.compress import CostModel
from tf_dessilbi.compress import DessiLBIWarmStart
from tf_dessilbi.compress import Pruner
from tf_dessilbi.models import resnet20


def _resnet(seed=0):
    keras.utils.set_random_seed(seed)
    model = resnet20(input_shape=(12, 12, 1), num_classes=4)
    # trained-looking BatchNorm: distinct γ, β so BN scores and the fold path are exercised
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.2, 2.0, g.shape), rng.normal(0, 0.1, b.shape), m, v])
    return model


def _data(n=32, shape=(12, 12, 1), classes=4, batch=8, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, *shape).astype("float32")
    y = (np.arange(n) % classes).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), x


@pytest.fixture(scope="module")
def resnet():
    return _resnet()


def test_cost_model_counts_as_shrink_report(resnet):
    cm = CostModel(resnet)
    assert len(cm.groups) == 448  # 16 + 32 + 64 stream channels, 2·(16·3 + 32·3 + 64·3) block-internal
    assert sorted(len(f) for f in cm.families)[:4] == [16, 16, 16, 16]
    rng = np.random.RandomState(1)
    for count in (0, 37, 300):
        removed = rng.choice(len(cm.groups), count, replace=False)
        _, report = tf_dessilbi.shrink(resnet, cm.unit_masks(removed), return_report=True)
        macs, params = cm.cost(removed)
        assert macs == report.macs_after
        assert report.macs_before == cm.macs_dense
        assert params <= report.params_after  # shrink may add a folded bias
        assert report.params_after - params <= 64


def test_magnitude_and_bn_scale_match_numpy(resnet):
    cm = CostModel(resnet)
    l1 = importance_lib.Magnitude(1)(resnet, cm)
    l2 = importance_lib.Magnitude(2, reduction="sum")(resnet, cm)
    bn = importance_lib.BatchNormScale()(resnet, cm)
    for i in (0, 5, 100, 447):
        g = cm.groups[i]
        cols = [resnet.get_layer(n).kernel.numpy()[..., u] for n, u in g.producers]
        assert l1[i] == pytest.approx(np.mean([np.abs(c).sum() for c in cols]), rel=1e-6)
        assert l2[i] == pytest.approx(np.sum([np.sqrt((c.astype(np.float64) ** 2).sum()) for c in cols]),
                                      rel=1e-6)
        gammas = [abs(resnet.get_layer(n).gamma.numpy()[c]) for n, c in g.channelwise]
        assert bn[i] == pytest.approx(np.mean(gammas), rel=1e-6)
        # the stream groups couple 4 (stage 1) conv filters and their BNs
        assert len(g.channelwise) == len(g.producers)


def test_taylor_matches_numpy_backprop():
    """I_S = mean_batches (Σ_{s∈S} g_s w_s)² for a linear hidden layer, gradients by hand."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, name="h")(inputs)
    out = keras.layers.Dense(3, name="out")(h)
    model = keras.Model(inputs, out)
    rng = np.random.RandomState(0)
    x = rng.randn(12, 5).astype("float32")
    y = rng.randint(0, 3, 12).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    cm = CostModel(model)
    assert [g.producers for g in cm.groups] == [(("h", j),) for j in range(4)]
    scores = importance_lib.Taylor(num_batches=3)(model, cm, data)
    w1, b1 = [a.astype(np.float64) for a in model.get_layer("h").get_weights()]
    w2, b2 = [a.astype(np.float64) for a in model.get_layer("out").get_weights()]
    ref = np.zeros(4)
    for i in range(3):
        xb, yb = x[4 * i:4 * i + 4].astype(np.float64), y[4 * i:4 * i + 4]
        hb = xb @ w1 + b1
        logits = hb @ w2 + b2
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dlogits = (p - np.eye(3)[yb]) / len(xb)
        dh = dlogits @ w2.T
        gw1, gb1 = xb.T @ dh, dh.sum(0)
        ref += ((gw1 * w1).sum(0) + gb1 * b1) ** 2
    np.testing.assert_allclose(scores, ref / 3, rtol=1e-4, atol=1e-12)


def test_plan_is_the_fewest_removals_meeting_the_budget(resnet):
    cm = CostModel(resnet)
    scores = importance_lib.normalized(importance_lib.Magnitude(1)(resnet, cm), cm)
    order = budget_lib.removal_order(scores, cm, "global")
    kind, target = budget_lib.target_of(cm, macs=0.5)
    removed, (macs, _) = budget_lib.plan(cm, order, kind, target, round_to=4)
    assert macs <= target
    k = max(np.flatnonzero(np.isin(order, removed))) + 1
    assert cm.cost(budget_lib.removed_at(cm, order, k - 1, round_to=4))[0] > target
    kept = {}
    for f, members in enumerate(cm.families):
        kept[f] = len(members) - int(np.isin(members, removed).sum())
        assert kept[f] % 4 == 0 or kept[f] == len(members)
    # uniform: every family loses about the same fraction
    order_u = budget_lib.removal_order(scores, cm, "uniform")
    removed_u, _ = budget_lib.plan(cm, order_u, kind, target)
    fractions = [np.isin(m, removed_u).mean() for m in cm.families]
    assert max(fractions) - min(fractions) <= 1.0 / 16 + 1e-9


def test_budget_errors_name_the_argument(resnet):
    cm = CostModel(resnet)
    with pytest.raises(ValueError, match="exactly one"):
        budget_lib.target_of(cm)
    with pytest.raises(ValueError, match="exactly one"):
        budget_lib.target_of(cm, macs=0.5, params=0.5)
    with pytest.raises(ValueError, match=r"`macs` must be > 0"):
        budget_lib.target_of(cm, macs=0.0)
    with pytest.raises(ValueError, match=r"`params` must be <= 1"):
        budget_lib.target_of(cm, params=1.5)
    order = budget_lib.removal_order(np.ones(len(cm.groups)), cm)
    with pytest.raises(ValueError, match="cannot be met"):
        budget_lib.plan(cm, order, "macs", 10.0)
    with pytest.raises(ValueError, match="allocation"):
        budget_lib.removal_order(np.ones(len(cm.groups)), cm, "random")


@pytest.mark.parametrize("kind,importance", [("macs", "l1"), ("params", "bn"), ("macs", "taylor")])
def test_pruner_meets_the_budget_and_leaves_the_model_alone(resnet, kind, importance):
    data, x = _data()
    before = [w.copy() for w in resnet.get_weights()]
    pruner = Pruner(resnet, importance, round_to=2, **{kind: 0.4})
    small = pruner.step(data)
    report = pruner.reports[-1]
    real = report.macs_after if kind == "macs" else report.params_after
    assert real <= 0.4 * (report.macs_before if kind == "macs" else report.params_before)
    assert small(x[:2]).shape == (2, 4)
    for a, b in zip(before, resnet.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="steps are done"):
        pruner.step(data)


def test_pruner_iterative_steps_fall_linearly(resnet):
    pruner = Pruner(resnet, "l1", macs=0.4, iterative_steps=3)
    dense = pruner.dense_cost[0]
    ratios = []
    for step in range(3):
        pruner.step()
        ratios.append(pruner.ratio()[0])
        assert ratios[-1] <= 1 - 0.6 * (step + 1) / 3 + 1e-9
    assert pruner.step_target(3) == pytest.approx(0.4 * dense)
    assert ratios[0] > ratios[1] > ratios[2]


def test_pruner_bad_arguments():
    model = _resnet()
    for kwargs, pattern in [({"macs": 0.5, "importance": "l3"}, "importance"),
                            ({"macs": 0.5, "iterative_steps": 0}, "iterative_steps"),
                            ({"macs": 0.5, "round_to": 1.5}, "round_to"),
                            ({"macs": 0.5, "allocation": "layer"}, "allocation"),
                            ({}, "exactly one")]:
        with pytest.raises((ValueError, TypeError), match=pattern):
            Pruner(model, **kwargs)
    with pytest.raises(ValueError, match="data"):
        Pruner(model, "taylor", macs=0.5).step()
    with pytest.raises(ValueError, match="`p` must be 1 or 2"):
        importance_lib.Magnitude(3)


def test_warm_start_initial_support_has_gamma_equal_w(resnet):
    model = _resnet(1)
    ws = DessiLBIWarmStart(model, macs=0.5, path_steps=50)
    ratios = ws.group_ratios()
    opt = ws.optimizer
    in_start = [g for g in range(len(ws.cost_model.groups)) if g not in ws.entry_steps]
    assert in_start and np.all(ratios[in_start] > 1)
    queued = list(ws.entry_steps)
    assert np.all(ratios[queued] <= 1)
    layer_of = {layer.name: layer for layer in model.layers}
    g = in_start[0]
    for name, unit in ws.cost_model.groups[g].producers:
        kernel = layer_of[name].kernel
        np.testing.assert_allclose(keras.ops.convert_to_numpy(opt.gamma(kernel))[..., unit],
                                   kernel.numpy()[..., unit], rtol=1e-4, atol=1e-6)
    # the support at the start fills about half the budget, under it
    assert ws.support_cost()[0] <= 0.5 * ws.cost_model.macs_dense


def test_warm_start_entry_times_follow_the_derivation():
    """Loss-free split LBI in NumPy (the paper's updates): each queued group enters at t_G."""
    model = _resnet(2)
    ws = DessiLBIWarmStart(model, macs=0.6, path_steps=40, learning_rate=0.05, decay=2.0)
    kappa, alpha, mu = ws.kappa, ws.learning_rate, ws.mu
    assert mu == pytest.approx(kappa * alpha / (1 - math.exp(-2.0 / 40)))
    layer_of = {layer.name: layer for layer in model.layers}
    queued = [(g, t) for g, t in ws.entry_steps.items() if t <= ws.path_steps]
    assert queued
    for g, t_g in queued[:: max(1, len(queued) // 12)]:
        members = ws.cost_model.groups[g].producers
        w = np.concatenate([layer_of[n].kernel.numpy()[..., u].ravel() for n, u in members]).astype(np.float64)
        v = np.concatenate([keras.ops.convert_to_numpy(ws.optimizer.v(layer_of[n].kernel))[..., u].ravel()
                            for n, u in members]).astype(np.float64)
        lam = ws.lambda_ * math.sqrt(len(members))
        entered = None
        for t in range(1, int(3 * t_g) + 5):
            gamma = np.zeros_like(w)  # outside the support until it enters
            w, v = w - kappa * alpha * (w - gamma) / mu, v + alpha / mu * (w - gamma)
            if np.linalg.norm(v) > lam:
                entered = t
                break
        assert entered is not None and abs(entered - t_g) <= 1.0 + 1e-6, (g, t_g, entered)


def test_warm_start_fork_and_shrink_meet_the_budget():
    model = _resnet(3)
    data, x = _data(n=64)
    ws = DessiLBIWarmStart(model, macs=0.5, path_steps=12, learning_rate=0.02, check_every=2)
    model.compile(optimizer=ws.optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.repeat(), steps_per_epoch=40, epochs=1, callbacks=[ws.fork], verbose=0)
    assert ws.fork.fork_step is not None and ws.fork.fork_step < 40
    assert ws.fork.history[-1][1] >= 0.5 * ws.cost_model.macs_dense
    small, report = ws.shrink()
    assert report.macs_after <= 0.5 * report.macs_before
    assert small(x[:2]).shape == (2, 4)


def test_warm_start_bad_arguments(resnet):
    for kwargs, pattern in [({"macs": 0.5, "path_steps": 0}, "path_steps"),
                            ({"macs": 0.5, "path_steps": 5, "initial": 1.0}, "initial"),
                            ({"macs": 0.5, "path_steps": 5, "learning_rate": -1.0}, "learning_rate"),
                            ({"path_steps": 5}, "exactly one")]:
        with pytest.raises((ValueError, TypeError), match=pattern):
            DessiLBIWarmStart(resnet, **kwargs)


def test_keras_applications_mobilenet_v2():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5)
    cm = CostModel(model)
    pruner = Pruner(model, "l1", macs=0.5, round_to=8)
    small = pruner.step()
    report = pruner.reports[-1]
    assert report.macs_before == cm.macs_dense
    assert report.macs_after <= 0.5 * cm.macs_dense
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    assert small(x).shape == (2, 5)

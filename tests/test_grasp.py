"""GraSP: H g against an explicit Hessian and finite differences in NumPy, the mask, sampling."""

import types

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.sparse import grasp


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _batches(num, n=6, d=4, c=3, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, c, n).astype(np.int32))
        for _ in range(num)
    ]


def _softmax_regression(seed=0, d=4, c=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    return keras.Model(inputs, keras.layers.Dense(c, name="logits")(inputs))


def _explicit_hessian_hg(w, b, batches, T):
    """g and H g of L = mean CE(softmax((xW + b)/T)) w.r.t. W with H built entry by entry."""
    d, c = w.shape
    gs, hs = [], []
    for x, y in batches:
        x = x.astype(np.float64)
        p = _softmax((x @ w + b) / T)
        n = len(y)
        gs.append(x.T @ (p - np.eye(c)[y]) / (n * T))
        H = np.zeros((d, c, d, c))
        for k in range(n):
            A = np.diag(p[k]) - np.outer(p[k], p[k])
            H += np.einsum("i,j,ab->iajb", x[k], x[k], A) / (n * T * T)
        hs.append(H.reshape(d * c, d * c))
    g = np.mean(gs, axis=0)
    hg = np.mean([h @ g.ravel() for h in hs], axis=0).reshape(d, c)
    return g, hg


@pytest.mark.parametrize("T", [1.0, 200.0])
def test_hg_matches_the_explicit_hessian(T):
    model = _softmax_regression()
    batches = _batches(2)
    w, b = [a.astype(np.float64) for a in model.get_weights()]
    g_ref, hg_ref = _explicit_hessian_hg(w, b, batches, T)
    g, hg = grasp.hessian_gradient_product(model, batches, temperature=T)
    np.testing.assert_allclose(g[0], g_ref, rtol=1e-4, atol=1e-6 * np.abs(g_ref).max())
    np.testing.assert_allclose(hg[0], hg_ref, rtol=1e-3, atol=1e-5 * np.abs(hg_ref).max())
    scores = grasp.grasp_scores(model, batches, temperature=T)
    raw = -w * hg_ref
    np.testing.assert_allclose(scores["logits/kernel"], raw / abs(raw.sum()), rtol=2e-3,
                               atol=1e-5 * np.abs(raw / raw.sum()).max())


def _mlp(seed=0, d=4, h=5, c=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    x = keras.layers.Dense(h, activation="tanh", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(c, name="logits")(x))


def _mlp_grad(params, batches, T):
    """NumPy backprop of the tanh MLP: mean over batches of (∂L/∂W1, ∂L/∂W2)."""
    w1, b1, w2, b2 = params
    g1 = np.zeros_like(w1)
    g2 = np.zeros_like(w2)
    for x, y in batches:
        x = x.astype(np.float64)
        h = np.tanh(x @ w1 + b1)
        p = _softmax((h @ w2 + b2) / T)
        dz = (p - np.eye(w2.shape[1])[y]) / (len(y) * T)
        g2 += h.T @ dz
        g1 += x.T @ ((dz @ w2.T) * (1 - h * h))
    return g1 / len(batches), g2 / len(batches)


def test_hg_matches_finite_differences_on_a_two_layer_network():
    T = 2.0
    model = _mlp()
    batches = _batches(2)
    params = [a.astype(np.float64) for a in model.get_weights()]
    g1, g2 = _mlp_grad(params, batches, T)
    eps = 1e-4

    def shifted(sign):
        w1, b1, w2, b2 = params
        return _mlp_grad([w1 + sign * eps * g1, b1, w2 + sign * eps * g2, b2], batches, T)

    (p1, p2), (m1, m2) = shifted(+1), shifted(-1)
    hg_ref = [(p1 - m1) / (2 * eps), (p2 - m2) / (2 * eps)]
    _, hg = grasp.hessian_gradient_product(model, batches, temperature=T)
    for got, ref in zip(hg, hg_ref):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_mask_removes_the_highest_scores():
    model = _mlp()
    batches = _batches(2)
    before = [w.copy() for w in model.get_weights()]
    scores = grasp.grasp_scores(model, batches, temperature=200.0)
    mask = grasp.grasp_mask(model, batches, sparsity=0.75)
    flat = np.concatenate([scores[k].ravel() for k in scores])
    keep = int(np.floor(0.25 * flat.size + 0.5))
    assert mask.weights_kept == keep
    kept = np.concatenate([scores[k][mask.weights[k]] for k in scores])
    removed = np.concatenate([scores[k][~mask.weights[k]] for k in scores])
    assert kept.max() <= removed.min() + 1e-12  # the highest scores went
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_layer_scope():
    model = _mlp()
    mask = grasp.grasp_mask(model, _batches(1), sparsity=0.5, scope="layer")
    for m in mask.weights.values():
        assert m.sum() == int(np.floor(0.5 * m.size + 0.5))


def _labelled(n=60, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    return x, y


def test_class_balanced_batches_take_samples_per_class():
    x, y = _labelled()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    batches = grasp.class_balanced_batches(ds, num_classes=3, samples_per_class=4, batch_size=5)
    ys = np.concatenate([b[1] for b in batches])
    xs = np.concatenate([b[0] for b in batches])
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.bincount(ys, minlength=3), [4, 4, 4])
    for c in range(3):  # the first 4 examples of each class, in data order
        np.testing.assert_array_equal(xs[ys == c], x[y == c][:4])


def test_class_balanced_batches_refuse_missing_classes_and_empty_data():
    x, y = _labelled()
    ds = tf.data.Dataset.from_tensor_slices((x, np.minimum(y, 1))).batch(8)
    with pytest.raises(ValueError, match=r"classes \[2\] have fewer than samples_per_class=2"):
        grasp.class_balanced_batches(ds, 3, 2)
    empty = tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(8)
    with pytest.raises(ValueError, match="empty dataset"):
        grasp.class_balanced_batches(empty, 3, 2)


def test_prepare_hook():
    x, y = _labelled()
    data = types.SimpleNamespace(
        train=tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), num_classes=3
    )
    config = ml_collections.ConfigDict({"sparse": {
        "sparsity": 0.5, "scope": "global", "temperature": 200.0,
        "samples_per_class": 3, "score_batch_size": 0,
    }})
    model = _mlp()
    masked = grasp.prepare(config, model, data, steps_per_epoch=1)
    batches = grasp.class_balanced_batches(data.train, 3, 3)
    expected = grasp.grasp_mask(model, batches, 0.5)
    got = masks_lib.FixedMasks().mask(masked)
    assert grasp.callbacks(config, masked, 2) == []
    for key in expected.weights:
        np.testing.assert_array_equal(got.weights[key], expected.weights[key])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.5}, r"`sparsity` must be < 1"),
        ({"sparsity": 0.5, "temperature": 0.0}, r"`temperature` must be > 0"),
        ({"sparsity": 0.5, "scope": "x"}, r"`scope` must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = _mlp()
    with pytest.raises(ValueError, match=match):
        grasp.grasp_mask(model, _batches(1), **kwargs)


def test_no_batches_is_refused():
    with pytest.raises(ValueError, match="empty dataset"):
        grasp.grasp_mask(_mlp(), [], 0.5)

"""SNIP: |g ⊙ w| against analytic NumPy gradients, the top-k mask, the CLI hook, bad input."""

import types

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.layers import MaskedLayer
from tf_dessilbi.sparse import snip


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _two_layer(seed=0, d=4, h=5, c=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    x = keras.layers.Dense(h, name="hidden")(inputs)  # linear: analytic gradients are short
    outputs = keras.layers.Dense(c, name="logits")(x)
    return keras.Model(inputs, outputs)


def _batches(num, n=8, d=4, c=3, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, c, n).astype(np.int32))
        for _ in range(num)
    ]


def _numpy_grads(model, x, y):
    """∂L/∂W1, ∂L/∂W2 of L = mean CE(softmax((x W1 + b1) W2 + b2)), by hand."""
    w1, b1, w2, b2 = [w.astype(np.float64) for w in model.get_weights()]
    x = x.astype(np.float64)
    h = x @ w1 + b1
    p = _softmax(h @ w2 + b2)
    dz = (p - np.eye(w2.shape[1])[y]) / len(y)
    return x.T @ (dz @ w2.T), h.T @ dz


def _reference_scores(model, batches):
    grads = [_numpy_grads(model, x, y) for x, y in batches]
    g1 = np.mean([g[0] for g in grads], axis=0)
    g2 = np.mean([g[1] for g in grads], axis=0)
    w1, _, w2, _ = model.get_weights()
    s1, s2 = np.abs(g1 * w1), np.abs(g2 * w2)
    total = s1.sum() + s2.sum()
    return {"hidden/kernel": s1 / total, "logits/kernel": s2 / total}


@pytest.mark.parametrize("num_batches", [1, 3])
def test_scores_match_analytic_gradients(num_batches):
    model = _two_layer()
    batches = _batches(3)
    scores = snip.snip_scores(model, batches, num_batches=num_batches)
    ref = _reference_scores(model, batches[:num_batches])
    assert list(scores) == ["hidden/kernel", "logits/kernel"]
    for key in ref:
        np.testing.assert_allclose(scores[key], ref[key], rtol=1e-4, atol=1e-7)
    assert sum(s.sum() for s in scores.values()) == pytest.approx(1.0)


def test_scores_accept_a_tf_dataset():
    model = _two_layer()
    batches = _batches(2)
    ds = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    ).batch(8)
    a = snip.snip_scores(model, ds, num_batches=2)
    b = snip.snip_scores(model, batches, num_batches=2)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_global_mask_keeps_the_largest_scores():
    model = _two_layer()
    batches = _batches(2)
    before = [w.copy() for w in model.get_weights()]
    mask = snip.snip_mask(model, batches, sparsity=0.7, num_batches=2)
    ref = _reference_scores(model, batches)
    flat = np.concatenate([ref[k].ravel() for k in ref])
    k = int(np.floor(0.3 * flat.size + 0.5))
    threshold = np.sort(flat)[::-1][k - 1]
    assert mask.weights_kept == k
    for key in ref:
        # Every kept score is >= every removed one (a global ranking).
        assert np.all(ref[key][mask.weights[key]] >= threshold - 1e-9)
    removed_max = max(ref[key][~mask.weights[key]].max() for key in ref)
    assert removed_max <= threshold + 1e-9
    for a, b in zip(before, model.get_weights()):  # scoring leaves the model alone
        np.testing.assert_array_equal(a, b)


def test_layer_scope_keeps_the_fraction_of_every_layer():
    model = _two_layer()
    batches = _batches(1)
    mask = snip.snip_mask(model, batches, sparsity=0.5, scope="layer")
    ref = _reference_scores(model, batches)
    for key, m in mask.weights.items():
        k = int(np.floor(0.5 * m.size + 0.5))
        assert m.sum() == k
        top = np.argsort(-ref[key].ravel(), kind="stable")[:k]
        assert set(np.flatnonzero(m.ravel())) == set(top)


def test_snip_model_trains_with_the_mask_fixed():
    model = _two_layer()
    batches = _batches(2)
    masked = snip.snip_model(model, batches, sparsity=0.6)
    wrappers = [l for l in masked.layers if isinstance(l, MaskedLayer)]
    assert len(wrappers) == 2
    mask = masks_lib.FixedMasks().mask(masked)
    assert mask.weights_kept == int(np.floor(0.4 * mask.weights_total + 0.5))
    masked.compile(keras.optimizers.SGD(0.1), snip.default_loss())
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    masked.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for wrapper in wrappers:
        kept = wrapper.kept_mask()
        np.testing.assert_array_equal(wrapper.stripped_kernel()[~kept], 0.0)
    np.testing.assert_array_equal(masks_lib.FixedMasks().mask(masked).weights["hidden/kernel"],
                                  mask.weights["hidden/kernel"])


def test_prepare_hook_scores_data_train():
    model = _two_layer()
    batches = _batches(2)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    data = types.SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat())
    config = ml_collections.ConfigDict(
        {"sparse": {"sparsity": 0.8, "scope": "global", "score_batches": 2}}
    )
    masked = snip.prepare(config, model, data, steps_per_epoch=2)
    expected = snip.snip_mask(model, batches, 0.8, num_batches=2)
    got = masks_lib.FixedMasks().mask(masked)
    assert snip.callbacks(config, masked, 2) == []
    for key in expected.weights:
        np.testing.assert_array_equal(got.weights[key], expected.weights[key])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sparsity": 1.0}, ValueError, r"`sparsity` must be < 1. Received: sparsity=1"),
        ({"sparsity": -0.1}, ValueError, r"`sparsity` must be >= 0"),
        ({"sparsity": "0.5"}, TypeError, r"`sparsity` must be a real number"),
        ({"sparsity": 0.5, "scope": "row"}, ValueError, r"`scope` must be one of"),
        ({"sparsity": 0.5, "num_batches": 0}, ValueError, r"`num_batches` must be >= 1"),
    ],
)
def test_bad_arguments_fail_before_scoring(kwargs, error, match):
    model = _two_layer()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        snip.snip_mask(model, _batches(1), **kwargs)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_empty_dataset_is_refused():
    model = _two_layer()
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    ).batch(4)
    with pytest.raises(ValueError, match="empty dataset"):
        snip.snip_mask(model, empty, 0.5)
    with pytest.raises(ValueError, match="empty dataset"):
        snip.snip_mask(model, [], 0.5)


def test_model_without_sparsifiable_weight_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Activation("relu")(inputs))
    with pytest.raises(ValueError, match="no sparsifiable weight"):
        snip.snip_mask(model, _batches(1), 0.5)

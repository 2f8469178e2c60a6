"""The one mask update: drop/grow and prune against NumPy references; all-or-nothing errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tf_dessilbi.layers import mask_model
from tf_dessilbi.sparse import updater as updater_lib


def tiny_model(name="tiny", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(6, activation="relu", name="d1")(inputs)
    outputs = keras.layers.Dense(3, name="d2")(x)
    return mask_model(keras.Model(inputs, outputs, name=name))


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def ref_rank(score, candidates, k):
    """Indices of the k largest candidate scores, ties to the lower flat index."""
    flat = np.where(candidates.ravel(), score.ravel().astype(np.float64), -np.inf)
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    return order[:k]


def ref_drop_grow(mask, drop, grow, k):
    """The drop/grow rule written from RigL's description."""
    n_active = int(mask.sum())
    kept = np.zeros(mask.size, bool)
    kept[ref_rank(drop, mask, n_active - k)] = True
    grown = np.zeros(mask.size, bool)
    grown[ref_rank(grow, ~kept.reshape(mask.shape), k)] = True
    new = (kept | grown).reshape(mask.shape)
    return new, (grown.reshape(mask.shape) & ~mask)


@pytest.mark.parametrize("k", [0, 1, 5, 12])
def test_drop_grow_matches_reference(k):
    rng = np.random.RandomState(k)
    masks = {"a": rng.rand(6, 5) > 0.4, "b": rng.rand(4, 4, 2) > 0.5}
    drop = {key: rng.randint(0, 5, m.shape).astype("float32") for key, m in masks.items()}  # ties
    grow = {key: rng.randint(0, 5, m.shape).astype("float32") for key, m in masks.items()}
    counts = {key: min(k, int(m.sum())) for key, m in masks.items()}
    new, newly = updater_lib.drop_grow(masks, drop, grow, counts)
    for key, m in masks.items():
        want, want_new = ref_drop_grow(m, drop[key], grow[key], counts[key])
        np.testing.assert_array_equal(np_(new[key]), want)
        np.testing.assert_array_equal(np_(newly[key]), want_new)
        assert np_(new[key]).sum() == m.sum()  # the parameter count is fixed exactly


def test_drop_more_than_active_is_refused():
    masks = {"a": np.array([True, False, False])}
    with pytest.raises(ValueError, match="Cannot drop 2 weights of 'a': only 1 are active"):
        updater_lib.drop_grow(masks, {"a": np.ones(3)}, {"a": np.ones(3)}, {"a": 2})


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_keeps_top_active_and_never_grows(scope):
    rng = np.random.RandomState(3)
    masks = {"a": rng.rand(5, 4) > 0.3, "b": rng.rand(10) > 0.3}
    scores = {"a": rng.randn(5, 4).astype("float32"), "b": rng.randn(10).astype("float32")}
    new = {k: np_(v) for k, v in updater_lib.prune(masks, scores, 0.4, scope).items()}
    if scope == "layer":
        for key, m in masks.items():
            k = min(int(m.sum()), int(np.floor(0.4 * m.size + 0.5)))
            want = np.zeros(m.size, bool)
            want[ref_rank(scores[key], m, k)] = True
            np.testing.assert_array_equal(new[key], want.reshape(m.shape))
    else:
        flat_m = np.concatenate([masks["a"].ravel(), masks["b"].ravel()])
        flat_s = np.concatenate([scores["a"].ravel(), scores["b"].ravel()])
        want = np.zeros(flat_m.size, bool)
        want[ref_rank(flat_s, flat_m, int(np.floor(0.4 * 30 + 0.5)))] = True
        np.testing.assert_array_equal(np.concatenate([new["a"].ravel(), new["b"].ravel()]), want)
    for key, m in masks.items():
        assert not (new[key] & ~m).any()


class _Fixed(updater_lib.MaskUpdater):
    """A drop/grow updater with given fraction and grow scores (for tests)."""

    kind = "drop_grow"

    def __init__(self, fraction, grow):
        super().__init__()
        self.fraction, self.grow = fraction, grow

    def amount(self, step):
        return self.fraction

    def grow_scores(self, targets, gradients, step):
        return {t.key: ops.convert_to_tensor(self.grow[t.key]) for t in targets}


def test_update_on_a_model_zeroes_grown_weights_and_keeps_count():
    model = tiny_model()
    ts = updater_lib.targets(model)
    assert [t.key for t in ts] == ["d1/kernel", "d2/kernel"]
    rng = np.random.RandomState(0)
    init = {t.key: rng.rand(*t.weight.shape) > 0.5 for t in ts}
    updater_lib.assign_masks(model, init)
    before_w = {t.key: np_(t.weight).copy() for t in ts}
    grow = {t.key: rng.rand(*t.weight.shape).astype("float32") for t in ts}
    u = _Fixed(0.5, grow)
    assert u.update(model, step=0)
    for t in ts:
        new = np_(t.mask)
        assert new.sum() == init[t.key].sum()
        k = int(np.floor(0.5 * init[t.key].sum() + 0.5))
        want, newly = ref_drop_grow(init[t.key], np.abs(before_w[t.key]), grow[t.key], k)
        np.testing.assert_array_equal(new, want)
        w = np_(t.weight)
        assert np.all(w[newly] == 0.0)  # grown weights start at 0
        np.testing.assert_array_equal(w[~newly], before_w[t.key][~newly])  # the rest untouched
    assert u.updates == 1


def test_errors_leave_the_model_unchanged():
    model = tiny_model()
    ts = updater_lib.targets(model)
    masks_before = [np_(t.mask).copy() for t in ts]
    good = {"d1/kernel": np.zeros((8, 6), bool)}
    with pytest.raises(ValueError, match="names no masked weight"):
        updater_lib.assign_masks(model, {**good, "nope/kernel": np.zeros(3, bool)})
    with pytest.raises(ValueError, match=r"has shape \(3, 3\); the weight \(6, 3\)"):
        updater_lib.assign_masks(model, {**good, "d2/kernel": np.zeros((3, 3), bool)})
    bad_scores = _Fixed(0.5, {"d1/kernel": np.full((8, 6), np.nan, "float32"),
                              "d2/kernel": np.ones((6, 3), "float32")})
    with pytest.raises(ValueError, match="must be finite"):
        bad_scores.update(model, 0)
    for t, m in zip(ts, masks_before):
        np.testing.assert_array_equal(np_(t.mask), m)


def test_updater_refuses_another_model_and_foreign_state():
    a, b = tiny_model("a"), tiny_model("b")
    inputs = keras.Input((8,))
    c = mask_model(keras.Model(inputs, keras.layers.Dense(4, name="other")(inputs), name="c"))
    grow = {"d1/kernel": np.ones((8, 6), "float32"), "d2/kernel": np.ones((6, 3), "float32")}
    u = _Fixed(0.3, grow)
    u.update(a, 0)
    u.update(b, 1)  # same architecture, same keys: accepted
    before = np_(updater_lib.targets(c)[0].mask).copy()
    with pytest.raises(ValueError, match="use one updater per model"):
        u.update(c, 2)
    np.testing.assert_array_equal(np_(updater_lib.targets(c)[0].mask), before)
    state = u.get_state()
    fresh = _Fixed(0.3, grow)
    with pytest.raises(ValueError, match="state is from a model with masked weights"):
        fresh.set_state(state, c)
    fresh.set_state(state, a)
    assert fresh.updates == 2


def test_model_without_masked_layer():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="has no MaskedLayer"):
        updater_lib.targets(plain)
    with pytest.raises(ValueError, match="`scope` must be one of"):
        _Fixed.__mro__[1](scope="row")


def test_prune_once_is_a_global_one_shot_prune():
    model = tiny_model()
    weights = {t.key: np_(t.weight) for t in updater_lib.targets(model)}
    u = updater_lib.PruneOnce(0.75, at_step=3)
    assert not u.update(model, 2)
    assert u.update(model, 3)
    flat_w = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    flat_m = np.concatenate([np_(t.mask).ravel() for t in updater_lib.targets(model)])
    assert flat_m.sum() == int(np.floor(0.25 * flat_w.size + 0.5))
    assert flat_w[flat_m].min() >= flat_w[~flat_m].max()
    with pytest.raises(ValueError, match=r"`sparsity` must be < 1. Received: sparsity=1"):
        updater_lib.PruneOnce(1.0)


@pytest.mark.parametrize("make_optimizer", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adam(1e-2),
], ids=["sgd_momentum", "adam"])
def test_drop_grow_zeroes_the_optimizer_slots_of_grown_and_dropped_weights(make_optimizer):
    from tf_dessilbi import _compat

    model = tiny_model()
    ts = updater_lib.targets(model)
    rng = np.random.RandomState(1)
    init = {t.key: rng.rand(*t.weight.shape) > 0.5 for t in ts}
    updater_lib.assign_masks(model, init)
    model.compile(optimizer=make_optimizer(), loss="mse")
    x, y = rng.randn(32, 8).astype("float32"), rng.randn(32, 3).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    slots = {t.key: _compat.slot_variables(model.optimizer, t.weight) for t in ts}
    assert all(len(s) == (1 if isinstance(model.optimizer, keras.optimizers.SGD) else 2)
               for s in slots.values())
    before = {k: [np_(s).copy() for s in v] for k, v in slots.items()}
    for k, values in before.items():  # fit moved them, also outside the mask (Adam) or inside
        assert any(np.any(v[init[k]] != 0) for v in values)
    before_w = {t.key: np_(t.weight).copy() for t in ts}
    grow = {t.key: rng.rand(*t.weight.shape).astype("float32") for t in ts}
    assert _Fixed(0.5, grow).update(model, step=1)
    for t in ts:
        k = int(np.floor(0.5 * init[t.key].sum() + 0.5))
        new, newly = ref_drop_grow(init[t.key], np.abs(before_w[t.key]), grow[t.key], k)
        assert newly.any()
        clear = ~new | newly
        for old, slot in zip(before[t.key], slots[t.key]):
            now = np_(slot)
            assert np.all(now[clear] == 0.0)  # a grown weight starts with no momentum
            np.testing.assert_array_equal(now[~clear], old[~clear])  # the kept ones keep theirs


def test_prune_leaves_the_optimizer_slots_alone_and_reset_needs_no_optimizer():
    from tf_dessilbi import _compat

    model = tiny_model()
    ts = updater_lib.targets(model)
    keys = {t.key: np.ones(t.weight.shape, bool) for t in ts}
    assert updater_lib.reset_slots(model, keys, {}) == 0  # not compiled: nothing to reset
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    rng = np.random.RandomState(2)
    model.fit(rng.randn(16, 8).astype("float32"), rng.randn(16, 3).astype("float32"),
              batch_size=8, verbose=0)
    slots = {t.key: _compat.slot_variables(model.optimizer, t.weight)[0] for t in ts}
    before = {k: np_(s).copy() for k, s in slots.items()}
    assert updater_lib.PruneOnce(0.5, at_step=3).update(model, step=3)
    assert sum(int(np_(t.mask).sum()) for t in ts) < sum(m.size for m in keys.values())
    for k, s in slots.items():
        np.testing.assert_array_equal(np_(s), before[k])

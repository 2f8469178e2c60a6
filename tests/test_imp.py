"""IMP with rewinding: exact prune counts, rewinding, stopping rules, the sanity controls, bad input."""

import types

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.procedures import imp
from tf_dessilbi.training import components


def _numpy_prune(weights, kept, p, scope):
    """Reference: remove round(p · remaining) smallest |w| among the kept ones."""
    out = {}
    if scope == "layer":
        for k in kept:
            r = int(kept[k].sum())
            remove = int(np.floor(p * r + 0.5))
            order = np.argsort(np.where(kept[k], np.abs(weights[k]), np.inf).ravel(), kind="stable")
            m = kept[k].ravel().copy()
            m[order[:remove]] = False
            out[k] = m.reshape(kept[k].shape)
        return out
    keys = list(kept)
    flat_w = np.concatenate([np.where(kept[k], np.abs(weights[k]), np.inf).ravel() for k in keys])
    flat_m = np.concatenate([kept[k].ravel() for k in keys])
    remove = int(np.floor(p * flat_m.sum() + 0.5))
    flat_m[np.argsort(flat_w, kind="stable")[:remove]] = False
    start = 0
    for k in keys:
        out[k] = flat_m[start:start + kept[k].size].reshape(kept[k].shape)
        start += kept[k].size
    return out


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_prune_remaining_matches_numpy(scope, p):
    rng = np.random.default_rng(0)
    weights = {"a/kernel": rng.normal(size=(6, 5)), "b/kernel": 3 * rng.normal(size=(5, 4))}
    kept = {k: rng.random(w.shape) < 0.7 for k, w in weights.items()}
    got = imp.prune_remaining(weights, kept, p, scope)
    ref = _numpy_prune(weights, kept, p, scope)
    remaining = sum(int(m.sum()) for m in kept.values())
    for k in weights:
        np.testing.assert_array_equal(got[k], ref[k])
        assert not np.any(got[k] & ~kept[k])  # only kept weights can stay kept
    if scope == "global":
        assert sum(int(m.sum()) for m in got.values()) == remaining - int(np.floor(p * remaining + 0.5))
    else:
        for k in kept:
            r = int(kept[k].sum())
            assert got[k].sum() == r - int(np.floor(p * r + 0.5))


def test_prune_remaining_respects_the_floor():
    weights = {"a/kernel": np.arange(1.0, 11.0)}
    kept = {"a/kernel": np.ones(10, bool)}
    got = imp.prune_remaining(weights, kept, 0.5, "global", minimum_kept=7)
    np.testing.assert_array_equal(got["a/kernel"], np.arange(10) >= 3)


def _data(n=64, d=4, c=3, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    return ds.repeat(), ds


def _build(tiny=False):
    def build():
        inputs = keras.Input((4,))
        x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
        if tiny:
            x = keras.layers.Dense(1, name="tiny",
                                   kernel_initializer=keras.initializers.Constant(1e-4))(x)
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    return build


class _Starts(keras.callbacks.Callback):
    """Records the state and the masks each training run starts from and reaches at epoch 1."""

    def __init__(self):
        super().__init__()
        self.starts, self.masks, self.epoch1 = [], [], []

    def on_train_begin(self, logs=None):
        self.starts.append([np.array(v) for v in imp.Recipe.state(self.model)])
        self.masks.append(masks_lib.FixedMasks().mask(self.model))

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.epoch1.append([np.array(v) for v in imp.Recipe.state(self.model)])


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_rounds_rewind_and_sanity_controls(rewind_epoch):
    train, evals = _data()
    starts = _Starts()
    result = imp.iterative_magnitude_pruning(
        _build(), lambda: keras.optimizers.SGD(0.1), train, evals,
        epochs_per_round=2, steps_per_epoch=2, rounds=2, prune_fraction=0.2,
        rewind_epoch=rewind_epoch, callbacks=[starts], seed=3,
    )
    total = 4 * 8 + 8 * 3
    kept1 = total - int(np.floor(0.2 * total + 0.5))
    kept2 = kept1 - int(np.floor(0.2 * kept1 + 0.5))
    assert [r.weights_kept for r in result.rounds] == [total, kept1, kept2]
    assert result.mask.weights_kept == kept2
    # Masks are nested; 5 training runs: dense, 2 rounds, reinit control, random-mask control.
    assert len(starts.starts) == 5
    m1, m2 = starts.masks[1], starts.masks[2]
    for k in m2.weights:
        assert not np.any(m2.weights[k] & ~m1.weights[k])
    rewind = starts.starts[0] if rewind_epoch == 0 else starts.epoch1[0]
    assert _same(result.rewind_weights, rewind)
    for run in (1, 2, 4):  # rounds and the random-mask control restart from θ_k exactly
        assert _same(starts.starts[run], rewind)
    assert not _same(starts.starts[3], starts.starts[0])  # a fresh initialization
    # Controls: the reinit keeps the ticket's mask, the random mask its layer-wise counts.
    for k, m in result.mask.weights.items():
        np.testing.assert_array_equal(starts.masks[3].weights[k], m)
        assert starts.masks[4].weights[k].sum() == m.sum()
    assert any(not np.array_equal(starts.masks[4].weights[k], m) for k, m in result.mask.weights.items())
    s = result.sanity
    assert s.layer_density == s.random_layer_density
    assert s.verdict.startswith("winning ticket: yes" if s.winning else "winning ticket: no")
    d = result.to_dict()
    assert d["verdict"] == s.verdict and d["sanity"]["winning"] == s.winning
    assert d["rounds"][2]["weights_kept"] == kept2
    import json
    json.dumps(d)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_target_sparsity_is_reached_exactly(scope):
    train, evals = _data()
    result = imp.iterative_magnitude_pruning(
        _build(), lambda: keras.optimizers.SGD(0.05), train, evals,
        epochs_per_round=1, steps_per_epoch=1, target_sparsity=0.6, prune_fraction=0.3,
        scope=scope, sanity_checks=False,
    )
    assert result.sanity is None
    sizes = {"hidden/kernel": 32, "logits/kernel": 24}
    if scope == "global":
        assert result.mask.weights_kept == int(np.floor(0.4 * 56 + 0.5))
    else:
        for k, n in sizes.items():
            assert result.mask.weights[k].sum() == int(np.floor(0.4 * n + 0.5))
    # 56 → 39 → 27 → 22 (floor) for the global scope: three prunings.
    if scope == "global":
        assert [r.weights_kept for r in result.rounds] == [56, 39, 27, 22]


def test_milestones_stop_a_round_exactly_and_get_their_own_controls():
    train, evals = _data()
    starts = _Starts()
    result = imp.iterative_magnitude_pruning(
        _build(), lambda: keras.optimizers.SGD(0.05), train, evals,
        epochs_per_round=1, steps_per_epoch=1, target_sparsity=0.6, prune_fraction=0.3,
        milestones=(0.45,), sanity_at=[0.45], callbacks=[starts], seed=1,
    )
    # 56 → 39 (p = 0.3) → 31 (the 0.45 milestone: round(0.55 · 56)) → 22 (the target).
    assert [r.weights_kept for r in result.rounds] == [56, 39, 31, 22]
    assert result.milestones == {0.45: 2}
    assert result.milestone_eval(0.45) == result.rounds[2].eval
    # dense, 3 rounds, 2 controls at the milestone, 2 at the end.
    assert len(starts.starts) == 8
    milestone_mask = starts.masks[2]
    for control in (4, 5):
        assert starts.masks[control].weights_kept == 31
    for k, m in milestone_mask.weights.items():
        np.testing.assert_array_equal(starts.masks[4].weights[k], m)  # same mask, re-initialized
    ms = result.milestone_sanity[0.45]
    assert ms.ticket_accuracy == result.rounds[2].eval["accuracy"]
    d = result.to_dict()
    assert d["milestones"] == {"0.45": 2} and d["milestone_sanity"]["0.45"]["winning"] == ms.winning
    with pytest.raises(ValueError, match="not a reached milestone"):
        result.milestone_eval(0.5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"target_sparsity": 0.6, "milestones": (0.7,)}, ValueError, r"below target_sparsity=0.6"),
        ({"target_sparsity": 0.6, "milestones": (0.0,)}, ValueError, r"`milestones` must be > 0"),
        ({"rounds": 2, "milestones": (0.3,)}, ValueError, r"`milestones` needs `target_sparsity`"),
        ({"target_sparsity": 0.6, "milestones": (0.3,), "sanity_at": (0.4,)}, ValueError,
         r"`sanity_at` must be a subset of milestones=\[0.3\]"),
        ({"target_sparsity": 0.6, "milestones": 0.3}, TypeError, r"`milestones` must be a sequence"),
    ],
)
def test_bad_milestones_fail_before_training(kwargs, error, match):
    train, evals = _data()
    starts = _Starts()
    with pytest.raises(error, match=match):
        imp.iterative_magnitude_pruning(
            _build(), lambda: keras.optimizers.SGD(0.1), train, evals,
            epochs_per_round=1, steps_per_epoch=1, callbacks=[starts], **kwargs,
        )
    assert not starts.starts


def test_a_layer_that_would_become_empty_is_reported_not_trained():
    train, evals = _data()
    starts = _Starts()
    result = imp.iterative_magnitude_pruning(
        _build(tiny=True), lambda: keras.optimizers.SGD(1e-9), train, evals,
        epochs_per_round=1, steps_per_epoch=1, rounds=3, prune_fraction=0.5,
        callbacks=[starts],
    )
    assert result.empty_layers == ["tiny"]
    assert len(result.rounds) == 1 and len(starts.starts) == 1  # only the dense run trained
    assert result.sanity is None
    assert all(m.all() for m in result.mask.weights.values())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"rounds": 0}, ValueError, r"`rounds` must be >= 1. Received: rounds=0"),
        ({"rounds": 1, "prune_fraction": 0.0}, ValueError, r"`prune_fraction` must be > 0"),
        ({"rounds": 1, "prune_fraction": 1.0}, ValueError, r"`prune_fraction` must be < 1"),
        ({"target_sparsity": 1.0}, ValueError, r"`target_sparsity` must be < 1"),
        ({"target_sparsity": -0.5}, ValueError, r"`target_sparsity` must be > 0"),
        ({"rounds": 1, "target_sparsity": 0.5}, ValueError, r"exactly one of `rounds` and `target_sparsity`"),
        ({}, ValueError, r"exactly one of"),
        ({"rounds": 1, "rewind_epoch": 1}, ValueError, r"`rewind_epoch` must be < epochs_per_round=1"),
        ({"rounds": 1, "scope": "row"}, ValueError, r"`scope` must be one of"),
        ({"rounds": 1.5}, TypeError, r"`rounds` must be an integer"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs, error, match):
    train, evals = _data()
    starts = _Starts()
    with pytest.raises(error, match=match):
        imp.iterative_magnitude_pruning(
            _build(), lambda: keras.optimizers.SGD(0.1), train, evals,
            epochs_per_round=1, steps_per_epoch=1, callbacks=[starts], **kwargs,
        )
    assert starts.starts == []


def test_empty_dataset_and_unsparsifiable_model_fail_before_training():
    train, evals = _data()
    empty = evals.take(0)
    starts = _Starts()
    common = dict(epochs_per_round=1, steps_per_epoch=1, rounds=1, callbacks=[starts])
    with pytest.raises(ValueError, match="`train_data` is an empty dataset"):
        imp.iterative_magnitude_pruning(_build(), lambda: keras.optimizers.SGD(0.1),
                                        empty, evals, **common)
    with pytest.raises(ValueError, match="`eval_data` is an empty dataset"):
        imp.iterative_magnitude_pruning(_build(), lambda: keras.optimizers.SGD(0.1),
                                        train, empty, **common)

    def no_weights():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Activation("relu")(inputs))

    with pytest.raises(ValueError, match="no layer to mask"):
        imp.iterative_magnitude_pruning(no_weights, lambda: keras.optimizers.SGD(0.1),
                                        train, evals, **common)
    assert starts.starts == []


@pytest.mark.parametrize("sparse,density,milestones", [
    (dict(rounds=1, target_sparsity=0.0), 0.5, {}),
    (dict(rounds=0, target_sparsity=0.6, milestones=(0.3,)), 0.4, {"0.3": 1}),
])
def test_run_hook_writes_the_summary(tmp_path, sparse, density, milestones):
    from tf_dessilbi.training import config_lib

    config = config_lib.base_config()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.num_epochs = 1
    config.steps_per_epoch = 1
    config.eval_steps = 1
    config.verbose = 0
    config.model.name = "lenet5"
    config.sparse = ml_collections.ConfigDict(dict(
        prune_fraction=0.5, scope="layer", rewind_epoch=0, sanity_checks=False, tolerance=0.005,
        **sparse,
    ))
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    data = types.SimpleNamespace(train=ds.repeat(), eval=ds, num_train=32,
                                 input_shape=(28, 28, 1), num_classes=10)
    summary = imp.run(config, str(tmp_path), data, tf.distribute.get_strategy(),
                     build_optimizer=components.build_optimizer)
    assert set(summary["eval"]) == {"loss", "accuracy"}
    assert summary["sparsity"]["weight_fraction"] == pytest.approx(density, abs=0.01)
    assert summary["milestones"] == milestones
    assert (tmp_path / "imp.json").exists() and (tmp_path / "mask.npz").exists()

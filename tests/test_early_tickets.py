"""Early tickets: support snapshots as Masks, retraining through MaskedLayer."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.procedures import early_tickets


def _build():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))


def _data():
    x = np.random.default_rng(0).random((16, 4)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 3)).batch(4).repeat()
    return ds, ds.take(4)


MASK = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], bool)


@pytest.mark.parametrize("rewind", ["init", "epoch"])
def test_retrained_ticket_starts_from_the_given_weights_and_stays_masked(rewind):
    model = _build()
    start = [ops.convert_to_numpy(w) + (1.0 if rewind == "epoch" else 0.0) for w in model.weights]
    train_ds, eval_ds = _data()
    result = early_tickets.retrain_ticket(
        _build, start, masks_lib.Mask({"d/kernel": MASK}), train_ds, eval_ds, epochs=2, steps_per_epoch=4,
        make_optimizer=lambda: keras.optimizers.SGD(0.5), keep_model=True,
    )
    wrapper = result["model"].layers[-1]
    effective = wrapper.stripped_kernel()
    assert np.all(effective[~MASK] == 0.0)
    raw = ops.convert_to_numpy(wrapper.layer.kernel)
    np.testing.assert_array_equal(raw[~MASK], start[0][~MASK])  # untouched outside the mask
    assert np.any(raw[MASK] != start[0][MASK])  # it trained
    assert (result["weights_kept"], result["weights_total"], result["empty_layers"]) == (int(MASK.sum()), 12, [])


def test_an_empty_layer_is_reported_not_retrained():
    calls = []
    train_ds, eval_ds = _data()
    result = early_tickets.retrain_ticket(
        lambda: calls.append(1) or _build(), [ops.convert_to_numpy(w) for w in _build().weights],
        masks_lib.Mask({"d/kernel": np.zeros((4, 3), bool)}), train_ds, eval_ds, epochs=1, steps_per_epoch=2,
        make_optimizer=lambda: (_ for _ in ()).throw(AssertionError("must not train")),
    )
    assert result["empty_layers"] == ["d"] and result["accuracy"] is None and result["loss"] is None


def test_masks_that_do_not_fit_the_model_fail_before_training():
    train_ds, eval_ds = _data()
    with pytest.raises(ValueError, match=r"Mask for 'd/kernel' has shape \(2, 3\); the weight \(4, 3\)"):
        early_tickets.retrain_ticket(
            _build, [ops.convert_to_numpy(w) for w in _build().weights], masks_lib.Mask({"d/kernel": np.ones((2, 3), bool)}),
            train_ds, eval_ds, epochs=1, steps_per_epoch=2, make_optimizer=lambda: keras.optimizers.SGD(0.1),
        )


def test_support_snapshots_save_masks_by_layer_name(tmp_path):
    import tf_dessilbi

    model = _build()
    opt = tf_dessilbi.DessiLBI(learning_rate=0.5, mu=1.0, lambda_=0.01)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train_ds, _ = _data()
    model.fit(train_ds, epochs=2, steps_per_epoch=4, verbose=0,
              callbacks=[early_tickets.SupportSnapshots(str(tmp_path), [1, 2])])
    saved = early_tickets.load_support(str(tmp_path), 2)
    np.testing.assert_array_equal(saved.weights["d/kernel"], ops.convert_to_numpy(opt.support(model.get_layer("d").kernel)))
    assert early_tickets.load_support(str(tmp_path), 1).weights["d/kernel"].shape == (4, 3)


class _Runs(keras.callbacks.Callback):
    """Records the kernel, the mask and the start state of every training run."""

    def __init__(self):
        super().__init__()
        self.kernels, self.masks = [], []

    def on_train_begin(self, logs=None):
        wrapper = self.model.layers[-1]
        self.kernels.append(ops.convert_to_numpy(wrapper.layer.kernel).copy())
        self.masks.append(masks_lib.FixedMasks().mask(self.model).weights["d/kernel"].copy())


def test_ticket_with_controls_trains_the_ticket_and_both_controls_under_one_recipe():
    keras.utils.set_random_seed(0)
    model = _build()
    start = [ops.convert_to_numpy(w) + 0.25 for w in model.weights]
    train_ds, eval_ds = _data()
    runs = _Runs()
    result = early_tickets.ticket_with_controls(
        _build, start, masks_lib.Mask({"d/kernel": MASK}), train_ds, eval_ds, epochs=1,
        steps_per_epoch=2, make_optimizer=lambda: keras.optimizers.SGD(0.1), dense_accuracy=0.5,
        seed=3, callbacks=[runs],
    )
    assert len(runs.kernels) == 3  # ticket, re-initialized control, random-mask control
    np.testing.assert_array_equal(runs.kernels[0], start[0])  # the ticket starts from θ_k
    np.testing.assert_array_equal(runs.masks[0], MASK)
    assert not np.allclose(runs.kernels[1], start[0])  # a fresh draw
    np.testing.assert_array_equal(runs.masks[1], MASK)
    np.testing.assert_array_equal(runs.kernels[2], start[0])  # random mask from θ_k
    assert runs.masks[2].sum() == MASK.sum() and not np.array_equal(runs.masks[2], MASK)
    s = result["sanity"]
    assert s["ticket_accuracy"] == result["ticket"]["accuracy"] and s["dense_accuracy"] == 0.5
    winning = (s["ticket_accuracy"] >= 0.5 - 0.005 and s["ticket_accuracy"] > s["reinit_accuracy"]
               and s["ticket_accuracy"] > s["random_mask_accuracy"])
    assert result["winning"] is winning and result["verdict"].startswith(
        "winning ticket: yes" if winning else "winning ticket: no")


def test_ticket_with_controls_reports_an_empty_layer_without_training():
    train_ds, eval_ds = _data()
    result = early_tickets.ticket_with_controls(
        _build, [ops.convert_to_numpy(w) for w in _build().weights],
        masks_lib.Mask({"d/kernel": np.zeros((4, 3), bool)}), train_ds, eval_ds, epochs=1,
        steps_per_epoch=2, make_optimizer=lambda: (_ for _ in ()).throw(AssertionError("trained")),
        dense_accuracy=0.9,
    )
    assert result["ticket"] is None and result["sanity"] is None and not result["winning"]
    assert result["verdict"] == "not retrained: layer(s) d keep no weight"


def test_an_empty_support_is_called_empty_and_a_partly_empty_one_names_its_layers():
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                                 keras.layers.Dense(2, name="b")])

    start = [ops.convert_to_numpy(w) for w in build().weights]
    data = _data()

    def check(mask_a):
        return early_tickets.ticket_with_controls(
            build, start, masks_lib.Mask({"a/kernel": mask_a, "b/kernel": np.zeros((3, 2), bool)}),
            *data, epochs=1, steps_per_epoch=2,
            make_optimizer=lambda: (_ for _ in ()).throw(AssertionError("trained")),
            dense_accuracy=0.9)["verdict"]

    assert check(np.zeros((4, 3), bool)) == (
        "not retrained: the support is empty (all 2 masked layers keep no weight)")
    assert check(np.eye(4, 3, dtype=bool)) == "not retrained: layer(s) b keep no weight"


def test_ticket_with_controls_refuses_a_builder_that_seeds_itself():
    """Such a builder would make the 're-initialization' control the ticket itself."""
    def seeded_build():
        keras.utils.set_random_seed(7)
        return _build()

    train_ds, eval_ds = _data()
    start = [ops.convert_to_numpy(w) for w in seeded_build().weights]
    with pytest.raises(ValueError, match="sets the random seed itself"):
        early_tickets.ticket_with_controls(
            seeded_build, start, masks_lib.Mask({"d/kernel": MASK}), train_ds, eval_ds, epochs=1,
            steps_per_epoch=2, make_optimizer=lambda: (_ for _ in ()).throw(AssertionError("trained")),
            dense_accuracy=0.5, seed=3)

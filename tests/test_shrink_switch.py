"""`procedures.shrink_switch`: the fine-tune on the small model is the masked fine-tune.

Exactness: a run that switches to the shrunk model at the fork and the
masked full-width fine-tune (`WStarFinetune`, same data order) end with the
same weights at the kept entries, to float32 tolerance, on a plain CNN, a BN
residual net and a Concatenate graph, also under MirroredStrategy.
"""

import keras
import numpy as np
import pytest

from tf_dessilbi import DessiLBI
from tf_dessilbi.dessilbi import finetune as finetune_lib
from tf_dessilbi.procedures import shrink_switch
from tf_dessilbi.shrink import carry
from tf_dessilbi.dessilbi.fork import Fork

_STRUCTURE = {r"conv\w*/kernel": "filter", "hidden/kernel": "neuron", "head/kernel": "elementwise"}


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32") + 2 * (x[..., 1].mean(axis=(1, 2)) > 0)
    return x, y.astype("int32")


def _cnn():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, name="conv2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _resnet():
    """A stem and one BN basic block with an identity shortcut (ResNet-20's pattern)."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = keras.layers.BatchNormalization(name="bn_stem")(x)
    stem = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_a")(stem)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, stem]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _concat():
    inputs = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_l")(inputs)
    b = keras.layers.Conv2D(5, 1, activation="relu", name="conv_r")(inputs)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_m")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _widths(widths):
    return {"layer_units": widths}


GRAPHS = {
    "cnn": (_cnn, _widths({"conv1/": 3, "conv2/": 2, "hidden/": 4})),
    # conv_b is summed with the stem: a filter it drops stays where the stem keeps it
    "resnet": (_resnet, _widths({"conv_stem/": 4, "conv_a/": 3, "conv_b/": 5, "hidden/": 4})),
    # whole dependency groups: residual channels leave the stem and conv_b together
    "resnet_groups": (_resnet, {"fork": {"units": 0.5, "trim": True, "dependency_groups": True,
                                         "check_every": 1000}}),
    "concat": (_concat, _widths({"conv_l/": 2, "conv_r/": 3, "conv_m/": 4, "hidden/": 5})),
}


def _compiled(make, strategy=None, nesterov=False):
    keras.utils.set_random_seed(1)

    def build():
        model = make()
        model.compile(optimizer=DessiLBI(0.1, kappa=1.0, mu=5.0, lambda_=0.05, momentum=0.9,
                                         nesterov=nesterov, structure=_STRUCTURE),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    if strategy is None:
        return build()
    with strategy.scope():
        return build()


def _finetune(kwargs):
    """The fork at epoch 2; ``layer_units`` (deprecated, its warning silenced here) sets the widths."""
    import warnings

    fork = Fork(epoch=2, **kwargs.get("fork", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return finetune_lib.WStarFinetune(fork, **{k: v for k, v in kwargs.items() if k != "fork"})


def _runs(name, strategy=None, epochs=4, nesterov=False):
    make, widths = GRAPHS[name]
    x, y = _data()
    fit = dict(batch_size=16, shuffle=False, verbose=0)
    masked = _compiled(make, strategy, nesterov)
    masked_history = masked.fit(x, y, epochs=epochs, callbacks=[_finetune(widths)], **fit)
    run = shrink_switch.fit_with_switch(_compiled(make, strategy, nesterov), x, y,
                                        finetune=_finetune(widths), epochs=epochs, **fit)
    return masked, masked_history.history, run


def _assert_same(masked, masked_history, run):
    assert run.switch is not None and run.switch.epoch == 2
    report = run.switch.report
    assert report.params_after < report.params_before
    want = carry.cut_like_weights(masked, report,
                                  {v.path: keras.ops.convert_to_numpy(v) for v in masked.weights})
    small = {v.path: keras.ops.convert_to_numpy(v) for v in run.model.weights}
    assert set(small) == set(want)
    for path, value in small.items():
        np.testing.assert_allclose(value, want[path], rtol=2e-4, atol=2e-5, err_msg=path)
    # what the small model lost is zero in the masked run, or never reaches the output
    for layer, (_, kept_out) in report.kept.items():
        assert report.row(layer).units_after == len(kept_out)
    # supp Γ of the small optimizer is the frozen support (export, reports, W* read it)
    optimizer = run.model.optimizer
    for variable in run.model.trainable_variables:
        support = optimizer.support(variable)
        if support is not None:
            mask = run.switch.masks.get(variable.path, np.ones(variable.shape, bool))
            np.testing.assert_array_equal(np.asarray(support), mask, err_msg=variable.path)
    np.testing.assert_allclose(run.history["loss"], masked_history["loss"], rtol=1e-4)
    assert len(run.history["accuracy"]) == 4
    assert int(run.model.optimizer.iterations.numpy()) == int(masked.optimizer.iterations.numpy())


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_small_model_follows_the_masked_finetune(name):
    masked, history, run = _runs(name)
    _assert_same(masked, history, run)
    if name == "resnet":  # a filter conv_b dropped lives on, projected to zero with its BN
        assert {"conv_b/kernel", "bn_b/gamma", "bn_b/beta"} <= set(run.switch.masks)
    if name == "resnet_groups":  # residual channels physically gone
        assert run.switch.report.row("conv_b").units_after < 6
        assert run.switch.report.row("conv_stem").units_after < 6
    assert "head/kernel" in run.switch.masks  # the elementwise support of a kept layer


def test_small_model_follows_with_nesterov():
    masked, history, run = _runs("cnn", nesterov=True)
    _assert_same(masked, history, run)


def test_under_mirrored_strategy():
    import tensorflow as tf

    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPUs of conftest.py")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    masked, history, run = _runs("cnn", strategy=strategy)
    _assert_same(masked, history, run)
    # the small model and its optimizer are distributed as the big ones were
    assert run.model.distribute_strategy is strategy
    for variable in (run.model.weights[0], run.model.optimizer.iterations):
        assert "Mirrored" in type(variable.value).__name__, type(variable.value)


def test_switch_off_runs_the_masked_finetune():
    make, widths = GRAPHS["cnn"]
    x, y = _data()
    model = _compiled(make)
    run = shrink_switch.fit_with_switch(model, x, y, finetune=_finetune(widths), epochs=3,
                                        switch=False, batch_size=16, shuffle=False, verbose=0)
    assert run.switch is None and run.model is model


def test_refusals_leave_the_model_as_it_was():
    make, widths = GRAPHS["cnn"]
    x, y = _data()
    with pytest.raises(TypeError, match="`finetune` must be a WStarFinetune"):
        shrink_switch.fit_with_switch(_compiled(make), x, y, finetune=None)
    with pytest.raises(ValueError, match="decouple=False"):
        shrink_switch.fit_with_switch(
            _compiled(make), x, y, epochs=2,
            finetune=finetune_lib.WStarFinetune(1, decouple=False))
    model = _compiled(make)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]
    with pytest.raises(ValueError, match="needs the support fixed"):
        shrink_switch.switch_to_small(model)
    with pytest.raises(ValueError, match="prune_bias=False"):
        shrink_switch.switch_to_small(model, prune_bias=False)
    sgd = make()
    sgd.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="needs a tf_dessilbi.DessiLBI optimizer"):
        shrink_switch.switch_to_small(sgd)
    after = [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)

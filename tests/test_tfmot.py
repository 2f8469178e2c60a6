"""Tests of the TF-MOT bridge, tf_dessilbi.tfmot (tf_keras)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dessilbi
from tests.export_models import _data, dessilbi_steps
from tf_dessilbi import tfmot as bridge
from tf_dessilbi.layers import SparseGate

from tf_dessilbi.tfmot._lazy import modules as _modules  # noqa: E402

tf_keras, tfmot = _modules()


def _model():
    inputs = keras.Input((8, 8, 1), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="net")


def _dessilbi_trained(steps=8):
    keras.utils.set_random_seed(1)
    model = _model()
    optimizer = dessilbi_steps(model, steps)
    masks = bridge.sparse_masks(model, optimizer)
    assert any(0 < m.mean() < 1 for m in masks.values())  # really sparse
    return model, optimizer


def _tfk_loss():
    return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


# -- Keras 3 → tf_keras -------------------------------------------------------------
def test_to_tf_keras_carries_w_star():
    model, optimizer = _dessilbi_trained()
    x, _ = _data(seed=1)
    tfk_model = bridge.to_tf_keras(model, optimizer)
    assert isinstance(tfk_model, tf_keras.Model)
    assert [l.name for l in tfk_model.layers] == [l.name for l in model.layers]
    with tf_dessilbi.apply_w_star(model, optimizer):
        expected = _numpy(model(x, training=False))
    np.testing.assert_allclose(tfk_model(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)


def _many_layers():
    inputs = keras.Input((6, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_regularizer="l2", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Concatenate(name="cat")([x, y])
    x = keras.layers.AveragePooling2D(2, name="avg")(x)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    g = keras.layers.LayerNormalization(name="ln")(g)
    s = keras.layers.Reshape((9, 8), name="reshape")(keras.layers.Flatten(name="flat")(x))
    s = keras.layers.Conv1D(2, 2, name="conv1d")(s)
    s = keras.layers.Flatten(name="flat2")(s)
    head = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(5, activation="tanh", name="fc"), keras.layers.Activation("softmax", name="act")],
        name="head",
    )
    outputs = [head(g), keras.layers.Dense(2, name="aux")(s)]
    return keras.Model(inputs, outputs, name="many")


def test_to_tf_keras_standard_layers_and_nesting():
    keras.utils.set_random_seed(3)
    model = _many_layers()
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 4).astype("float32"))
    x = np.random.default_rng(4).normal(size=(3, 6, 6, 2)).astype("float32")
    tfk_model = bridge.to_tf_keras(model)
    expected = [_numpy(o) for o in model(x, training=False)]
    got = [o.numpy() for o in tfk_model(x, training=False)]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert isinstance(tfk_model.get_layer("head"), tf_keras.Sequential)
    assert tfk_model.get_layer("conv").kernel_regularizer is not None


class _Custom(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda x: keras.layers.LSTM(2, name="lstm")(keras.layers.Reshape((4, 1))(x)),
            r"cannot carry layer 'lstm' of type keras.src.layers.rnn.lstm.LSTM to tf_keras",
        ),
        (lambda x: _Custom(name="custom")(x), r"cannot carry layer 'custom' of type"),
        (lambda x: keras.ops.add(x, 1.0), r"cannot carry the operation '.*' \(Add\) of model 'bad'"),
        (
            lambda x: keras.layers.Dense(2, lora_rank=2, name="lora")(x),
            r"Layer 'lora' \(Dense\) sets lora_rank=2, which tf_keras' Dense does not have",
        ),
    ],
)
def test_to_tf_keras_rejects_what_it_cannot_carry(build, message):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, build(inputs), name="bad")
    with pytest.raises(ValueError, match=message):
        bridge.to_tf_keras(model)


# -- masks and to_pruned -----------------------------------------------------------
def test_round_trip_prune_finetune_strip():
    model, optimizer = _dessilbi_trained()
    x, y = _data(seed=2)
    masks = bridge.sparse_masks(model, optimizer)
    assert set(masks) == {"conv1", "conv2", "fc", "logits"}
    tfk_model = bridge.to_tf_keras(model, optimizer)
    before = [w.copy() for w in tfk_model.get_weights()]

    pruned = bridge.to_pruned(tfk_model, masks)
    for a, b in zip(before, tfk_model.get_weights()):
        np.testing.assert_array_equal(a, b)  # input model untouched
    kernels_before = {n: pruned.get_layer(f"prune_low_magnitude_{n}").layer.kernel.numpy() for n in masks}
    pruned.compile(tf_keras.optimizers.SGD(0.1), _tfk_loss())
    pruned.fit(x, y, epochs=2, batch_size=8, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)

    assert [l.name for l in stripped.layers] == [l.name for l in tfk_model.layers]
    trained = []
    for name, mask in masks.items():
        kernel = stripped.get_layer(name).kernel.numpy()
        assert np.all(kernel[~mask] == 0), name
        trained.append(not np.array_equal(kernel[mask], kernels_before[name][mask]))
    assert any(trained)  # fine-tuning did change the kept weights
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_gate_masks_round_trip():
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            SparseGate(keras.layers.Conv2D(4, 3, name="conv"), granularity="filter", gate_init=0.5),
            keras.layers.Flatten(name="flatten"),
            SparseGate(keras.layers.Dense(3, name="fc"), gate_init=0.5),
        ],
        name="gated",
    )
    rng = np.random.default_rng(6)
    for layer in model.layers:
        if isinstance(layer, SparseGate):
            layer.gate_scores.assign(rng.normal(size=layer.gate_scores.shape).astype("float32"))
            layer.ticket.assign(1.0)
    x, y = _data(seed=7)
    masks = bridge.sparse_masks(model)
    assert sorted(masks) == ["conv", "fc"]
    for layer in model.layers:
        if isinstance(layer, SparseGate):
            np.testing.assert_array_equal(masks[layer.layer.name], layer.kept_mask())
    tfk_model = bridge.to_tf_keras(model)
    np.testing.assert_allclose(tfk_model(x).numpy(), _numpy(model(x)), rtol=1e-5, atol=1e-6)
    pruned = bridge.to_pruned(tfk_model, masks)
    pruned.compile(tf_keras.optimizers.SGD(0.05), _tfk_loss())
    pruned.fit(x, y, epochs=1, batch_size=8, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    for name, mask in masks.items():
        assert np.all(stripped.get_layer(name).kernel.numpy()[~mask] == 0)


def test_prune_preserving_qat_builds_and_trains():
    model, optimizer = _dessilbi_trained()
    x, y = _data(seed=8)
    masks = bridge.sparse_masks(model, optimizer)
    pruned = bridge.to_pruned(bridge.to_tf_keras(model, optimizer), masks)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    qat = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    )
    qat.compile(tf_keras.optimizers.SGD(0.05), _tfk_loss())
    history = qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for name, mask in masks.items():
        layer = qat.get_layer(f"quant_{name}")
        (kernel,) = [w.numpy() for w in layer.weights if w.name == f"{name}/kernel:0"]
        assert np.all(kernel[~mask] == 0), name


def _small_tfk_model():
    inputs = tf_keras.Input((4,), name="x")
    h = tf_keras.layers.Dense(3, name="fc")(inputs)
    h = tf_keras.layers.Flatten(name="flatten")(h)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="out")(h))


@pytest.mark.parametrize(
    "masks, error, message",
    [
        ({"nope": np.ones((4, 3), bool)}, ValueError,
         r"`masks` names layers that model '.*' does not have \(at its top level\): \['nope'\]"),
        ({"fc": np.ones((3, 4), bool)}, ValueError,
         r"`masks\['fc'\]` has shape \(3, 4\), but the prunable weight '.*kernel.*' of layer 'fc' has shape \(4, 3\)"),
        ({"flatten": np.ones((1,), bool)}, ValueError,
         r"`masks\['flatten'\]`: layer 'flatten' \(Flatten\) cannot be pruned by TF-MOT"),
        ({"fc": np.full((4, 3), 0.5)}, ValueError, r"`masks\['fc'\]` must be boolean or 0/1"),
        ([("fc", np.ones((4, 3)))], TypeError, r"`masks` must be a mapping \{layer name: bool array\}. Received: masks of type list"),
    ],
)
def test_to_pruned_bad_masks(masks, error, message):
    model = _small_tfk_model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=message):
        bridge.to_pruned(model, {"out": np.ones((3, 2), bool), **masks} if isinstance(masks, dict) else masks)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_to_pruned_rejects_keras3_models():
    with pytest.raises(TypeError, match=r"`tf_keras_model` must be a tf_keras.Model \(see to_tf_keras\(\)"):
        bridge.to_pruned(_model(), {})


def test_fixed_mask_schedule_never_prunes():
    schedule = bridge.FixedMask()
    should_prune, sparsity = schedule(tf.constant(100, tf.int64))
    assert not bool(should_prune) and float(sparsity) == 0.0
    assert schedule.get_config() == {"class_name": "tf_dessilbi>FixedMask", "config": {}}


# -- tf_keras DessiLBI ---------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.0},
        {"nesterov": True, "lambda_scaling": "none"},
        {"structure": {"conv1/kernel": "filter", "fc/kernel": "neuron", "logits/kernel": "elementwise"}},
    ],
)
def test_tf_keras_dessilbi_matches_keras3_step_by_step(kwargs):
    keras.utils.set_random_seed(9)
    model = _model()
    tfk_model = bridge.to_tf_keras(model)
    hyper = dict(learning_rate=0.1, mu=0.5, lambda_=0.3, **kwargs)
    k3_opt = tf_dessilbi.DessiLBI(**hyper)
    tfk_opt = bridge.DessiLBI(jit_compile=False, **hyper)
    k3_vars = model.trainable_variables
    tfk_vars = tfk_model.trainable_variables
    assert [v.path for v in k3_vars] == [v.name.split(":")[0] for v in tfk_vars]
    rng = np.random.default_rng(10)
    for _ in range(4):
        grads = [rng.normal(scale=0.5, size=v.shape).astype("float32") for v in k3_vars]
        k3_opt.apply_gradients(zip(grads, k3_vars))
        tfk_opt.apply_gradients(zip([tf.constant(g) for g in grads], tfk_vars))
        for a, b in zip(k3_vars, tfk_vars):
            np.testing.assert_allclose(b.numpy(), _numpy(a), rtol=1e-6, atol=1e-7)
            assert tfk_opt.variable_structure(b) == k3_opt.variable_structure(a)
            if k3_opt.variable_structure(a) is not None:
                np.testing.assert_allclose(tfk_opt.gamma(b).numpy(), _numpy(k3_opt.gamma(a)), rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(tfk_opt.v(b).numpy(), _numpy(k3_opt.v(a)), rtol=1e-6, atol=1e-7)
                np.testing.assert_array_equal(tfk_opt.support(b).numpy(), _numpy(k3_opt.support(a)))
    assert any(0 < np.mean(_numpy(k3_opt.support(v))) < 1 for v, _ in k3_opt.coupled_variables())


def test_tf_keras_dessilbi_in_compile_and_config():
    keras.utils.set_random_seed(11)
    tfk_model = bridge.to_tf_keras(_model())
    optimizer = bridge.DessiLBI(learning_rate=0.05, mu=3.0, lambda_=0.2)
    tfk_model.compile(optimizer, _tfk_loss())
    x, y = _data()
    history = tfk_model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    kernel = tfk_model.get_layer("fc").kernel
    assert optimizer.variable_structure(kernel) == "elementwise"
    assert optimizer.support(kernel).shape == kernel.shape
    optimizer.kappa = 2.0
    config = optimizer.get_config()
    assert config["kappa"] == 2.0 and config["mu"] == 3.0 and config["lambda_"] == pytest.approx(0.2)
    clone = bridge.DessiLBI.from_config(config)
    assert float(clone.kappa.numpy()) == 2.0 and clone.nesterov is False
    restored = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(optimizer))
    assert type(restored) is bridge.DessiLBI


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"kappa": -1.0}, ValueError, r"`kappa` must be > 0. Received: kappa=-1.0"),
        ({"momentum": 1.0}, ValueError, r"`momentum` must be in \[0, 1\). Received: momentum=1.0"),
        ({"lambda_scaling": "fan_out"}, ValueError, r"`lambda_scaling` must be one of \('fan_in', 'none', 'init_norm', 'unit_init_norm'\). Received: lambda_scaling='fan_out'"),
        ({"structure": {"nope/kernel": "filter"}}, ValueError, r"`structure` patterns \['nope/kernel'\] match no trainable variable"),
    ],
)
def test_tf_keras_dessilbi_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        optimizer = bridge.DessiLBI(**kwargs)
        optimizer.build(_small_tfk_model().trainable_variables)


# -- process-level side effects ----------------------------------------------------------
@pytest.mark.slow
def test_bridge_is_lazy_and_keras3_still_trains_and_exports(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, os, sys
        import numpy as np
        import keras, tensorflow as tf
        import tf_dessilbi
        from tf_dessilbi import tfmot as bridge
        report = {{"lazy": not ({{"tf_keras", "tensorflow_model_optimization"}} & set(sys.modules))}}
        x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        y = np.arange(16) % 2
        def make():
            return keras.Sequential([keras.Input((4,), name="x"),
                                     keras.layers.Dense(8, activation="relu", name="fc"),
                                     keras.layers.Dense(2, name="out")])
        pruned = bridge.to_pruned(bridge.to_tf_keras(make()), {{"fc": np.ones((4, 8), bool)}})
        report["bridge_used"] = "tensorflow_model_optimization" in sys.modules
        report["env"] = os.environ.get("TF_USE_LEGACY_KERAS")
        report["tf_keras_alias"] = getattr(tf.keras, "version", lambda: "?")()
        model = make()
        model.compile(tf_dessilbi.DessiLBI(learning_rate=0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = model.get_layer("fc").kernel.numpy().copy()
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        report["trained"] = bool(np.any(model.get_layer("fc").kernel.numpy() != before))
        path = tf_dessilbi.export_saved_model(model, {str(tmp_path)!r}, optimizer=model.optimizer,
                                              allow_dead=True)  # 2 steps: supp Γ is empty
        out = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["out"]
        expected = tf_dessilbi.strip(model, model.optimizer)(x)
        report["export_matches"] = bool(np.allclose(out.numpy(), np.asarray(expected), atol=1e-6))
        print(json.dumps(report))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "lazy": True,
        "bridge_used": True,
        "env": None,
        "tf_keras_alias": keras.version(),
        "trained": True,
        "export_matches": True,
    }

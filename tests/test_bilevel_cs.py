"""Bilevel uses: per-layer CS penalties (BilevelTuner, train_cs_bilevel) and weight decay."""

import glob
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_dessilbi as tfd  # noqa: E402
from tf_dessilbi import bilevel  # noqa: E402
from tf_dessilbi.training import config_lib  # noqa: E402
from tf_dessilbi.training import input_pipeline  # noqa: E402
from tf_dessilbi.bilevel import cs  # noqa: E402
from tf_dessilbi.bilevel import tuner as tuner_lib  # noqa: E402
from tf_dessilbi.bilevel import weight_decay  # noqa: E402
from tf_dessilbi.bilevel.tuner import BilevelTuner  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), "..", "tf_dessilbi", "configs", "fmnist_cs_bilevel.py")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, name="logits"),
    ])
    return model


def _data(n=64, seed=0):
    x, y = input_pipeline.synthetic_arrays(n, (8, 8, 1), 3, seed)
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16, drop_remainder=True)


def _batch(ds):
    return next(iter(ds))


def test_layout_soft_density_and_hard_density():
    gated = tfd.gate_model(_model(), penalty=0.0)
    layout = cs.CSLayout(gated)
    assert layout.names == ["conv", "logits"]
    y = [tf.identity(v) for v in gated.trainable_variables]
    assert float(layout.soft_density(y, [1.0, 1.0])) == pytest.approx(0.5)
    scores = layout.gates[0].gate_scores
    pattern = np.where(np.arange(np.prod(scores.shape)) % 4 == 0, 1.0, -1.0)
    scores.assign(pattern.reshape(scores.shape).astype(np.float32))
    densities = layout.densities()
    assert densities["conv"] == pytest.approx(0.25)
    sizes = layout.kernel_sizes
    assert layout.density() == pytest.approx((0.25 * sizes[0] + 0.0 * sizes[1]) / sum(sizes))
    # d(s): the hard value, the soft gradient.
    y = [tf.identity(v) for v in gated.trainable_variables]
    j = layout.score_index[0]
    with tf.GradientTape() as tape:
        tape.watch(y[j])
        d = layout.density_estimate(y, [1.0, 1.0])
    assert float(d) == pytest.approx(layout.density(), rel=1e-5)
    grad = tape.gradient(d, y[j]).numpy()
    s = y[j].numpy()
    sig = 1 / (1 + np.exp(-s))
    np.testing.assert_allclose(grad, layout.per_gate[0] * sig * (1 - sig) / layout.total,
                               rtol=1e-5)


def test_density_term_pushes_every_strength_up():
    # With the density far above target and ρ huge, dΦ/dx_l < 0 for every layer:
    # a stronger penalty closes gates, which lowers the outer objective.
    gated = tfd.gate_model(_model(), penalty=0.0)
    ds = _data()
    problem, layout = cs.cs_problem(gated, lambda: _batch(ds), lambda: _batch(ds),
                                    target_density=0.05, base_penalty=1e-2,
                                    density_weight=1e6)
    for gate in layout.gates:  # open gates: hard density 1 ≫ 0.05
        gate.gate_scores.assign(tf.fill(gate.gate_scores.shape, 0.01))
    x = [tf.zeros(len(layout.names))]
    y = [tf.identity(v) for v in gated.trainable_variables]
    h = bilevel.hypergradient(problem, x, y, _batch(ds), _batch(ds), 3, 0.1)[0].numpy()
    assert np.all(h < 0), h


def test_cs_problem_rejects_bad_input():
    gated = tfd.gate_model(_model(), penalty=0.0)
    with pytest.raises(ValueError, match="`target_density`"):
        cs.cs_problem(gated, lambda: 0, lambda: 0, target_density=0.0)
    with pytest.raises(ValueError, match="`density_weight`"):
        cs.cs_problem(gated, lambda: 0, lambda: 0, 0.5, density_weight=-1.0)
    with pytest.raises(ValueError, match="no SparseGate"):
        cs.cs_problem(_model(), lambda: 0, lambda: 0, 0.5)
    with pytest.raises(ValueError, match="`method`"):
        BilevelTuner(gated, _data(), _data(), 0.5, method="adam")


@pytest.mark.parametrize("method", [
    "mrbo",
    pytest.param("stocbio", marks=pytest.mark.slow),
    pytest.param("vrbo", marks=pytest.mark.slow),
])
def test_tuner_runs_logs_and_reports(method, tmp_path):
    gated = tfd.gate_model(_model(), penalty=0.0)
    kwargs = {"stocbio": dict(inner_steps=2), "vrbo": dict(period=2, inner_steps=1),
              "mrbo": {}}[method]
    tuner = BilevelTuner(gated, _data(seed=0), _data(seed=1), target_density=0.2,
                         method=method, base_penalty=1e-2, density_weight=100.0,
                         outer_lr=10.0, inner_lr=0.1, final_beta=20.0, warm_steps=1,
                         log_dir=str(tmp_path), log_every=2, solver_kwargs=kwargs)
    result = tuner.run(4)
    assert set(result.allocation) == {"conv", "logits"}
    assert result.log_strengths != {"conv": 0.0, "logits": 0.0}  # x moved
    for name, x in result.log_strengths.items():
        assert result.allocation[name] == pytest.approx(1e-2 * np.exp(x))
    # d = kept / total over the gated kernels (weighted by size, not a mean of layer densities).
    masks = {layer.layer.name: layer.kept_mask() for layer in gated.layers if hasattr(layer, "kept_mask")}
    assert set(masks) == {"conv", "logits"}
    assert result.densities == pytest.approx({n: m.mean() for n, m in masks.items()})
    assert result.density == pytest.approx(sum(m.sum() for m in masks.values())
                                           / sum(m.size for m in masks.values()))
    assert float(gated.layers[0].beta.numpy()) == pytest.approx(20.0)
    assert result.oracle_calls["inner_grad"] >= 4  # warm steps are counted
    assert [h["step"] for h in result.history] == [0, 2, 3]
    events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags.update(v.tag for v in event.summary.value)
    assert {"bilevel/x/conv", "bilevel/x/logits", "bilevel/density"} <= tags


def test_weight_decay_problem():
    model = _model()
    ds = _data()
    problem, names = weight_decay.weight_decay_problem(
        model, lambda: _batch(ds), lambda: _batch(ds))
    assert names == ["conv", "logits"]
    x = tf.Variable([-3.0, -3.0])
    solver = bilevel.MRBO(problem, [x], list(model.trainable_variables),
                          outer_lr=10.0, inner_lr=0.1, neumann_terms=3)
    kernel = model.layers[0].kernel.numpy().copy()
    solver.run(3)
    assert not np.allclose(x.numpy(), [-3.0, -3.0])
    assert not np.allclose(model.layers[0].kernel.numpy(), kernel)
    assert solver.counter.calls["inner_grad"] == 7
    # The decay term alone: ∂g/∂W_l = 2 e^{x_l} W_l (+ the loss gradient).
    y = [tf.identity(v) for v in model.trainable_variables]
    batch = _batch(ds)
    with_decay = bilevel.inner_grad(problem, [tf.constant([0.0, -50.0])], y, batch)
    without = bilevel.inner_grad(problem, [tf.constant([-50.0, -50.0])], y, batch)
    np.testing.assert_allclose(with_decay[0] - without[0], 2 * y[0].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_train_cs_bilevel_end_to_end(tmp_path):
    config = config_lib.load_config(CONFIG)
    assert config.method == "cs_bilevel"
    config.data.name = "synthetic"
    config.data.synthetic_train = 128
    config.data.synthetic_eval = 64
    config.batch_size = 32
    config.bilevel.num_steps = 3
    config.bilevel.warm_steps = 1
    config.bilevel.log_every = 1
    data = input_pipeline.get_datasets(config.data, config.batch_size, seed=0)
    summary = tuner_lib.train_cs_bilevel(config, str(tmp_path), data, tf.distribute.get_strategy())
    assert summary["method"] == "cs_bilevel"
    assert set(summary["allocation"]) == {"conv1", "conv2", "conv3", "fc1", "logits"}
    sparsity = summary["sparsity"]
    assert set(sparsity["per_layer_density"]) == set(summary["allocation"])
    layer_densities = sparsity["per_layer_density"].values()  # the global one is their weighted mean
    assert min(layer_densities) <= sparsity["weights_kept_fraction"] <= max(layer_densities)
    with open(tmp_path / "summary.json") as f:
        saved = json.load(f)
    assert saved["allocation"] == summary["allocation"]
    assert saved["eval_ticket"]["accuracy"] == pytest.approx(summary["eval_ticket"]["accuracy"])
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


def test_other_backends_get_a_clear_error(monkeypatch):
    gated = tfd.gate_model(_model(), penalty=0.0)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="needs the TensorFlow backend.*'jax'"):
        cs.cs_problem(gated, lambda: 0, lambda: 0, 0.5)
    with pytest.raises(RuntimeError, match="weight_decay_problem"):
        weight_decay.weight_decay_problem(_model(), lambda: 0, lambda: 0)

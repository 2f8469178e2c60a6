"""Issue 37's audit, one test per finding: dead or non-finite models, settings asked for and
not done, errors that name what the user set, data lost by misuse. Each failed before its fix."""

import json
import os
import warnings

import keras
import numpy as np
import pytest

import tf_dessilbi as tfd
from tf_dessilbi.training import config_lib
from tf_dessilbi.training import main as main_lib
from tf_dessilbi.dessilbi.fork import Fork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, n)


def _trained(optimizer, epochs=1):
    model = _model()
    x, y = _data()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    return model


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


# -- a dead model handed back silently -----------------------------------------
@pytest.mark.parametrize("layer", ["fc", "logits"])
def test_shrink_refuses_a_mask_that_empties_a_layer(layer):
    model = _model()
    before = _weights(model)
    units = {"conv": np.ones(4, bool), "fc": np.ones(5, bool), "logits": np.ones(3, bool)}
    units[layer] = np.zeros_like(units[layer])
    with pytest.raises(ValueError, match=f"keeps no weight of layer\\(s\\) {layer}.*allow_dead=True"):
        tfd.shrink(model, units)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
    small = tfd.shrink(model, units, allow_dead=True)  # the explicit opt-in
    x, _ = _data(4)
    out = keras.ops.convert_to_numpy(small(x))
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)


def test_shrink_refuses_an_empty_support():
    optimizer = tfd.DessiLBI(lambda_=1e6)  # nothing crosses λ
    model = _trained(optimizer)
    with pytest.raises(ValueError, match="keeps no weight of layer"):
        tfd.shrink(model, optimizer=optimizer)
    with pytest.raises(TypeError, match="allow_dead"):
        tfd.shrink(model, optimizer=optimizer, allow_dead="no")


def test_export_refuses_non_finite_weights_and_dead_layers(tmp_path):
    model = _model()
    kernel = model.get_layer("fc").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="non-finite weights.*nothing was exported"):
        tfd.export_saved_model(model, str(tmp_path / "nan"), version=1)
    assert not os.path.exists(tmp_path / "nan" / "1")
    optimizer = tfd.DessiLBI(lambda_=1e6)
    dead = _trained(optimizer)
    with pytest.raises(ValueError, match="keep no weight.*allow_dead=True"):
        tfd.export_saved_model(dead, str(tmp_path / "dead"), version=1, optimizer=optimizer)
    assert not os.path.exists(tmp_path / "dead" / "1")
    path = tfd.export_saved_model(dead, str(tmp_path / "dead"), version=1, optimizer=optimizer,
                                  allow_dead=True)
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    with pytest.raises(TypeError, match="prune_bias"):
        tfd.export_saved_model(_model(), str(tmp_path / "pb"), prune_bias="no")


def test_sparsity_report_refuses_a_non_finite_gamma():
    optimizer = tfd.DessiLBI(lambda_=0.01, mu=1.0)
    model = _trained(optimizer)
    assert tfd.sparsity_report(model, optimizer).weights_kept > 0
    conv = model.get_layer("conv").kernel
    index = optimizer._get_variable_index(conv)
    optimizer._vs[index].assign(np.full(conv.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="Γ of layer 'conv' holds NaN"):
        tfd.sparsity_report(model, optimizer)


def test_greedy_refuses_to_prune_the_output_layer():
    from tf_dessilbi.procedures import greedy

    with pytest.raises(ValueError, match=r"output layer\(s\) \['logits'\].*never pruned"):
        greedy.selectable_layers(_model(), ["logits"])
    assert [l.name for l in greedy.selectable_layers(_model(), ["fc"])] == ["fc"]


# -- asked for, not done --------------------------------------------------------
def test_a_decreasing_polynomial_decay_is_refused():
    from tf_dessilbi.sparse import schedules

    with pytest.raises(ValueError, match="initial_sparsity=0.9, final_sparsity=0.5"):
        schedules.PolynomialDecay(0.9, 0.5, begin_step=0, end_step=10)
    assert schedules.PolynomialDecay(0.5, 0.5, end_step=10).sparsity(3) == 0.5


def test_w_star_finetune_that_would_never_start_fails_at_fit():
    from tf_dessilbi.dessilbi.finetune import WStarFinetune

    optimizer = tfd.DessiLBI(lambda_=0.01, mu=1.0)
    model = _model()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    with pytest.raises(ValueError, match=r"Fork\(epoch=5\)\) never starts in a fit of epochs=2"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[WStarFinetune(5)])
    with warnings.catch_warnings(record=True) as caught:  # a fraction can still start it
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[WStarFinetune(Fork(epoch=5, units=0.5))])
    assert any("never starts" in str(w.message) for w in caught)


def test_units_fraction_with_elementwise_dessilbi_fails_before_the_first_step():
    from tf_dessilbi.dessilbi.finetune import WStarFinetune

    optimizer = tfd.DessiLBI(structure="elementwise")
    model = _model()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _weights(model)
    x, y = _data()
    with pytest.raises(ValueError, match=r"Fork\(units=...\).*count filters"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[WStarFinetune(Fork(units=0.5))])
    for a, b in zip(before, _weights(model)):  # not a single step was taken
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("split,message", [
    ("test[5000:100]", "selects no examples"),
    ("test[:200%]", "is invalid"),
    ("test[", "is invalid"),
])
def test_empty_or_clipped_splits_are_config_errors(split, message):
    config = config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py"))
    config.data.eval_split = split
    with pytest.raises(config_lib.ConfigError, match=rf"config.data.eval_split=.*{message}"):
        config_lib.validate(config)
    config.data.eval_split = "train[:10%]+test[50%:]"
    config_lib.validate(config)


def test_a_local_split_that_selects_nothing_is_refused():
    from tf_dessilbi.training import input_pipeline

    arrays = {"train": (np.zeros((10, 2)), np.zeros(10)), "test": (np.zeros((4, 2)), np.zeros(4))}
    with pytest.raises(ValueError, match="selects no examples of the 4"):
        input_pipeline.local_split(arrays, "test[6:]", "eval_split")
    assert len(input_pipeline.local_split(arrays, "test[1:3]", "eval_split")[0]) == 2


def test_an_edited_backup_marker_is_not_trusted(tmp_path):
    from tf_dessilbi.training import backup as backup_lib

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    model.fit(x, x[:, :2], epochs=2, verbose=0, callbacks=[backup_lib.Backup(str(tmp_path))])
    marker = tmp_path / "epoch-2.json"
    meta = json.loads(marker.read_text())
    meta["epoch"] = 99
    marker.write_text(json.dumps(meta))
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    epoch, _ = backup_lib.restore(fresh, str(tmp_path))
    assert epoch == 1  # the edited marker counts as damaged: the previous backup is used


def test_string_booleans_are_refused():
    from tf_dessilbi.bilevel import solvers
    from tf_dessilbi.dessilbi import w_star

    optimizer = tfd.DessiLBI(lambda_=0.01, mu=1.0)
    model = _trained(optimizer)
    with pytest.raises(TypeError, match="prune_bias"):
        w_star.w_star_updates(model, optimizer, prune_bias="no")
    import tensorflow as tf

    from tf_dessilbi.bilevel.problem import BilevelProblem

    problem = BilevelProblem(lambda x, y, b: 0.0, lambda x, y, b: 0.0, lambda: None, lambda: None)
    x, y = [tf.Variable([0.0])], [tf.Variable([0.0])]
    assert solvers.StocBiO(problem, x, y, 0.1, 0.1, use_tf_function=False).use_tf_function is False
    with pytest.raises(TypeError, match="use_tf_function"):
        solvers.StocBiO(problem, x, y, 0.1, 0.1, use_tf_function="no")


# -- errors that name what the user set -------------------------------------------
def _config(name):
    return config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", name + ".py"))


@pytest.mark.parametrize("name,field,value,message", [
    ("fmnist_gmp", "begin_fraction", 0.9, r"config.sparse.begin_fraction=0.9 is invalid: allowed < config.sparse.end_fraction=0.75"),
    ("fmnist_gmp", "initial_sparsity", 0.95, r"config.sparse.initial_sparsity=0.95 is invalid: allowed <= config.sparse.sparsity=0.9"),
    ("fmnist_gmp", "sparsity", 1.5, r"config.sparse.sparsity=1.5 is invalid: allowed a finite number >= 0.0 and < 1.0"),
    ("fmnist_set", "drop_fraction", 0.0, r"config.sparse.drop_fraction=0.0"),
    ("fmnist_set", "distribution", "erk", r"config.sparse.distribution='erk'"),
    ("fmnist_snip", "score_batches", 0, r"config.sparse.score_batches=0"),
    ("fmnist_imp", "prune_fraction", 1.0, r"config.sparse.prune_fraction=1.0"),
    ("fmnist_imp", "milestones", (0.8, 2), r"config.sparse.milestones=\(0.8, 2\)"),
    ("fmnist_greedy", "num_candidates", 0, r"config.sparse.num_candidates=0"),
    ("fmnist_greedy", "unit_budget", 1.5, r"config.sparse.unit_budget=1.5.*<= 1.0"),
    ("fmnist_greedy", "typo", 1, r"Unknown config field config.sparse.typo; known: the fields of method 'greedy'"),
    ("fmnist_dessilbi", "sparsity", 0.5, r"config.sparse.sparsity; known: no config.sparse fields with method 'dessilbi'"),
])
def test_method_sections_are_validated_up_front(name, field, value, message):
    config = _config(name)
    config.sparse[field] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)


@pytest.mark.parametrize("field,value", [
    ("method", "adam"), ("target_density", 0.0), ("neumann_terms", 0), ("warm_momentum", 1.0),
    ("log_every", 0),
])
def test_the_bilevel_section_is_validated_up_front(field, value):
    config = _config("fmnist_cs_bilevel")
    config.bilevel[field] = value
    with pytest.raises(config_lib.ConfigError, match=rf"config.bilevel.{field}={value!r}"):
        config_lib.validate(config)


def test_greedy_with_dessilbi_is_refused_before_training(tmp_path, capsys):
    config = _config("fmnist_greedy")
    config.optimizer.name = "dessilbi"
    assert main_lib.run(config, str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.optimizer.name='dessilbi'" in err[0] and "greedy" in err[0]
    assert not os.path.exists(tmp_path / "run" / "summary.json")


# -- data lost by misuse ------------------------------------------------------------
@pytest.mark.parametrize("order", ["outer first", "inner first"])
def test_nested_w_star_handles_restore_the_dense_weights_in_any_order(order):
    optimizer = tfd.DessiLBI(lambda_=0.05, mu=1.0)
    model = _trained(optimizer, epochs=2)
    dense = _weights(model)
    outer = tfd.apply_w_star(model, optimizer)
    w_star = _weights(model)
    assert any(not np.array_equal(a, b) for a, b in zip(dense, w_star))
    inner = tfd.apply_w_star(model, optimizer)
    for handle in ((outer, inner) if order == "outer first" else (inner, outer)):
        handle.restore()
    for a, b in zip(dense, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_auto_source_offline_without_local_files_names_the_local_files(monkeypatch):
    from tf_dessilbi.training import input_pipeline

    def offline(data_config, split):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(input_pipeline, "_local_available", lambda name: False)
    monkeypatch.setattr(input_pipeline, "_tfds", offline)
    data = config_lib.base_config().data
    with pytest.raises(config_lib.ConfigError,
                       match=r"source='auto': no local Fashion-MNIST files.*dataset-fashion-mnist"
                             r".*ConnectionError"):
        input_pipeline.get_datasets(data, 32)
    data.source = "tfds"  # asked for TFDS: its own error
    with pytest.raises(ConnectionError):
        input_pipeline.get_datasets(data, 32)


@pytest.mark.parametrize("call", ["sparsity_report", "export_saved_model", "joint_unit_groups",
                                  "structures_for"])
def test_a_non_model_argument_is_a_type_error_naming_the_function(call, tmp_path):
    args = (str(tmp_path),) if call == "export_saved_model" else ()
    with pytest.raises(TypeError, match=rf"{call}\(\) needs a keras.Model. Received: model=\("):
        getattr(tfd, call)((_model(),), *args)


def test_greedy_layers_must_be_names():
    from tf_dessilbi.procedures import greedy

    for bad in (3, "fc", ["fc", 3]):
        with pytest.raises(TypeError, match="`layers` must be a sequence of layer names"):
            greedy.selectable_layers(_model(), bad)


def test_an_emptied_residual_branch_is_not_dead():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, name="stem")(inputs)
    branch = keras.layers.Dense(4, name="branch")(h)
    out = keras.layers.Dense(2, name="logits")(keras.layers.Add()([h, branch]))
    model = keras.Model(inputs, out)
    units = {"branch": np.zeros(4, bool)}
    small = tfd.shrink(model, units)  # the skip connection still carries the input
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert not np.allclose(keras.ops.convert_to_numpy(small(x))[0],
                           keras.ops.convert_to_numpy(small(x))[1])
    with pytest.raises(ValueError, match="keeps no weight of layer\\(s\\) stem"):
        tfd.shrink(model, {"stem": np.zeros(4, bool)})

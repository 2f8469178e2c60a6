"""`Fork` (when the fine-tune of W* starts, and the support it keeps), `WStarFinetune(fork)`,
the deprecated keyword arguments and config names, and the config sections ``dessilbi`` / ``fork``."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi import DessiLBI
from tf_dessilbi import configs as configs_index
from tf_dessilbi.dessilbi import finetune
from tf_dessilbi.dessilbi.fork import Fork
from tf_dessilbi.training import config_lib
from tf_dessilbi.training import dessilbi_config
from tf_dessilbi.training import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- Fork ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({}, ValueError, r"Fork needs `epoch`, `units` or `weights`.*Received: epoch=None, units=None, "
                     r"weights=None"),
    ({"epoch": -1}, ValueError, r"`epoch` must be >= 0. Received: epoch=-1"),
    ({"epoch": 1.5}, TypeError, r"`epoch` must be an integer.*epoch=1.5"),
    ({"epoch": True}, TypeError, r"`epoch` must be an integer"),
    ({"units": 0.0}, ValueError, r"`units` must be > 0.*units=0.0"),
    ({"units": 1.5}, ValueError, r"`units` must be <= 1.*units=1.5"),
    ({"units": "half"}, TypeError, r"`units` must be a real number. Received: units='half'"),
    ({"weights": -0.1}, ValueError, r"`weights` must be > 0.*weights=-0.1"),
    ({"weights": float("nan")}, ValueError, r"`weights` must be finite"),
    ({"epoch": 1, "trim": True}, ValueError, r"Fork\(trim=True\) cuts supp Γ.*received units=None"),
    ({"units": 0.5, "trim": "yes"}, TypeError, r"`trim` must be True or False.*trim='yes'"),
    ({"epoch": 1, "round_to": 0}, ValueError, r"`round_to` must be >= 1. Received: round_to=0"),
    ({"epoch": 1, "round_to": "8"}, TypeError, r"`round_to` must be an integer"),
    ({"epoch": 1, "dependency_groups": 1}, TypeError, r"`dependency_groups` must be True or False"),
    ({"units": 0.5, "check_every": 0}, ValueError, r"`check_every` must be >= 1.*check_every=0"),
])
def test_fork_refuses_each_bad_value_naming_it(kwargs, error, match):
    with pytest.raises(error, match=match):
        Fork(**kwargs)


def test_fork_is_a_frozen_value_with_a_config_round_trip():
    fork = Fork(units=0.5, trim=True, round_to=np.int64(8), dependency_groups=True)
    assert fork.round_to == 8 and type(fork.round_to) is int  # canonical Python values
    assert repr(fork) == "Fork(units=0.5, trim=True, round_to=8, dependency_groups=True)"
    assert repr(Fork(epoch=3)) == "Fork(epoch=3)"
    config = fork.get_config()
    assert config == {"epoch": None, "units": 0.5, "weights": None, "trim": True, "round_to": 8,
                      "dependency_groups": True, "check_every": 10}
    assert Fork.from_config(config) == fork and hash(Fork.from_config(config)) == hash(fork)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fork.units = 0.4
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fork))
    assert restored == fork
    assert tf_dessilbi.Fork is Fork and "Fork" in tf_dessilbi.__all__
    assert tf_dessilbi.WStarFinetune is finetune.WStarFinetune and "WStarFinetune" in tf_dessilbi.__all__


# -- WStarFinetune(fork) --------------------------------------------------------------
def test_an_int_is_a_fork_epoch_and_the_new_form_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert finetune.WStarFinetune(3).fork == Fork(epoch=3)
        callback = finetune.WStarFinetune(Fork(units=0.5, trim=True), decouple=False)
    assert callback.fork == Fork(units=0.5, trim=True) and callback.decouple is False
    assert (callback.units_fraction, callback.trim, callback.start_epoch) == (0.5, True, None)
    config = callback.get_config()
    assert config["fork"] == Fork(units=0.5, trim=True).get_config()
    assert finetune.WStarFinetune.from_config(config).get_config() == config


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((), {}, ValueError, r"WStarFinetune needs `fork`.*Received: fork=None"),
    (("3",), {}, TypeError, r"`fork` must be a tf_dessilbi.Fork or an int epoch.*fork='3'"),
    ((Fork(epoch=1),), {"units_fraction": 0.5}, TypeError, r"takes `fork` or the deprecated"),
    ((1,), {"start_epoch": 2}, TypeError, r"got the epoch twice"),
    ((1,), {"units": 0.5}, TypeError, r"unexpected keyword arguments \['units'\]"),
    ((1,), {"decouple": "no"}, TypeError, r"`decouple` must be True or False"),
])
def test_w_star_finetune_argument_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        finetune.WStarFinetune(*args, **kwargs)


@pytest.mark.parametrize("args, kwargs, fork, message", [
    ((), {"units_fraction": 0.5}, Fork(units=0.5),
     "units_fraction= is deprecated; pass fork=tf_dessilbi.Fork(units=0.5)"),
    ((), {"start_epoch": 2}, Fork(epoch=2),
     "start_epoch= is deprecated; pass fork=tf_dessilbi.Fork(epoch=2)"),
    ((4,), {"weights_fraction": 0.2, "check_every": 1}, Fork(epoch=4, weights=0.2, check_every=1),
     "weights_fraction=, check_every= are deprecated; pass "
     "fork=tf_dessilbi.Fork(epoch=4, weights=0.2, check_every=1)"),
    ((), {"units_fraction": 0.3, "trim": True, "round_to": 4, "dependency_groups": True},
     Fork(units=0.3, trim=True, round_to=4, dependency_groups=True),
     "pass fork=tf_dessilbi.Fork(units=0.3, trim=True, round_to=4, dependency_groups=True)"),
])
def test_the_old_keywords_warn_and_map_onto_a_fork(args, kwargs, fork, message):
    with pytest.warns(DeprecationWarning) as caught:
        callback = finetune.WStarFinetune(*args, **kwargs)
    assert callback.fork == fork
    assert any(message in str(w.message) for w in caught), [str(w.message) for w in caught]


@pytest.mark.parametrize("kwargs, finding", [
    ({"layer_units": {"conv": 2}}, r"layer_units=\.\.\.\) is deprecated and will be removed.*"
                                   r"PARITY_E10_WIDTHS"),
    ({"group_margin": "max"}, r"group_margin=\.\.\.\) is deprecated and will be removed.*"
                              r"PARITY_RESNET20_GROUPS"),
])
def test_the_options_that_did_not_move_w_star_are_deprecated(kwargs, finding):
    fork = Fork(epoch=1, dependency_groups="group_margin" in kwargs)
    with pytest.warns(DeprecationWarning, match=finding):
        callback = finetune.WStarFinetune(fork, **kwargs)
    key, value = next(iter(kwargs.items()))
    assert callback.get_config()[key] == value  # still acting for this release


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32") + 2 * (x[..., 1].mean(axis=(1, 2)) > 0)
    return x, y.astype("int32")


def _run(callback):
    """5 epochs of 4 steps of the small CNN of test_dessilbi_phases under `callback`; its weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(keras.layers.ReLU()(x))
    x = keras.layers.Dense(6, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    model.compile(optimizer=DessiLBI(0.2, kappa=1.0, mu=5.0, lambda_=0.3, structure="filter"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[callback])
    return [keras.ops.convert_to_numpy(w) for w in model.weights], callback.started_at_step


@pytest.mark.parametrize("old, new", [
    ({"units_fraction": 0.25, "check_every": 1, "trim": True}, Fork(units=0.25, check_every=1, trim=True)),
    ({"start_epoch": 3, "round_to": 4}, Fork(epoch=3, round_to=4)),
])
def test_the_old_keywords_train_the_same_weights_as_the_fork(old, new):
    with pytest.warns(DeprecationWarning, match="deprecated; pass fork=tf_dessilbi.Fork"):
        old_callback = finetune.WStarFinetune(**old)
    old_weights, old_start = _run(old_callback)
    new_callback = finetune.WStarFinetune(new)
    new_weights, new_start = _run(new_callback)
    assert old_start == new_start is not None
    assert (old_callback.trimmed, old_callback.added) == (new_callback.trimmed, new_callback.added)
    assert new_callback.trimmed or new_callback.added  # the trim / the rounding acted
    for a, b in zip(old_weights, new_weights):
        np.testing.assert_array_equal(a, b)


# -- the config sections ----------------------------------------------------------------
def _dessilbi_config():
    config = config_lib.base_config()
    config.num_epochs = 5
    return config


def _resolved(config):
    """What a run builds from `config`: the WStarFinetune's config and DessiLBI's arguments."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_lib.validate(config)
    callbacks = methods.get(config).callbacks(config, None, 10)
    fine = [c for c in callbacks if isinstance(c, finetune.WStarFinetune)]
    return ({**dessilbi_config.dessilbi_kwargs(config), "structure": config.dessilbi.structure,
             "steady": any(type(c).__name__ == "SteadyPathSpeed" for c in callbacks)},
            fine[0].get_config() if fine else None,
            [str(w.message) for w in caught if w.category is DeprecationWarning])


OLD_AND_NEW = [
    ({"kappa": 2.0, "mu": 40.0, "lambda_": 0.25, "lambda_scaling": "init_norm", "steady_path": True},
     {"dessilbi.kappa": 2.0, "dessilbi.mu": 40.0, "dessilbi.lambda_": 0.25,
      "dessilbi.lambda_scaling": "init_norm", "dessilbi.steady_path": True}),
    ({"finetune_units": 0.5, "finetune_trim": True, "finetune_groups": True, "finetune_round_to": 8,
      "finetune_allow_empty": True},
     {"fork.units": 0.5, "fork.trim": True, "fork.dependency_groups": True, "fork.round_to": 8,
      "fork.allow_empty": True}),
    ({"finetune_epochs": 2, "finetune_weights": 0.3, "finetune_shrink": False, "structure": "elementwise"},
     {"fork.last_epochs": 2, "fork.weights": 0.3, "fork.shrink": False,
      "dessilbi.structure": "elementwise"}),
]


@pytest.mark.parametrize("old, new", OLD_AND_NEW)
def test_the_old_flat_fields_and_the_sections_build_the_same_run(old, new):
    old_config, new_config = _dessilbi_config(), _dessilbi_config()
    for name, value in old.items():
        old_config.optimizer[name] = value
    for path, value in new.items():
        section, name = path.split(".")
        new_config[section][name] = value
    old_resolved, new_resolved = _resolved(old_config), _resolved(new_config)
    assert old_resolved[:2] == new_resolved[:2]
    assert new_resolved[2] == []  # the sections do not warn
    assert sorted(old_resolved[2]) == sorted(
        f"config.optimizer.{name} is deprecated; set config.{dessilbi_config.MOVED[name]} "
        f"(now {value!r})." for name, value in old.items())
    assert old_config.to_dict() == new_config.to_dict()  # the old names are gone once moved
    assert old_config.fork.shrink == new_config.fork.shrink


def test_an_old_and_a_new_name_set_to_different_values_is_an_error():
    config = _dessilbi_config()
    config.dessilbi.kappa, config.optimizer.kappa = 2.0, 3.0
    with pytest.raises(config_lib.ConfigError, match=r"config.optimizer.kappa=3.0 \(deprecated\) and "
                                                     r"config.dessilbi.kappa=2.0 .*set only "
                                                     r"config.dessilbi.kappa"):
        config_lib.validate(config)
    config = _dessilbi_config()
    config.dessilbi.kappa, config.optimizer.kappa = 2.0, 2.0  # the same value: one field
    with pytest.warns(DeprecationWarning, match="config.optimizer.kappa is deprecated"):
        config_lib.validate(config)
    assert config.dessilbi.kappa == 2.0 and "kappa" not in config.optimizer


def test_the_deprecated_config_fields_warn_and_still_act():
    config = _dessilbi_config()
    config.fork.last_epochs = 1
    config.optimizer.finetune_layer_units = "conv1/=2"
    with pytest.warns(DeprecationWarning, match=r"finetune_layer_units is deprecated and will be "
                                                r"removed.*PARITY_E10_WIDTHS"):
        config_lib.validate(config)
    callback = [c for c in methods.get(config).callbacks(config, None, 10)
                if isinstance(c, finetune.WStarFinetune)][0]
    assert callback.layer_units == {"conv1/": 2} and callback.fork == Fork(epoch=4, check_every=1)


def test_old_cli_overrides_are_rewritten_to_the_sections():
    argv = ["prog", "--config=x.py", "--config.optimizer.kappa=2", "--config.optimizer.finetune_units=0.5",
            "--config.optimizer.learning_rate=0.1"]
    with pytest.warns(DeprecationWarning, match=r"--config.optimizer.kappa is deprecated; pass "
                                                r"--config.dessilbi.kappa"):
        out = dessilbi_config.translate_argv(argv)
    assert out == ["prog", "--config=x.py", "--config.dessilbi.kappa=2", "--config.fork.units=0.5",
                   "--config.optimizer.learning_rate=0.1"]
    with pytest.raises(config_lib.ConfigError, match=r"--config.dessilbi.kappa is given twice"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            dessilbi_config.translate_argv(["p", "--config.dessilbi.kappa=1", "--config.optimizer.kappa=2"])


def test_a_workdir_config_of_the_flat_release_reads_as_the_sections():
    from tf_dessilbi.training import workdir as workdir_lib

    config = _dessilbi_config()
    config.fork.units, config.dessilbi.mu = 0.5, 40.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_lib.validate(config)
    now = config.to_dict()
    saved = {key: dict(value) if isinstance(value, dict) else value for key, value in now.items()}
    saved["optimizer"] = {**saved["optimizer"], "mu": 40.0, "finetune_units": 0.5, "kappa": 1.0,
                          "finetune_epochs": 0}
    del saved["dessilbi"], saved["fork"]
    assert workdir_lib.config_differences(saved, now) == []
    saved["optimizer"]["mu"] = 20.0
    assert workdir_lib.config_differences(saved, now) == [
        "config.dessilbi.mu: 20.0 in the workdir, 40.0 now"]


# -- every packaged config resolves as the release with flat fields did ---------------------
BEFORE = "bf5e84a152e3caa4ac7b585ea906cafc9745d1e5"  # the last commit with flat optimizer.* fields


def _git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)


def _old_module(name, source):
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up (removed by the fixture)
    exec(compile(source, f"<{BEFORE[:7]}:{name}>", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def before(tmp_path_factory):
    """The flat release's config_lib, methods and config files (from git), or a skip."""
    if _git("cat-file", "-e", f"{BEFORE}^{{commit}}").returncode != 0:
        pytest.skip(f"no git history with {BEFORE[:7]} (the flat release) here")
    folder = tmp_path_factory.mktemp("configs_before")
    names = _git("ls-tree", "--name-only", BEFORE, "tf_dessilbi/configs/").stdout.split()
    for path in names:
        (folder / os.path.basename(path)).write_text(_git("show", f"{BEFORE}:{path}").stdout)
    old_lib = _old_module("_config_lib_before",
                          _git("show", f"{BEFORE}:tf_dessilbi/training/config_lib.py").stdout)
    old_methods = _old_module("_methods_before",
                              _git("show", f"{BEFORE}:tf_dessilbi/training/methods.py").stdout)
    yield folder, old_lib, old_methods
    for name in ("_config_lib_before", "_methods_before"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("name", configs_index.names())
def test_each_packaged_config_builds_what_the_flat_release_built(name, before, monkeypatch):
    folder, old_lib, old_methods = before
    if not (folder / f"{name}.py").exists():
        pytest.skip(f"{name} is newer than the flat release")
    # The old config file (and the files it loads) against the old config_lib: HEAD's semantics.
    monkeypatch.setitem(sys.modules, "tf_dessilbi.training.config_lib", old_lib)
    import tf_dessilbi.training as training_package

    monkeypatch.setattr(training_package, "config_lib", old_lib)
    old = old_lib.load_config(str(folder / f"{name}.py"))
    monkeypatch.undo()
    new = config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", f"{name}.py"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the packaged configs use the sections
        config_lib.validate(new)
    o = old.optimizer
    assert dessilbi_config.dessilbi_kwargs(new) == {
        "kappa": o.kappa, "mu": o.mu, "lambda_": o.lambda_, "lambda_scaling": o.lambda_scaling}
    assert (new.dessilbi.structure, new.dessilbi.steady_path) == (o.structure, o.steady_path)
    assert new.optimizer.joint_groups == o.joint_groups
    assert (new.fork.shrink, new.fork.allow_empty) == (o.finetune_shrink, o.finetune_allow_empty)
    if methods.method_name(new) != "dessilbi":
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old code's keywords
        old_callbacks = old_methods._dessilbi_callbacks(old, None, 10)
    new_callbacks = methods._dessilbi_callbacks(new, None, 10)
    assert [type(c).__name__ for c in old_callbacks] == [type(c).__name__ for c in new_callbacks]
    for a, b in zip(old_callbacks, new_callbacks):
        if isinstance(a, finetune.WStarFinetune):
            assert a.get_config() == b.get_config() and a.fork == dessilbi_config.build_fork(new)

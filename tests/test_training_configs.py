"""Config files: they load and validate; overrides; bad values fail early."""

import glob
import os

import pytest
from absl import flags
from ml_collections import config_flags

from tf_dessilbi.training import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "tf_dessilbi", "configs", "*.py"))
                      if not os.path.basename(f).startswith("_"))
REQUIRED = [
    "fmnist_sgd", "fmnist_dessilbi", "fmnist_dessilbi_elementwise", "fmnist_cs",
    "mnist_lenet5_dessilbi", "cifar10_vgg16bn_dessilbi", "cifar10_resnet20_dessilbi",
    "cifar10_resnet56_dessilbi", "cifar10_resnet20_cs", "imagenet_resnet18_dessilbi",
]


def _load(name):
    return config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", name + ".py"))


def test_all_configs_exist():
    names = {os.path.splitext(os.path.basename(f))[0] for f in CONFIG_FILES}
    assert set(REQUIRED) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_is_valid_and_documented(path):
    config = config_lib.load_config(path)
    config_lib.validate(config)
    with open(path) as f:
        text = f.read()
    name = os.path.basename(path)[:-3]
    assert f"python -m tf_dessilbi.train --config={name} " in text  # the command, by name


@pytest.mark.parametrize(
    "variant,base,changed",
    [
        ("fmnist_dessilbi_elementwise", "fmnist_dessilbi", {"dessilbi.structure": "elementwise"}),
        ("cifar10_resnet20_dessilbi", "cifar10_resnet56_dessilbi", {"model.name": "resnet20"}),
        ("fmnist_cs", "fmnist_sgd", {"gates.enabled": True}),
    ],
)
def test_variants_override_a_few_fields(variant, base, changed):
    v, b = _load(variant).to_dict(), _load(base).to_dict()
    for field, value in changed.items():
        section, key = field.split(".")
        assert v[section][key] == value
        assert b[section][key] != value


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("optimizer.name", "adam", r"config.optimizer.name='adam' is invalid: allowed one of \('sgd', 'dessilbi'\)"),
        ("model.name", "resnet99", r"config.model.name='resnet99'"),
        ("strategy", "horovod", r"config.strategy='horovod'.*'mirrored'"),
        ("dessilbi.kappa", -1.0, r"config.dessilbi.kappa=-1.0 is invalid: allowed a finite number > 0"),
        ("dessilbi.mu", 0.0, r"config.dessilbi.mu=0.0"),
        ("dessilbi.lambda_", -0.5, r"config.dessilbi.lambda_=-0.5"),
        ("optimizer.momentum", 1.0, r"config.optimizer.momentum=1.0.*< 1"),
        ("optimizer.learning_rate", float("nan"), r"config.optimizer.learning_rate=nan"),
        ("num_epochs", 0, r"config.num_epochs=0.*>= 1"),
        ("batch_size", 2.5, r"config.batch_size=2.5.*an integer"),
        ("schedule.name", "linear", r"config.schedule.name='linear'"),
        ("mixed_precision", "float16", r"config.mixed_precision='float16'"),
        ("dessilbi.structure", "group", r"config.dessilbi.structure='group'"),
        ("data.augment", "mixup", r"config.data.augment='mixup'"),
        ("early_tickets.epochs", (0,), r"config.early_tickets.epochs=\(0,\)"),
        ("early_tickets.epochs", (9,), r"integer epochs in \[1, num_epochs=3\]"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
    config = _load("fmnist_dessilbi")
    section = config
    *parents, key = field.split(".")
    for p in parents:
        section = section[p]
    with section.ignore_type():
        section[key] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_gates_with_dessilbi_is_rejected():
    config = _load("fmnist_cs")
    config.optimizer.name = "dessilbi"
    with pytest.raises(ValueError, match="config.optimizer.name='dessilbi'.*'sgd' with gates.enabled=True"):
        config_lib.validate(config)


def test_early_tickets_need_dessilbi():
    config = _load("fmnist_sgd")
    config.early_tickets.epochs = (1,)
    with pytest.raises(ValueError, match="early_tickets.epochs.*optimizer.name='dessilbi'"):
        config_lib.validate(config)


def test_piecewise_needs_boundaries():
    config = _load("fmnist_dessilbi")
    config.schedule.name = "piecewise"
    with pytest.raises(ValueError, match="config.schedule.boundaries=\\(\\)"):
        config_lib.validate(config)


def test_unknown_field_programmatic():
    config = _load("fmnist_dessilbi")
    config.optimizer.kapa = 2.0  # a typo
    with pytest.raises(ValueError, match="Unknown config field config.optimizer.kapa; known fields of config.optimizer"):
        config_lib.validate(config)


def _parse(argv):
    values = flags.FlagValues()
    argv = ["prog"] + argv
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_old_command_line_overrides_still_override_a_packaged_config():
    """``--config.optimizer.mu=40`` (the flat release's name) beats the config file's dessilbi.mu."""
    from tf_dessilbi.training import main

    path = os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py")
    with pytest.warns(DeprecationWarning, match=r"--config.optimizer.mu is deprecated; pass --config.dessilbi.mu"):
        argv = main._translate_old_names(["prog", f"--config={path}", "--config.optimizer.mu=40",
                                          "--config.optimizer.finetune_epochs=1"])
    config = _parse(argv[1:])
    config_lib.validate(config)
    assert config.dessilbi.mu == 40.0 and config.fork.last_epochs == 1
    # Set directly on the placeholder (a config file of the flat release), it is moved too.
    config = _parse([f"--config={path}", "--config.optimizer.kappa=2"])
    with pytest.warns(DeprecationWarning, match="config.optimizer.kappa is deprecated; set config.dessilbi.kappa"):
        config_lib.validate(config)
    assert config.dessilbi.kappa == 2.0 and "kappa" not in config.optimizer


def test_command_line_overrides():
    path = os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py")
    config = _parse([f"--config={path}", "--config.dessilbi.kappa=2", "--config.early_tickets.epochs=(1,2)"])
    assert config.dessilbi.kappa == 2.0
    assert tuple(config.early_tickets.epochs) == (1, 2)
    config_lib.validate(config)


def test_command_line_unknown_field_fails():
    path = os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py")
    with pytest.raises((flags.Error, AttributeError, KeyError), match="kapa"):
        _parse([f"--config={path}", "--config.optimizer.kapa=2"])


def test_command_line_wrong_type_fails():
    path = os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py")
    with pytest.raises(flags.Error):
        _parse([f"--config={path}", "--config.dessilbi.kappa=abc"])


def test_the_cli_locks_the_config_so_a_typo_is_an_error(tmp_path):
    import subprocess
    import sys

    config_lib.validate(config_lib.base_config())
    result = subprocess.run(
        [sys.executable, "-m", "tf_dessilbi.train", "--config=fmnist_dessilbi",
         f"--workdir={tmp_path}/run", "--config.optimizer.learning_rat=0.1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "learning_rat" in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_the_protocol_path_config_is_the_protocol_config_without_its_fine_tune():
    """dense W (the path) and W* (its fork) come from one set of settings: only the fine-tune differs."""
    path, tuned = _load("fmnist_dessilbi_protocol_path").to_dict(), _load("fmnist_dessilbi_protocol").to_dict()
    assert tuned["fork"]["units"] == 0.5 and tuned["fork"]["trim"]
    f = path["fork"]
    assert not (f["units"] or f["last_epochs"] or f["weights"] or f["trim"])
    differ = {f"{section}.{key}" for section in tuned for key in (
        tuned[section] if isinstance(tuned[section], dict) else [None])
        if (path[section].get(key) if key else path[section]) != (tuned[section].get(key) if key else tuned[section])}
    assert differ == {"fork.units", "fork.trim"}

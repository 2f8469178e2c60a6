"""The CLI's front: configs by name, its help, a quiet start, and the installed wheel."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from tf_dessilbi import _cli_start
from tf_dessilbi import configs
from tf_dessilbi.training import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "tf_dessilbi"
NOISE = ("cuda drivers", "absl::InitializeLog", "cudart_stub", "cpu_feature_guard")
TINY = [
    "--config.data.name=synthetic",
    "--config.data.synthetic_train=32",
    "--config.data.synthetic_eval=16",
    "--config.data.synthetic_shape=(12,12,1)",
    "--config.batch_size=16",
    "--config.num_epochs=1",
    "--config.steps_per_epoch=1",
    "--config.outputs.allow_dead_export=True",
]


def test_the_packaged_configs_are_the_files():
    files = glob.glob(os.path.join(ROOT, "tf_dessilbi", "configs", "*.py"))
    assert configs.names() == sorted(os.path.basename(f)[:-3] for f in files if "__" not in f)
    assert "fmnist_dessilbi" in configs.names()
    assert configs.path("fmnist_dessilbi") == configs.path("fmnist_dessilbi.py")
    assert os.path.isfile(configs.path("fmnist_dessilbi"))


def test_a_name_becomes_the_packaged_file_and_a_path_stays():
    packaged = configs.path("fmnist_sgd")
    argv = main.config_by_name([
        "prog", "--config=fmnist_sgd", "--workdir=w", "--config.batch_size=8"])
    assert argv == ["prog", f"--config={packaged}", "--workdir=w", "--config.batch_size=8"]
    assert main.config_by_name(["prog", "--config", "fmnist_sgd.py"]) == ["prog", "--config", packaged]
    assert main.config_by_name(["prog", "--config=fmnist_sgd:x"]) == ["prog", f"--config={packaged}:x"]
    own = os.path.join("some", "dir", "fmnist_sgd.py")  # a path is never looked up by name
    assert main.config_by_name(["prog", f"--config={own}"]) == ["prog", f"--config={own}"]


def test_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist_sgd.py").write_text("")
    assert main.config_by_name(["prog", "--config=fmnist_sgd.py"]) == ["prog", "--config=fmnist_sgd.py"]


def test_an_unknown_name_is_a_usage_error_listing_the_names(capsys):
    with pytest.raises(SystemExit) as e:
        main.config_by_name(["prog", "--config=fmnist_nope"])
    assert e.value.code == main.EXIT_USAGE
    err = capsys.readouterr().err
    assert "No packaged config named 'fmnist_nope'" in err and "fmnist_dessilbi" in err


def test_the_cli_is_recognized(monkeypatch):
    assert _cli_start.is_the_cli() is False  # pytest is not the CLI: its import stays as it is
    monkeypatch.setattr(sys, "argv", ["/venv/bin/tf-dessilbi-train", "--config=x"])
    assert _cli_start.is_the_cli()
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "tf_dessilbi.train", "--help"])
    assert _cli_start.is_the_cli()
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest"])
    assert not _cli_start.is_the_cli()


def _noise(stderr: str) -> list:
    """TensorFlow's start-up lines in ``stderr``; on a machine with an NVIDIA driver
    the CLI hides nothing (the CUDA messages may matter there), so none are counted."""
    if _cli_start.has_nvidia_driver():
        return []
    return [line for line in stderr.splitlines() if any(n in line for n in NOISE)]


def _run(args, cwd, env=None, timeout=300):
    env = dict(os.environ if env is None else env)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must be quiet without it
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_shows_the_flags_and_the_named_configs_and_starts_quietly(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = _run([sys.executable, "-m", "tf_dessilbi.train", "--helpshort"], cwd=tmp_path, env=env)
    assert "--config:" in result.stdout and "--workdir:" in result.stdout
    assert "Packaged configs (--config=<name>):\n  cifar10_resnet20_cs" in result.stdout
    assert _noise(result.stderr) == []


@pytest.mark.slow
def test_the_wheel_installs_and_runs_a_config_by_name(tmp_path):
    """Build the wheel, install it (no dependencies) in a fresh venv, and run the
    console script outside the source tree: --help, then a packaged config by name."""
    source = tmp_path / "source"  # a copy: no stale build/ of the checkout gets into the wheel
    shutil.copytree(os.path.join(ROOT, PACKAGE), source / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    wheels = tmp_path / "wheels"
    # Offline when this environment has setuptools; else pip's isolated build fetches it.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                    "-q", "-w", str(wheels), str(source)], check=True, timeout=600)
    (wheel,) = glob.glob(str(wheels / "tf_dessilbi-*.whl"))
    # A fresh venv whose only other path is this environment's site-packages (the
    # dependencies: TensorFlow, Keras, ...) through a .pth line; that folder's own
    # .pth files, the editable install of the checkout among them, are not run.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site_packages, "_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", wheel],
                   check=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = _run([python, "-c", "import tf_dessilbi, tf_dessilbi.configs as c; "
                  "print(tf_dessilbi.__file__); print(len(c.names()))"], cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    location, count = where.stdout.split()
    assert location.startswith(str(env_dir)) and int(count) == len(configs.names())

    script = str(env_dir / "bin" / "tf-dessilbi-train")
    helped = _run([script, "--help"], cwd=tmp_path, env=env)
    assert "--workdir:" in helped.stdout and "fmnist_dessilbi" in helped.stdout
    ran = _run([script, "--config=fmnist_dessilbi", f"--workdir={tmp_path / 'run'}", *TINY],
               cwd=tmp_path, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "accuracy (dense W):" in ran.stdout
    assert _noise(ran.stderr) == []
    assert (tmp_path / "run" / "summary.json").exists()

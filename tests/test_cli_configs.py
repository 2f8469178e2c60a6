"""Every shipped config through the real CLI (``python -m tf_dessilbi.train``) on a tiny budget.

Each config file runs in a subprocess on synthetic data with a few steps (``--config.X``
overrides only shrink the budget and swap the data), and must exit 0, write
``summary.json``, export where the config exports, and print its closing lines.
A new config file is picked up automatically (`config_files`).
"""

import json
import os
import subprocess
import sys

import pytest

from tf_dessilbi import configs
from tf_dessilbi.training import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_files():
    """The shipped config files (the one place that knows where they live)."""
    return [configs.path(name) for name in configs.names()]


def tiny_overrides(path):
    """``--config.X=...`` flags that run `path` on synthetic data in a few steps."""
    config = config_lib.load_config(path)
    channels = len(config.data.mean) or 1
    side = 32 if config.model.name.startswith("vgg") else 16  # VGG halves the side 5 times
    flags = {
        "data.name": "synthetic",
        "data.synthetic_train": 64,
        "data.synthetic_eval": 32,
        "data.synthetic_shape": f"({side},{side},{channels})",
        "data.synthetic_classes": 4,
        "data.train_split": "train",
        "data.eval_split": "test",
        "data.source": "auto",
        "batch_size": 16,
        "num_epochs": 2,
        "steps_per_epoch": 2,
        "eval_steps": 0,
        "verbose": 0,
        "outputs.histograms": False,
    }
    if config.data.augment == "imagenet":
        flags["data.image_size"] = 16
    if config.schedule.warmup_epochs:
        flags["schedule.warmup_epochs"] = 0.5
    if config.schedule.boundaries:
        flags["schedule.boundaries"] = "(1,)"
    if config.schedule.step_epochs:
        flags["schedule.step_epochs"] = 1
    if config.optimizer.name == "dessilbi":  # something enters supp Γ within 4 steps
        flags["dessilbi.lambda_"] = 0.05
        flags["dessilbi.mu"] = 1.0
    if config.fork.last_epochs:
        flags["fork.last_epochs"] = 1
    if tuple(config.early_tickets.epochs):
        flags["early_tickets.epochs"] = "(1,)"
        flags["early_tickets.retrain_epochs"] = 1
        flags["early_tickets.rewind_epoch"] = min(config.early_tickets.rewind_epoch, 1)
    if config.gates.rounds > 1:
        flags["gates.rounds"] = 2
        flags["gates.rewind_epoch"] = 1
    sparse = config.sparse
    for field, value in (("frequency", 1), ("delta_t", 1), ("score_batches", 1),
                         ("samples_per_class", 2), ("num_candidates", 4),
                         ("fine_tune_epochs", 1), ("rounds", 1)):
        if field in sparse:
            flags[f"sparse.{field}"] = value
    if "milestones" in sparse:
        flags["sparse.milestones"] = "()"
    if config.method == "cs_bilevel":
        flags["bilevel.warm_steps"] = 1
        flags["bilevel.log_every"] = 1
    return config, [f"--config.{k}={v}" for k, v in flags.items()]


def _cli(args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "tf_dessilbi.train", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("path", config_files(), ids=os.path.basename)
def test_every_config_runs_through_the_cli(path, tmp_path):
    config, overrides = tiny_overrides(path)
    workdir = tmp_path / "run"
    name = os.path.basename(path)[:-3]  # by name, as a user of the wheel runs it
    result = _cli([f"--config={name}", *overrides, f"--workdir={workdir}"])
    assert result.returncode == 0, result.stderr[-4000:]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
    assert summary["dead_layers"] == []
    out = result.stdout
    assert "accuracy (" in out and f"summary: {workdir}/summary.json" in out
    if config.outputs.export:
        export = workdir / "export" / str(config.outputs.export_version)
        assert (export / "saved_model.pb").is_file()
        assert f"SavedModel: {export}" in out
    else:
        assert not (workdir / "export").exists()
    if "sparsity" in summary and summary["sparsity"].get("layers"):
        assert "total" in out  # the sparsity table

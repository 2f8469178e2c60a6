"""The workdir of a run: it remembers its config, and holds the log and the outputs.

``config.json`` is written when a run starts. A later run in the same
workdir resumes it only with the same config (up to the fields in
`IGNORED`, which change nothing in the result); a different config is an
error naming the differing fields, unless ``config.resume=False`` asks for a
fresh start (the previous run's outputs are then deleted). A run that fails
before writing any output (no backup, path or summary yet) takes its
``config.json`` back (`forget_unstarted_run`), so the corrected config can
use the same workdir.

A field the saved config lacks was added to `config_lib.base_config` after
that run started; its default keeps the behaviour of the version that wrote
the workdir, so it counts as equal while it holds that default (a run
started before ``optimizer.joint_groups`` existed resumes with
``joint_groups=False``, and is refused with ``True``). A ``config.json`` of
the release with flat ``optimizer.kappa``, ``optimizer.finetune_*`` fields is
read with them in ``config.dessilbi`` / ``config.fork``
(`dessilbi_config.upgrade_saved`).
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
import shutil

from absl import logging

from tf_dessilbi.training import config_lib
from tf_dessilbi.training import dessilbi_config
from tf_dessilbi.training.backup import write_json

# Fields that do not change the trained model: free to differ on a resume.
IGNORED = ("verbose", "resume", "outputs", "eval_steps", "eval_batch_size")
# What a fresh start (config.resume=False) deletes.
RUN_OUTPUTS = (
    "backup", "tensorboard", "early_tickets", "path.npz", "path.png",
    "summary.json", "config.json",
)


class WorkdirError(ValueError):
    """The workdir cannot hold this run (a file, or another run's config)."""


def check_workdir(workdir: str) -> str:
    """Creates `workdir` if needed; a clear error if it is a file."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(
            f"--workdir={workdir!r} is a file, not a folder. Give a folder (it is "
            f"created if missing)."
        )
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"Cannot create --workdir={workdir!r}: {e.strerror}.") from None
    return workdir


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _comparable(config_dict: dict) -> dict:
    flat = _flat(config_dict)
    return {
        k: v for k, v in flat.items()
        if not any(k == f or k.startswith(f + ".") for f in IGNORED)
    }


def config_differences(saved: dict, config_dict: dict, defaults: dict | None = None) -> list:
    """``["optimizer.learning_rate: 0.1 in the workdir, 0.05 now", ...]``.

    Args:
        saved: the workdir's ``config.json``.
        config_dict: the config of the run asked for, as a dict.
        defaults: the base config as a dict (`config_lib.base_config`; None
            reads it): a field missing from ``saved`` is equal when
            ``config_dict`` holds its default there.
    """
    if defaults is None:
        defaults = config_lib.base_config().to_dict()
    saved = dessilbi_config.upgrade_saved(saved)  # the previous release's flat names, moved
    a, b, base = _comparable(saved), _comparable(config_dict), _comparable(defaults)
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a and key in base and b.get(key) == base[key]:
            continue  # a field added since the workdir's run, at its default
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"config.{key}: {a.get(key, '<unset>')!r} in the workdir, "
                       f"{b.get(key, '<unset>')!r} now")
    return out


def prepare(workdir: str, config, chief: bool = True) -> None:
    """Checks the workdir against `config` and records the config.

    Raises:
        WorkdirError: the workdir is a file, or holds a run with another
            config (and ``config.resume`` is True).
    """
    check_workdir(workdir)
    path = os.path.join(workdir, "config.json")
    config_dict = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise WorkdirError(
                f"{path} is damaged ({e}); delete it, or rerun with "
                f"--config.resume=False to start over in {workdir}."
            ) from None
        differences = config_differences(saved, config_dict)
        if differences and config.resume:
            raise WorkdirError(
                f"--workdir={workdir} holds a run with another config: "
                + "; ".join(differences)
                + ". Use a new --workdir, rerun with the old values, or pass "
                "--config.resume=False to delete that run and start over."
            )
    if not config.resume and chief:
        reset(workdir)
    if chief:
        write_json(path, config_dict)


def forget_unstarted_run(workdir: str) -> bool:
    """Deletes ``config.json`` of a run that failed before writing any output; True if it did.

    A run that fails before its first backup, path or summary (a bad
    argument found when training starts, data that cannot load) leaves
    nothing to resume, but its ``config.json`` would refuse the corrected
    config in the same workdir. Only the log and TensorBoard events (what
    the failure was) stay. A workdir holding any other run output keeps its
    config, so what is there still resumes or is refused as before.
    """
    keep = ("config.json", "tensorboard")
    if any(os.path.exists(os.path.join(workdir, name)) for name in RUN_OUTPUTS if name not in keep):
        return False
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        os.remove(path)
        logging.info("The run failed before writing any output: removed %s.", path)
    return True


def reset(workdir: str) -> None:
    """Deletes a previous run's outputs (not exports) from `workdir`."""
    for name in RUN_OUTPUTS:
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
    logging.info("config.resume=False: started %s over.", workdir)


def finite_json(obj):
    """`obj` with every NaN/inf float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_summary(workdir: str, summary: dict) -> str:
    """Writes ``summary.json`` atomically, strict JSON."""
    path = os.path.join(workdir, "summary.json")
    write_json(path, finite_json(summary))
    return path


def log_to_file(workdir: str) -> std_logging.Handler:
    """Copies the absl log (INFO and up) to ``<workdir>/train.log``; returns the handler."""
    handler = std_logging.FileHandler(os.path.join(workdir, "train.log"))
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(std_logging.INFO)
    logging.get_absl_logger().addHandler(handler)
    return handler

"""Atomic, double-buffered backups of a training run, and their restore.

`Backup` writes, at the end of every epoch ``e``, ``epoch-<e>.weights.h5``
(the model's and the optimizer's variables, `keras.Model.save_weights`) and
then ``epoch-<e>.json`` (the epoch, the size and SHA-256 of the weights file,
and the metric history so far). Each file is written to a temporary name,
flushed to disk and renamed into place, and the JSON file — the commit
marker — comes last, so a kill at any moment leaves every committed backup
intact. The previous backup is kept (double buffering) and older ones are
deleted.

`restore` (called before training, so the data stream can start at the
restored step) loads the newest backup whose JSON parses and whose weights
file matches its checksum; a damaged one is reported and skipped for the
previous one. If backups exist but none is usable, it raises an error that
names the files and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Optional

import keras
from absl import logging

_NAME = re.compile(r"^epoch-(\d+)\.json$")


class BackupError(RuntimeError):
    """The backups in a workdir exist but none can be restored."""


def _fsync_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    """Writes `obj` as strict JSON (no NaN), atomically."""
    _fsync_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


def committed_epochs(directory: str) -> list:
    """Epochs with a JSON commit marker in `directory`, newest first."""
    if not os.path.isdir(directory):
        return []
    epochs = [int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m]
    return sorted(epochs, reverse=True)


def build_optimizer(model) -> None:
    """Creates the optimizer's variables so that they can be loaded."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)


def restore(model, directory: str) -> tuple:
    """Loads the newest usable backup into `model` (weights and optimizer state).

    Returns:
        ``(epochs done, history dict)``; ``(0, {})`` when there is no backup.

    Raises:
        BackupError: backups exist but every one is damaged.
    """
    epochs = committed_epochs(directory)
    leftovers = [
        f for f in (os.listdir(directory) if os.path.isdir(directory) else [])
        if f.endswith(".h5") or f == "training_metadata.json"
    ]
    if not epochs:
        if leftovers:
            logging.warning(
                "backup folder %s holds %s but no committed backup (a kill during the "
                "first backup, or Keras' BackupAndRestore format): training starts at "
                "epoch 1.", directory, sorted(leftovers),
            )
        return 0, {}
    build_optimizer(model)
    problems = []
    for epoch in epochs:
        meta_path = os.path.join(directory, f"epoch-{epoch}.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("epoch") != epoch:
                raise ValueError(f"it says epoch {meta.get('epoch')!r} but is named for epoch "
                                 f"{epoch}: the marker was changed")
            weights = os.path.join(directory, meta["weights"])
            if os.path.getsize(weights) != meta["size"] or _sha256(weights) != meta["sha256"]:
                raise ValueError(f"{weights} does not match its checksum (truncated or changed)")
            model.load_weights(weights)
        except Exception as e:  # noqa: BLE001 — any damage: try the previous one
            problems.append(f"{meta_path}: {type(e).__name__}: {e}")
            logging.warning("backup of epoch %d is damaged, trying the previous one: %s",
                            epoch, problems[-1])
            continue
        logging.info("Restored the backup of epoch %d from %s", epoch, directory)
        return int(meta["epoch"]), dict(meta.get("history", {}))
    raise BackupError(
        f"No usable backup in {directory}: " + "; ".join(problems) + ". Delete the "
        f"folder {directory} to start the run over (or rerun with "
        f"--config.resume=False, which does that)."
    )


class Backup(keras.callbacks.Callback):
    """Writes an atomic backup at the end of every epoch (keeps the last two).

    Args:
        directory: the backup folder (``<workdir>/backup``).
        history: the metric history restored with the last backup; new epochs
            are appended and stored with each backup.
        write: `False` on non-chief workers (they only restore).
    """

    def __init__(self, directory: str, history: Optional[dict] = None, write: bool = True):
        super().__init__()
        self.directory = directory
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            try:
                self.history.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                continue
        if not self.write:
            return
        os.makedirs(self.directory, exist_ok=True)
        done = epoch + 1
        name = _weights_name(done)
        path = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{name}")
        self.model.save_weights(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        meta = {
            "epoch": done, "weights": name, "size": os.path.getsize(path),
            "sha256": _sha256(path),
            "history": {k: [v if v == v and abs(v) != float("inf") else None for v in vals]
                        for k, vals in self.history.items()},
        }
        write_json(os.path.join(self.directory, f"epoch-{done}.json"), meta)
        self._prune(keep=2)

    def _prune(self, keep: int) -> None:
        epochs = committed_epochs(self.directory)
        keep_names = set()
        for epoch in epochs[:keep]:
            keep_names |= {f"epoch-{epoch}.json", _weights_name(epoch)}
        for name in os.listdir(self.directory):
            stale_tmp = name.startswith(".tmp-") and not name.startswith(f".tmp-{os.getpid()}-")
            old = (name.startswith("epoch-") and name not in keep_names)
            if stale_tmp or old or name in ("latest.weights.h5", "training_metadata.json"):
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass

"""The regularization path of a sparse run: per-unit ‖Γ_g‖ and ‖W_g‖ along training.

`RegularizationPath` is a Keras callback that records, every ``every_steps``
training steps (and at step 0), the norm of each output unit (conv filter,
dense neuron) of every coupled kernel, for Γ and for W, and the number of
weights in the support, and writes them to ``path.npz``; `plot_path` draws
them like Figure 1 of the DessiLBI paper (Fu et al., ICML 2020): unit norm
against (fractional) epoch, the units in the final support of Γ in one colour
and the others in another, so one sees the important filters enter the
support early (inverse scale space). Models with mask wrappers (Continuous
Sparsification gates, fixed masks) are recorded too: W and W ⊙ mask, the
kept units as support.

``path.npz`` holds ``steps`` (global steps) and ``epochs`` (fractional
epochs, step / steps_per_epoch) and, per layer ``L``: ``L/gamma`` and ``L/w``
of shape ``(records, units)``, ``L/kept`` (weights in the support per
record) and ``L/total`` (weights of the kernel).
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np

from tf_dessilbi import walk
from tf_dessilbi.masks import unit_norms
from tf_dessilbi.training.path_plot import load_path
from tf_dessilbi.training.path_plot import plot_path  # noqa: F401  (re-export)


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def coupled_kernels(model: keras.Model, optimizer) -> list:
    """``(layer_name, W, Γ)`` NumPy arrays for every kernel the optimizer couples.

    Args:
        model: the trained model.
        optimizer: a built `tf_dessilbi.DessiLBI` (possibly wrapped in a
            `LossScaleOptimizer`), or ``None``.

    Returns:
        A list, empty when `optimizer` has no Γ.
    """
    optimizer = _unwrap(optimizer)
    if optimizer is None or not hasattr(optimizer, "gamma") or not getattr(optimizer, "built", False):
        return []
    out = []
    for layer, variable, _ in walk.sparsifiable(model):
        try:
            gamma = optimizer.gamma(variable)
        except (ValueError, KeyError):
            continue
        if gamma is None:
            continue
        out.append((layer.name, keras.ops.convert_to_numpy(variable),
                    keras.ops.convert_to_numpy(gamma)))
    return out


def gated_kernels(model: keras.Model) -> list:
    """``(wrapper name, W, W ⊙ kept mask)`` for every mask wrapper (gates, fixed masks)."""
    out, seen = [], set()
    for layer in walk.layers(model):
        if id(layer) in seen or not isinstance(layer, keras.layers.Wrapper):
            continue
        variable = getattr(layer, "weight_variable", None)
        if variable is None or not hasattr(layer, "kept_mask"):
            continue
        seen.add(id(layer))
        kernel = keras.ops.convert_to_numpy(variable)
        mask = np.broadcast_to(np.asarray(layer.kept_mask(), bool), kernel.shape)
        out.append((layer.name, kernel, np.where(mask, kernel, 0.0)))
    return out


class RegularizationPath(keras.callbacks.Callback):
    """Records per-unit ‖Γ_g‖ and ‖W_g‖ every N steps; writes path.npz (and path.png).

    Args:
        workdir: folder for ``path.npz`` and ``path.png``.
        optimizer: the `DessiLBI` optimizer. Defaults to the model's.
        plot: redraw ``path.png`` at the end of every epoch. Defaults to `True`.
        every_steps: record every this many global steps; 0 records at the
            end of every epoch only. Defaults to `0`.
        steps_per_epoch: for the fractional-epoch axis. Defaults to `0`
            (read from the training loop's ``params["steps"]``).

    The recorded history survives restarts from a backup: it is reloaded
    from ``path.npz`` when training starts, and records after the restored
    step are dropped.
    """

    def __init__(self, workdir: str, optimizer=None, plot: bool = True,
                 every_steps: int = 0, steps_per_epoch: int = 0):
        super().__init__()
        self.workdir = workdir
        self.optimizer = optimizer
        self.plot = plot
        self.every_steps = int(every_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.npz_path = os.path.join(workdir, "path.npz")
        self.png_path = os.path.join(workdir, "path.png")
        self.steps = []
        self.history = {}  # layer -> {"gamma": [..], "w": [..], "kept": [..], "total": int}

    def _optimizer(self):
        return self.optimizer or getattr(self.model, "optimizer", None)

    def _step(self) -> int:
        optimizer = _unwrap(self._optimizer())
        return int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else 0

    def on_train_begin(self, logs=None):
        if not self.steps_per_epoch:
            self.steps_per_epoch = int((self.params or {}).get("steps") or 1)
        if os.path.exists(self.npz_path):
            self.steps, self.history = load_path(self.npz_path)[1:]
        optimizer = self._optimizer()
        if optimizer is not None and not optimizer.built:  # Γ at step 0
            optimizer.build(self.model.trainable_variables)
        now = self._step()
        keep = [i for i, s in enumerate(self.steps) if s <= now]
        self.steps = [self.steps[i] for i in keep]
        for rec in self.history.values():
            for key in ("gamma", "w", "kept"):
                rec[key] = [rec[key][i] for i in keep]
        if not self.steps or self.steps[-1] < now:
            self._record(now)

    def _kernels(self):
        return coupled_kernels(self.model, self._optimizer()) or gated_kernels(self.model)

    def _record(self, step: int) -> None:
        kernels = self._kernels()
        if not kernels:
            return
        self.steps.append(step)
        for name, w, g in kernels:
            rec = self.history.setdefault(name, {"gamma": [], "w": [], "kept": [], "total": w.size})
            rec["gamma"].append(unit_norms(g))
            rec["w"].append(unit_norms(w))
            rec["kept"].append(int(np.count_nonzero(g)))

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps:
            step = self._step()
            if step % self.every_steps == 0 and (not self.steps or self.steps[-1] < step):
                self._record(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        if not self.steps or self.steps[-1] < step:
            self._record(step)
        if not self.steps:
            return
        save_path(self.npz_path, self.steps, self.history, self.steps_per_epoch)
        if self.plot:
            plot_path(self.npz_path, self.png_path)


def save_path(filename: str, steps: Sequence[int], history: dict, steps_per_epoch: int = 1) -> None:
    """Writes the recorded path to `filename` (``.npz``), atomically."""
    arrays = {
        "steps": np.asarray(steps, dtype=np.int64),
        "epochs": np.asarray(steps, dtype=np.float64) / max(steps_per_epoch, 1),
        "steps_per_epoch": np.asarray(steps_per_epoch, dtype=np.int64),
    }
    for name, rec in history.items():
        arrays[f"{name}/gamma"] = np.stack(rec["gamma"]).astype(np.float32)
        arrays[f"{name}/w"] = np.stack(rec["w"]).astype(np.float32)
        kept = rec.get("kept") or [int(np.count_nonzero(g)) for g in rec["gamma"]]
        arrays[f"{name}/kept"] = np.asarray(kept, dtype=np.int64)
        arrays[f"{name}/total"] = np.asarray(rec.get("total", 0), dtype=np.int64)
    tmp = filename + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, filename)

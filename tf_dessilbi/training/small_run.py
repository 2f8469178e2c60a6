"""The CLI's fine-tune on the physically small model (``config.fork.shrink``).

With a DessiLBI fine-tune (`WStarFinetune`) on, the run trains the big model
up to the first epoch end at or after the fork, then switches to the shrunk
model (`tf_dessilbi.procedures.shrink_switch.switch_to_small`: the optimizer
state carried over, the frozen support kept by `FixedMaskProjection`) and
trains it for the remaining epochs in a second ``fit``, with the run's
callbacks rebuilt for it: the backups (one `Backup`, its history going on),
TensorBoard (the global step is the carried optimizer's), the path recorder
(`WidePath`: the small model's units written back at their big-model
positions, so ``path.npz`` keeps one width) and the epoch log. The export is
that model (no second shrink).

Backups and kills: at the switch the big model's state is saved once as
``backup/switch-<e>.weights.h5`` and committed by ``backup/switch.json``; a
run resumed from a later (small) backup replays the switch from that file,
deterministically, and loads the small backup into its result, so it ends as
the uninterrupted run does. A kill during the switch leaves the big backup
of epoch e as the newest: the resumed run restores it and switches again
at once (its fork is due), as the uninterrupted run did.

Where the switch is off (the reason is logged): ``finetune_shrink=False``,
an elementwise structure (no whole units to remove), MultiWorker (the
custom loop), early tickets (their snapshots are full-width), mixed_float16
(its LossScaleOptimizer).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
from absl import logging

from tf_dessilbi.dessilbi import finetune as finetune_lib
from tf_dessilbi import sparsity as sparsity_lib
from tf_dessilbi.procedures import shrink_switch
from tf_dessilbi.training import backup as backup_lib
from tf_dessilbi.training import dessilbi_config
from tf_dessilbi.training import methods as methods_lib
from tf_dessilbi.training import path as path_lib
from tf_dessilbi.training.callbacks import FinetuneLog

SWITCH_JSON = "switch.json"
NO_FINETUNE = "no DessiLBI fine-tune"


def off_reason(config) -> Optional[str]:
    """Why the run's fine-tune stays masked on the big model, or ``None`` when it switches."""
    if methods_lib.method_name(config) != "dessilbi" or not dessilbi_config.fork_on(config):
        return NO_FINETUNE
    if not config.fork.shrink:
        return "fork.shrink=False"
    if config.dessilbi.structure == "elementwise":
        return "an elementwise structure removes no whole unit"
    if config.strategy == "multi_worker":
        return "MultiWorker trains through the custom loop"
    if config.early_tickets.epochs:
        return "early tickets snapshot the full-width support"
    if config.mixed_precision == "mixed_float16":
        return "mixed_float16 wraps the optimizer in a LossScaleOptimizer"
    return None


def find_finetune(callbacks) -> Optional[finetune_lib.WStarFinetune]:
    for callback in callbacks:
        if isinstance(callback, finetune_lib.WStarFinetune):
            return callback
    return None


class WidePath(path_lib.RegularizationPath):
    """`RegularizationPath` on the small model, recording at the big model's widths.

    Each kernel's W and Γ are written back at the positions of the units
    and input rows the small model kept (zeros elsewhere, which is what
    the masked fine-tune's W* and Γ hold there), so ``path.npz`` goes on
    with the arrays it started with. One difference: a consumer unit's
    ‖W_g‖₂ no longer counts its rows that read removed channels, which the
    masked run keeps (dead weights: their inputs are 0).
    """

    def __init__(self, *args, switch=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.switch = switch

    def _kernels(self):
        kernels = super()._kernels()
        out = []
        for name, w, g in kernels:
            out.append((name, self._widen(name, w), self._widen(name, g)))
        return out

    def _widen(self, name, array):
        kept = self.switch.report.kept.get(name)
        shape = self.switch.big_shapes.get(name)
        if kept is None or shape is None:
            return array
        wide = np.zeros(shape, array.dtype)
        keep_in, keep_out = kept
        index = (Ellipsis, keep_out) if len(shape) < 2 else (
            (slice(None),) * (len(shape) - 2) + (np.asarray(keep_in)[:, None],
                                                 np.asarray(keep_out)[None, :]))
        wide[index] = array
        return wide


def _big_shapes(model, optimizer) -> dict:
    return {name: w.shape for name, w, _ in path_lib.coupled_kernels(model, optimizer)}


def _switch_now(model, finetune, epoch, fresh):
    """Starts the fine-tune at ``epoch`` on the big model and switches; μ₀ back on the big one."""
    if fresh:
        finetune.set_model(model)
        finetune.on_train_begin()
    big_shapes = _big_shapes(model, model.optimizer)
    finetune.on_epoch_begin(epoch)  # starts it (or decouples again) and projects onto W*
    try:
        # supp Γ is fixed from here on: the big model's report is the masked run's final one
        sparsity = sparsity_lib.sparsity_report(model, model.optimizer)
        switch = shrink_switch.switch_to_small(model, prune_bias=finetune.prune_bias)
    finally:
        finetune.on_train_end()
    switch.sparsity = sparsity
    switch.epoch = epoch
    switch.big_shapes.update(big_shapes)
    logging.info("Switched to the small model at epoch %d (step %d): parameters %d -> %d, "
                 "MACs %d -> %d.", epoch, switch.step, switch.report.params_before,
                 switch.report.params_after, switch.report.macs_before, switch.report.macs_after)
    return switch


def _switch_files(directory, epoch):
    return (os.path.join(directory, SWITCH_JSON),
            os.path.join(directory, f"switch-{epoch:04d}.weights.h5"))


def _record_switch(directory, model, epoch) -> None:
    """Saves the big model's state before the switch, then commits it (switch.json last)."""
    os.makedirs(directory, exist_ok=True)
    meta_path, weights = _switch_files(directory, epoch)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(weights)}")
    model.save_weights(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, weights)
    backup_lib.write_json(meta_path, {"epoch": epoch, "weights": os.path.basename(weights),
                                      "sha256": backup_lib._sha256(weights)})


def restore(config, model, directory, finetune) -> tuple:
    """``(model, epochs done, history, switch)``: `backup.restore`, switch-aware.

    When the newest committed backup is later than a committed switch, the
    switch is replayed from its saved big state and the backup is loaded
    into the small model it gives.
    """
    meta_path = os.path.join(directory, SWITCH_JSON)
    newest = (backup_lib.committed_epochs(directory) or [0])[0]
    if finetune is None or off_reason(config) or not os.path.exists(meta_path):
        return (model, *backup_lib.restore(model, directory), None)
    with open(meta_path) as f:
        meta = json.load(f)
    epoch = int(meta["epoch"])
    if newest <= epoch:
        return (model, *backup_lib.restore(model, directory), None)
    weights = os.path.join(directory, meta["weights"])
    if backup_lib._sha256(weights) != meta["sha256"]:
        raise backup_lib.BackupError(f"{weights} does not match {meta_path}: delete {directory} "
                                     "to start the run over.")
    backup_lib.build_optimizer(model)
    model.load_weights(weights)
    switch = _switch_now(model, finetune, epoch, fresh=True)
    done, history = backup_lib.restore(switch.model, directory)
    return switch.model, done, history, switch


def fit(config, workdir, chief, model, data, steps_per_epoch, initial_epoch, callbacks,
        make_callbacks, backup, switch=None):
    """The run's fit in two parts; returns ``(model trained last, history, switch or None)``.

    Args:
        make_callbacks: ``f(model, method, initial_epoch) -> list``: the run's
            callbacks for the small model (train's ``_callbacks``).
        switch: a `Switch` from `restore` (the run resumes on the small model).
    """
    fit_kwargs = dict(epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
                      validation_data=data.eval, validation_steps=config.eval_steps or None,
                      verbose=config.verbose, shuffle=False)
    history = None
    if switch is None:
        finetune = find_finetune(callbacks)
        directory = os.path.join(workdir, "backup")
        start = finetune.start_epoch
        if start is not None and initial_epoch >= start:
            epoch = initial_epoch  # the fork is due (a fine-tune from step 0, or a resumed run)
        else:
            stop = shrink_switch.StopAtFork(finetune)
            big = model.fit(data.train_from(initial_epoch * steps_per_epoch),
                            initial_epoch=initial_epoch, callbacks=callbacks + [stop], **fit_kwargs)
            history = big.history
            if stop.epoch is None or stop.epoch >= config.num_epochs:
                return model, history, None
            epoch = stop.epoch
        if backup is not None and chief:
            _record_switch(directory, model, epoch)
        switch = _switch_now(model, finetune, epoch, fresh=history is None)
        for callback in callbacks:  # train.log's line on the fixed support, as the masked run's
            if isinstance(callback, FinetuneLog) and callback.finetune is finetune:
                callback.set_model(model)
                callback.on_epoch_begin(epoch)
    small = switch.model
    method = methods_lib.Method(callbacks=lambda *_: [switch.projection()])
    small_callbacks = []
    for callback in make_callbacks(small, method, switch.epoch if history is not None
                                   else initial_epoch):
        if isinstance(callback, path_lib.RegularizationPath):
            callback = WidePath(callback.workdir, plot=callback.plot,
                                every_steps=callback.every_steps,
                                steps_per_epoch=callback.steps_per_epoch, switch=switch)
        small_callbacks.append(callback)
    start = max(initial_epoch, switch.epoch)
    second = small.fit(data.train_from(start * steps_per_epoch), initial_epoch=start,
                       callbacks=small_callbacks, **fit_kwargs)
    merged = {k: list(v) for k, v in (history or {}).items()}
    for key, values in second.history.items():
        merged.setdefault(key, []).extend(values)
    return small, merged, switch


def summary_of(switch) -> dict:
    return {"epoch": int(switch.epoch), "step": int(switch.step),
            "params_before": int(switch.report.params_before),
            "params_after": int(switch.report.params_after),
            "macs_before": int(switch.report.macs_before),
            "macs_after": int(switch.report.macs_after)}


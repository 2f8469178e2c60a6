"""`train_and_evaluate(config, workdir)`: one training run of the CLI.

The workdir receives: ``config.json`` (a later run there resumes only with
the same config); ``train.log``; ``tensorboard/`` (per-step and per-epoch
scalars, sparsity, histograms); ``path.npz`` / ``path.png`` (the
regularization path); ``backup/`` (atomic backups: a killed run started again
with the same command resumes at its last finished epoch and ends exactly
as the uninterrupted run would); ``early_tickets/``; ``export/<version>/``
(the stripped SavedModel); and ``summary.json`` (final metrics, sparsity,
the full history, warnings).

A run stops with `NonFiniteError` at the first NaN/inf loss, before anything
non-finite is backed up or exported. A layer that keeps no weight at all
("dead": its outputs no longer depend on its inputs) is reported in the log,
the sparsity table and ``summary.json["dead_layers"]``, and the export is
refused unless ``config.outputs.allow_dead_export``.
"""

from __future__ import annotations

import os
import time

import keras
import ml_collections
from absl import logging

from tf_dessilbi.procedures import early_tickets as tickets_lib
from tf_dessilbi.training import backup as backup_lib
from tf_dessilbi.training import config_lib
from tf_dessilbi.training import custom_loop
from tf_dessilbi.training import exports as exports_lib
from tf_dessilbi.training import input_pipeline
from tf_dessilbi.training import methods as methods_lib
from tf_dessilbi.training import small_run
from tf_dessilbi.training import workdir as workdir_lib
from tf_dessilbi.training.callbacks import EpochLog
from tf_dessilbi.training.callbacks import NonFiniteError
from tf_dessilbi.training.callbacks import StopOnNonFinite
from tf_dessilbi.training.callbacks import all_finite
from tf_dessilbi.training.components import STRATEGIES
from tf_dessilbi.training.components import build_model
from tf_dessilbi.training.components import build_optimizer
from tf_dessilbi.training.components import evaluate_model
from tf_dessilbi.training.components import is_chief
from tf_dessilbi.training.components import learning_rate_schedule


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def _callbacks(config, workdir, chief, steps_per_epoch, initial_epoch, method, model, backup,
               eval_data):
    from tf_dessilbi.dessilbi.w_star import apply_w_star
    from tf_dessilbi.training import path as path_lib
    from tf_dessilbi.training import summaries

    w_star_eval = None
    if methods_lib.method_name(config) == "dessilbi" and config.strategy != "multi_worker":
        def w_star_eval():
            with apply_w_star(model, model.optimizer):
                return evaluate_model(model, eval_data, config.eval_steps)

    cbs = [StopOnNonFinite(steps_per_epoch, initial_epoch, config), EpochLog(config.num_epochs)]
    if method.callbacks is not None:
        cbs += list(method.callbacks(config, model, steps_per_epoch))
    if chief and config.outputs.tensorboard:
        cbs.append(summaries.SparsitySummaries(
            os.path.join(workdir, "tensorboard"), config.outputs.histograms,
            every_steps=config.outputs.summary_every_steps, config=config,
            w_star_eval=w_star_eval,
        ))
    if chief and config.outputs.path:
        every = max(config.num_epochs * steps_per_epoch // max(config.outputs.path_points, 1), 1)
        cbs.append(path_lib.RegularizationPath(
            workdir, every_steps=every, steps_per_epoch=steps_per_epoch,
        ))
    if config.early_tickets.epochs:
        rewind = config.early_tickets.rewind_epoch if config.early_tickets.rewind == "epoch" else 0
        cbs.append(tickets_lib.SupportSnapshots(
            os.path.join(workdir, "early_tickets"), config.early_tickets.epochs, rewind,
        ))
    if backup is not None:
        cbs.append(backup)  # last: everything above has seen the epoch
    return cbs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates the model described by `config`, writing to `workdir`.

    Args:
        config: a training config (see `tf_dessilbi.training.config_lib.base_config`).
        workdir: output folder; an unfinished run there (same config) is resumed.

    Returns:
        The summary also written to ``<workdir>/summary.json``.

    Raises:
        ValueError: an invalid config (`config_lib.ConfigError`) or a workdir
            that cannot hold the run (`workdir.WorkdirError`), before
            anything is built.
        NonFiniteError: the loss became NaN/inf (nothing non-finite saved).
        BackupError: the backups exist but are all damaged.
    """
    config_lib.validate(config)
    method = methods_lib.get(config)
    start = time.time()
    strategy = STRATEGIES[config.strategy](config)
    chief = is_chief(strategy)
    fresh = not os.path.exists(os.path.join(workdir, "config.json"))
    workdir_lib.prepare(workdir, config, chief)
    handler = workdir_lib.log_to_file(workdir) if chief else None
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.mixed_precision)
    try:
        data = input_pipeline.get_datasets(
            config.data, config.batch_size, config.eval_batch_size, config.seed
        )
        steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
        logging.info(
            "%s (%s): %d train / %d eval examples, %d steps per epoch, %d replicas",
            config.data.name, methods_lib.method_name(config), data.num_train,
            data.num_eval, steps_per_epoch, strategy.num_replicas_in_sync,
        )
        if method.run is not None:
            summary = method.run(config, workdir, data, strategy)
            model, optimizer = summary.pop("model", None), None
            if model is not None and not isinstance(model, keras.Model):
                raise TypeError(
                    f"method {methods_lib.method_name(config)!r}: its run hook must return the "
                    f"final keras.Model under summary['model'] (or no such entry). Received: "
                    f"{type(model).__name__} {model!r}")
        else:
            summary, model, optimizer = _fit(config, workdir, strategy, chief, data,
                                             steps_per_epoch, method)
        summary = {**_header(config, workdir, strategy, chief, steps_per_epoch), **summary}
        _finish(config, workdir, chief, summary, model, optimizer, data)
        summary["time_s"] = time.time() - start
        if chief:
            workdir_lib.write_summary(workdir, summary)
        return summary
    except BaseException:
        if fresh and chief:
            workdir_lib.forget_unstarted_run(workdir)
        raise
    finally:
        keras.config.set_dtype_policy("float32")
        if handler is not None:
            logging.get_absl_logger().removeHandler(handler)
            handler.close()


def _header(config, workdir, strategy, chief, steps_per_epoch) -> dict:
    return {
        "workdir": os.path.abspath(workdir),
        "method": methods_lib.method_name(config),
        "model": config.model.name,
        "dataset": config.data.name,
        "optimizer": config.optimizer.name,
        "gates": bool(config.gates.enabled),
        "epochs": config.num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "replicas": int(strategy.num_replicas_in_sync),
        "strategy": config.strategy,
        "mixed_precision": config.mixed_precision,
        "chief": chief,
    }


def _fit(config, workdir, strategy, chief, data, steps_per_epoch, method):
    from tf_dessilbi.sparsity import sparsity_report

    with strategy.scope():
        model = build_model(config, data.input_shape, data.num_classes)
        if method.prepare is not None:
            model = method.prepare(config, model, data, steps_per_epoch)
        model.compile(
            optimizer=build_optimizer(config, model, steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=config.jit_compile,
        )
        initial_weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
        backup_lib.build_optimizer(model)  # Γ exists from step 0 (path, backups)
        initial_epoch, history, backup, switch = 0, {}, None, None
        if config.outputs.backup:
            backup_dir = os.path.join(workdir, "backup")
            finetune = small_run.find_finetune(
                method.callbacks(config, model, steps_per_epoch) if method.callbacks else [])
            model, initial_epoch, history, switch = small_run.restore(config, model, backup_dir,
                                                                      finetune)
            backup = backup_lib.Backup(backup_dir, history, write=chief)
    if initial_epoch:
        logging.info("Resuming after epoch %d of %d.", initial_epoch, config.num_epochs)
    callbacks = _callbacks(config, workdir, chief, steps_per_epoch, initial_epoch, method,
                           model, backup, data.eval)
    train = data.train_from(initial_epoch * steps_per_epoch)
    masked_because = small_run.off_reason(config)
    if masked_because and masked_because != small_run.NO_FINETUNE:
        logging.info("The W* fine-tune trains the full-width model (masked): %s.", masked_because)
    if config.strategy == "multi_worker":  # Keras 3 fit can't: see custom_loop
        fit_history = custom_loop.fit(
            model, train, data.eval, config.num_epochs, steps_per_epoch,
            strategy, callbacks, config.eval_steps or None, config.verbose,
            config.jit_compile, initial_epoch=initial_epoch,
        )

        def evaluate():
            return custom_loop.evaluate(model, data.eval, strategy, config.eval_steps or None)
    elif masked_because is None:  # the fine-tune on the small model
        model, merged, switch = small_run.fit(
            config, workdir, chief, model, data, steps_per_epoch, initial_epoch, callbacks,
            lambda small, hooks, epoch: _callbacks(config, workdir, chief, steps_per_epoch, epoch,
                                                   hooks, small, backup, data.eval),
            backup, switch)
        fit_history = keras.callbacks.History()
        fit_history.history = merged

        def evaluate():
            return evaluate_model(model, data.eval, config.eval_steps)
    else:
        fit_history = model.fit(
            train,
            epochs=config.num_epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=data.eval,
            validation_steps=config.eval_steps or None,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the pipeline shuffles (per pass, seeded)
        )

        def evaluate():
            return evaluate_model(model, data.eval, config.eval_steps)
    if not all_finite(model):
        raise NonFiniteError("Training ended with non-finite weights; nothing was exported.")
    history = backup.history if backup is not None else fit_history.history
    summary = {
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "eval": evaluate(),
    }
    if switch is not None:  # the model is the small one: the export shrinks nothing more
        summary["switch"] = small_run.summary_of(switch)
        summary["shrink"] = switch.report.to_dict()
    optimizer = model.optimizer
    # after a switch: supp Γ counted on the big model, as the masked fine-tune counts it
    report = switch.sparsity if switch is not None else sparsity_report(model, optimizer)
    summary["sparsity"] = report.to_dict()
    if method.finish is not None:
        summary.update(method.finish(config, model, evaluate))
    if config.early_tickets.epochs:
        summary["early_tickets"] = _early_tickets(
            config, workdir, strategy, data, steps_per_epoch, initial_weights
        )
    return summary, model, optimizer


def _finish(config, workdir, chief, summary, model, optimizer, data=None) -> None:
    """Dead-layer check, the sparsity table, shrinking, the export, the output paths."""
    from tf_dessilbi.export.saved_model import export_saved_model
    from tf_dessilbi.sparsity import sparsity_report

    table, dead = "", []
    report = None
    if model is not None:
        report = sparsity_report(model, optimizer)
    elif isinstance(summary.get("sparsity"), dict) and summary["sparsity"].get("layers"):
        # A run hook that keeps its model (imp, greedy) reports its sparsity as data.
        from tf_dessilbi.sparsity import SparsityReport, SparsityRow

        report = SparsityReport(SparsityRow(**row) for row in summary["sparsity"]["layers"])
    if report is not None:
        table = str(report) if len(report) else ""
        dead = report.empty_layers
    summary["dead_layers"] = dead
    if dead:
        warning = (
            f"WARNING: layer(s) {', '.join(dead)} keep no weight at all: the model's "
            f"outputs no longer depend on its inputs (constant logits). Train longer, "
            f"or lower the sparsity pressure (DessiLBI: --config.dessilbi.lambda_; "
            f"gates: --config.gates.penalty)."
        )
        logging.warning("%s", warning)
        table = (table + "\n" if table else "") + warning
    shrunk = None
    if model is not None and not dead and "switch" not in summary:
        shrunk = _shrink(config, model, _support_optimizer(optimizer))
        if shrunk is not None:
            summary["shrink"] = shrunk[1].to_dict()
            table = (table + "\n\n" if table else "") + str(shrunk[1])
    summary["sparsity_table"] = table
    if chief and config.outputs.export and model is not None:
        if dead and not config.outputs.allow_dead_export:
            summary["export_refused"] = (
                f"dead layers {dead}; pass --config.outputs.allow_dead_export=True to "
                f"export anyway"
            )
            logging.warning("Export refused: %s.", summary["export_refused"])
        else:
            # The shrunk model already holds W* (and the masks): export it as is.
            exported, opt = (shrunk[0], None) if shrunk is not None else (model, _support_optimizer(optimizer))
            if data is not None:  # every format of outputs.formats, each checked on the eval split
                summary["exports"] = exports_lib.export_all(config, workdir, exported, opt, data)
                summary["exports_table"] = exports_lib.table(summary["exports"])
                summary.update({"export_dir": f["path"] for f in summary["exports"]
                                if f["format"] == "saved_model"})
            elif "saved_model" in config.outputs.formats:
                summary["export_dir"] = os.path.abspath(export_saved_model(
                    exported, os.path.join(workdir, "export"), version=config.outputs.export_version,
                    overwrite=True, optimizer=opt, allow_dead=bool(dead),
                ))
    png = os.path.join(workdir, "path.png")
    if chief and config.outputs.path and os.path.exists(png):
        summary["path_png"] = os.path.abspath(png)


def _support_optimizer(optimizer):
    """The optimizer if it has a supp(Γ) (DessiLBI), else None."""
    return optimizer if optimizer is not None and hasattr(_unwrap(optimizer), "support") else None


def _shrink(config, model, optimizer):
    """``(shrunk model, ShrinkReport)`` per ``config.outputs.shrink``, or None.

    ``"auto"`` shrinks when the run removed whole units (filter / neuron
    supports, unit gates) and falls back to the unshrunk export, with a
    warning, when the model has a layer `shrink` cannot cut; ``"always"``
    shrinks (and fails loudly); ``"never"`` does not.
    """
    from tf_dessilbi import masks
    from tf_dessilbi.shrink import shrink

    mode = config.outputs.shrink
    if mode == "never":
        return None
    if mode == "auto" and not masks.resolve(None, model, optimizer=optimizer).units:
        return None
    try:
        return shrink(model, optimizer=optimizer, return_report=True)
    except ValueError as e:
        if mode == "always":
            raise
        logging.warning("Not shrinking the exported model: %s", e)
        return None


def _early_tickets(config, workdir, strategy, data, steps_per_epoch, initial_weights):
    t = config.early_tickets
    directory = os.path.join(workdir, "early_tickets")
    start = initial_weights
    if t.rewind == "epoch" and t.rewind_epoch > 0:
        start = tickets_lib.load_weights(tickets_lib.weights_file(directory, t.rewind_epoch))
    epochs = t.retrain_epochs or config.num_epochs
    results = {}
    for epoch in t.epochs:
        masks = tickets_lib.load_support(directory, epoch)
        with strategy.scope():
            result = tickets_lib.retrain_ticket(
                lambda: build_model(config, data.input_shape, data.num_classes),
                start, masks, data.train, data.eval, epochs, steps_per_epoch,
                make_optimizer=lambda: keras.optimizers.SGD(
                    learning_rate_schedule(config, steps_per_epoch),
                    momentum=config.optimizer.momentum,
                    nesterov=config.optimizer.nesterov,
                ),
                eval_steps=config.eval_steps or None,
                jit_compile=config.jit_compile,
            )
        if result["empty_layers"]:
            logging.warning(
                "early ticket from epoch %d is dead: the support is empty in %s; not retrained",
                epoch, ", ".join(result["empty_layers"]),
            )
        else:
            logging.info(
                "early ticket from epoch %d: accuracy %.4f with %d/%d weights",
                epoch, result["accuracy"], result["weights_kept"], result["weights_total"],
            )
        results[str(epoch)] = result
    return results

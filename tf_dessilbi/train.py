"""Train a sparse network from a config file.

    python -m tf_dessilbi.train --config=configs/fmnist_dessilbi.py \\
        --workdir=runs/fmnist_dessilbi [--config.optimizer.kappa=2 ...]

`train_and_evaluate(config, workdir)` does the work and is importable. The
workdir receives: ``config.json``; ``tensorboard/`` (scalars, sparsity,
histograms); ``path.npz`` / ``path.png`` (the regularization path, DessiLBI);
``backup/`` (BackupAndRestore: a killed run started again with the same
command resumes at its last finished epoch); ``early_tickets/``;
``export/<version>/`` (the stripped SavedModel); and ``summary.json`` (final
metrics and sparsity; for DessiLBI the accuracy of the dense W and of W*).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import keras
import ml_collections
from absl import logging

from tf_dessilbi import config_lib
from tf_dessilbi import custom_loop
from tf_dessilbi.procedures import early_tickets as tickets_lib
from tf_dessilbi import input_pipeline
from tf_dessilbi import models as models_lib
from tf_dessilbi.components import STRATEGIES
from tf_dessilbi.components import build_model
from tf_dessilbi.components import build_optimizer
from tf_dessilbi.components import gates_api
from tf_dessilbi.components import is_chief
from tf_dessilbi.components import learning_rate_schedule
from tf_dessilbi.dessilbi.w_star import apply_w_star
from tf_dessilbi.sparsity import sparsity_report
from tf_dessilbi.sparsity import unwrap_optimizer

class EpochLog(keras.callbacks.Callback):
    """Logs one line per epoch: metrics and the sparsity (units/weights kept)."""

    def __init__(self, num_epochs: int):
        super().__init__()
        self.num_epochs = num_epochs

    def on_epoch_end(self, epoch, logs=None):
        metrics = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
        logging.info(
            "epoch %d/%d: %s | %s", epoch + 1, self.num_epochs, metrics,
            sparsity_line(self.model),
        )


def sparsity_line(model) -> str:
    """``filters kept 40/112, weights kept 12.34%`` (or "dense")."""
    try:
        report = sparsity_report(model)
    except ValueError:
        return "sparsity n/a"
    if not len(report):
        return "dense"
    return (
        f"units kept {report.units_kept}/{report.units_total}, weights kept "
        f"{report.weights_kept}/{report.weights_total} "
        f"({100 * report.weight_fraction:.2f}%)"
    )


def _callbacks(config, workdir, chief, steps_per_epoch):
    from tf_dessilbi import path as path_lib
    from tf_dessilbi import summaries

    cbs = [EpochLog(config.num_epochs)]
    if config.outputs.backup:
        # Every worker restores the chief's backup, so all resume at the same
        # epoch; only the chief writes it.
        backup_cls = keras.callbacks.BackupAndRestore if chief else _RestoreOnly
        cbs.append(backup_cls(os.path.join(workdir, "backup"), delete_checkpoint=False))
    if config.gates.enabled:
        cbs.append(
            gates_api().callbacks.GateTemperature(
                final_beta=config.gates.final_beta,
                epochs=config.num_epochs,
                steps_per_epoch=steps_per_epoch,
                per_step=config.gates.per_step,
            )
        )
    if chief and config.outputs.tensorboard:
        cbs.append(
            summaries.SparsitySummaries(
                os.path.join(workdir, "tensorboard"), config.outputs.histograms
            )
        )
    if chief and config.outputs.path:
        cbs.append(path_lib.RegularizationPath(workdir))
    if config.early_tickets.epochs:
        rewind = config.early_tickets.rewind_epoch if config.early_tickets.rewind == "epoch" else 0
        cbs.append(
            tickets_lib.SupportSnapshots(
                os.path.join(workdir, "early_tickets"),
                config.early_tickets.epochs,
                rewind,
            )
        )
    return cbs


class _RestoreOnly(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` for non-chief workers: restores, never writes."""

    def _save_model(self):
        pass

    def on_train_end(self, logs=None):
        pass


def _evaluate(model, ds, steps):
    loss, accuracy = model.evaluate(ds, steps=steps or None, verbose=0)[:2]
    return {"loss": float(loss), "accuracy": float(accuracy)}


def _export(model, optimizer, workdir, version):
    try:
        from tf_dessilbi.export import export_saved_model
    except ImportError as e:
        raise RuntimeError(
            "config.outputs.export=True needs tf_dessilbi.export "
            f"(export_saved_model): {e}. Set --config.outputs.export=False."
        ) from e
    export_dir = os.path.join(workdir, "export")
    if not hasattr(unwrap_optimizer(optimizer), "support"):
        optimizer = None  # plain or gated model: nothing of Γ to apply
    return export_saved_model(
        model, export_dir, version=version, overwrite=True, optimizer=optimizer
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates the model described by `config`, writing to `workdir`.

    Args:
        config: a training config (see `tf_dessilbi.config_lib.base_config`).
        workdir: output folder; an unfinished run there is resumed.

    Returns:
        The summary also written to ``<workdir>/summary.json``.

    Raises:
        ValueError: an invalid config (before anything is built).
    """
    config_lib.validate(config)
    start = time.time()
    strategy = STRATEGIES[config.strategy](config)
    chief = is_chief(strategy)
    os.makedirs(workdir, exist_ok=True)
    if chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.mixed_precision)
    try:
        return _run(config, workdir, strategy, chief, start)
    finally:
        keras.config.set_dtype_policy("float32")


def _run(config, workdir, strategy, chief, start) -> dict:
    data = input_pipeline.get_datasets(
        config.data, config.batch_size, config.eval_batch_size, config.seed
    )
    steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    logging.info(
        "%s: %d train / %d eval examples, %d steps per epoch, %d replicas",
        config.data.name, data.num_train, data.num_eval, steps_per_epoch,
        strategy.num_replicas_in_sync,
    )

    def new_model():
        return build_model(config, data.input_shape, data.num_classes)

    if config.gates.enabled and config.gates.rounds > 1:
        return _ticket_search(config, workdir, strategy, chief, data, steps_per_epoch, start)

    with strategy.scope():
        model = new_model()
        optimizer = build_optimizer(config, model, steps_per_epoch)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=config.jit_compile,
        )
    initial_weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    callbacks = _callbacks(config, workdir, chief, steps_per_epoch)
    if config.strategy == "multi_worker":  # Keras 3 fit can't: see custom_loop
        history = custom_loop.fit(
            model, data.train, data.eval, config.num_epochs, steps_per_epoch,
            strategy, callbacks, config.eval_steps or None, config.verbose,
            config.jit_compile,
        )
        evaluate = lambda: custom_loop.evaluate(  # noqa: E731
            model, data.eval, strategy, config.eval_steps or None
        )
    else:
        history = model.fit(
            data.train,
            epochs=config.num_epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=data.eval,
            validation_steps=config.eval_steps or None,
            callbacks=callbacks,
            verbose=config.verbose,
        )
        evaluate = lambda: _evaluate(model, data.eval, config.eval_steps)  # noqa: E731
    summary = {
        "workdir": os.path.abspath(workdir),
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
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "eval": evaluate(),
    }
    optimizer = model.optimizer
    report = sparsity_report(model, optimizer)
    summary["sparsity"] = report.to_dict()
    if config.optimizer.name == "dessilbi":
        with apply_w_star(model, optimizer):
            summary["eval_w_star"] = evaluate()
    if config.gates.enabled:  # the hard mask 1[s > 0]/σ(s₀): the ticket
        gating = gates_api().gating
        gating.set_ticket_mode(model, True)
        summary["eval_ticket"] = evaluate()
    if config.early_tickets.epochs:
        summary["early_tickets"] = _early_tickets(
            config, workdir, strategy, data, steps_per_epoch, new_model, initial_weights
        )
    if chief and config.outputs.export:
        summary["export_dir"] = os.path.abspath(
            _export(model, optimizer, workdir, config.outputs.export_version)
        )
    if chief and config.outputs.path and os.path.exists(os.path.join(workdir, "path.png")):
        summary["path_png"] = os.path.abspath(os.path.join(workdir, "path.png"))
    summary["sparsity_table"] = str(report) if len(report) else ""
    summary["time_s"] = time.time() - start
    if chief:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _ticket_search(config, workdir, strategy, chief, data, steps_per_epoch, start) -> dict:
    """Continuous Sparsification with rounds and rewinding (`TicketSearch`).

    No `BackupAndRestore` here: a killed search starts again from round 0.
    """
    try:
        from tf_dessilbi.procedures.ticket_search import TicketSearch
    except ImportError as e:
        raise RuntimeError(
            f"config.gates.rounds={config.gates.rounds} needs "
            f"tf_dessilbi.ticket_search.TicketSearch: {e}"
        ) from e
    g = config.gates
    with strategy.scope():
        search = TicketSearch(
            lambda: models_lib.get_model(
                config.model.name, input_shape=data.input_shape,
                num_classes=data.num_classes,
                **({"weight_decay": config.model.weight_decay} if config.model.weight_decay else {}),
            ),
            lambda: build_optimizer(config, None, steps_per_epoch),
            rounds=g.rounds, epochs_per_round=config.num_epochs,
            rewind_epoch=g.rewind_epoch, final_beta=g.final_beta, penalty=g.penalty,
            per_step=g.per_step, granularity=g.granularity, gate_init=g.gate_init,
            jit_compile=config.jit_compile,
        )
        result = search.run(
            data.train, data.eval, verbose=config.verbose,
            callbacks=[EpochLog(config.num_epochs)], steps_per_epoch=steps_per_epoch,
        )
    model = result.model
    report = sparsity_report(model)
    summary = {
        "workdir": os.path.abspath(workdir),
        "model": config.model.name,
        "dataset": config.data.name,
        "optimizer": config.optimizer.name,
        "gates": True,
        "epochs": config.num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "replicas": int(strategy.num_replicas_in_sync),
        "strategy": config.strategy,
        "mixed_precision": config.mixed_precision,
        "chief": chief,
        "rounds": result.rounds,
        "history": {k: [float(x) for x in v] for k, v in result.ticket_history.items()},
        "eval": _evaluate(model, data.eval, config.eval_steps),
        "ticket_weight_fraction": result.weight_fraction,
        "sparsity": report.to_dict(),
        "sparsity_table": str(report) if len(report) else "",
    }
    summary["eval_ticket"] = summary["eval"]
    if chief and config.outputs.export:
        summary["export_dir"] = os.path.abspath(
            _export(model, None, workdir, config.outputs.export_version)
        )
    summary["time_s"] = time.time() - start
    if chief:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _early_tickets(config, workdir, strategy, data, steps_per_epoch, new_model, initial_weights):
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
                new_model, start, masks, data.train, data.eval, epochs,
                steps_per_epoch,
                make_optimizer=lambda: keras.optimizers.SGD(
                    learning_rate_schedule(config, steps_per_epoch),
                    momentum=config.optimizer.momentum,
                    nesterov=config.optimizer.nesterov,
                ),
                eval_steps=config.eval_steps or None,
                jit_compile=config.jit_compile,
            )
        logging.info(
            "early ticket from epoch %d: accuracy %.4f with %d/%d weights",
            epoch, result["accuracy"], result["weights_kept"], result["weights_total"],
        )
        results[str(epoch)] = result
    return results


def print_summary(summary: dict) -> None:
    """The CLI's closing lines: metrics, the sparsity table, output paths."""
    label = "soft gates" if summary["gates"] else "dense W"
    print(f"\naccuracy ({label}): {summary['eval']['accuracy']:.4f}")
    if "eval_w_star" in summary:
        print(f"accuracy (W* = W on supp Γ): {summary['eval_w_star']['accuracy']:.4f}")
    if "eval_ticket" in summary:
        print(f"accuracy (hard gate mask): {summary['eval_ticket']['accuracy']:.4f}")
    for epoch, result in summary.get("early_tickets", {}).items():
        print(f"early ticket (support at epoch {epoch}), retrained: {result['accuracy']:.4f}")
    if summary["sparsity_table"]:
        print("\n" + summary["sparsity_table"])
    if "export_dir" in summary:
        print(f"\nSavedModel: {summary['export_dir']}")
    if "path_png" in summary:
        print(f"regularization path: {summary['path_png']}")
    print(f"summary: {os.path.join(summary['workdir'], 'summary.json')}")


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    flags_ = flags.FLAGS
    summary = train_and_evaluate(flags_.config, flags_.workdir)
    if summary["chief"]:
        print_summary(summary)


def define_flags() -> None:
    """``--config`` (a config file, locked) and ``--workdir``."""
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file(
            "config", None, "Training config file (configs/*.py).", lock_config=True
        )
        flags.DEFINE_string("workdir", None, "Output folder (resumed if it exists).")
        flags.mark_flags_as_required(["config", "workdir"])


def run_main(argv: Optional[list] = None) -> None:
    """Console entry point (``tf-dessilbi-train``, ``python -m tf_dessilbi.train``)."""
    from absl import app

    define_flags()
    logging.set_verbosity(logging.INFO)
    app.run(main, argv=argv)


if __name__ == "__main__":
    run_main()

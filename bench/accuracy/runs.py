"""Training runs of the accuracy benchmark (Keras 3 side).

`fit` trains dense SGD or DessiLBI with a recorder that, after every epoch,
measures the test accuracy of W and (DessiLBI) of W* = W restricted to
supp Γ, and samples the support size `PATH_SAMPLES_PER_EPOCH` times per
epoch; `retrain_early_ticket` retrains supp Γ at an early epoch from the
initial weights with SGD (`tf_dessilbi.procedures.early_tickets`);
`add_ticket_epochs` adds such tickets to a finished run.
"""

from __future__ import annotations

import json
import time

from bench.accuracy import summary, tfmot
from bench.accuracy.config import load_config, log, sgd_config

PATH_SAMPLES_PER_EPOCH = 12


def make_accuracy_fn(model):
    """``accuracy(ds)``: the fraction of `ds` that `model` classifies right."""
    import tensorflow as tf

    @tf.function
    def correct(x, y):
        logits = model(x, training=False)
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.int32))

    def accuracy(ds):
        hits = total = 0
        for x, y in ds:
            hits += int(correct(x, y))
            total += int(y.shape[0])
        return hits / max(total, 1)

    return accuracy


def _support_counts(model, optimizer) -> dict:
    """Weights, units and conv filters in supp Γ (`tf_dessilbi.sparsity_report`)."""
    import tf_dessilbi

    report = tf_dessilbi.sparsity_report(model, optimizer)
    filters = [r for r in report.rows if r.structure == "filter"]
    return {
        "weight_fraction": report.weight_fraction,
        "weights_kept": report.weights_kept,
        "units_kept": report.units_kept,
        "units_total": report.units_total,
        "filters_kept": sum(r.units_kept for r in filters),
        "filters_total": sum(r.units_total for r in filters),
        "layers": {r.layer: [r.units_kept, r.units_total, r.weights_kept, r.weights_total]
                   for r in report.rows},
    }


class _Recorder:
    """Keras callback: per-epoch accuracy (W and W*) and the support path."""

    def __init__(self, keras, model, eval_ds, dessilbi: bool, ticket_epochs, every: int):
        import tf_dessilbi
        from tf_dessilbi.procedures import early_tickets

        self.cb = keras.callbacks.LambdaCallback(
            on_train_batch_end=self.on_batch, on_epoch_end=self.on_epoch
        )
        self.model = model
        self.eval_ds = eval_ds
        self.dessilbi = dessilbi
        self.ticket_epochs = set(ticket_epochs)
        self.every = max(every, 1)
        self.accuracy = make_accuracy_fn(model)
        self.tf_dessilbi = tf_dessilbi
        self.early_tickets = early_tickets
        self.step = 0
        self.out = {"acc_w": [], "acc_w_star": [], "support": [], "path": [], "epoch_weights": {}}
        self.masks = {}

    def on_batch(self, batch, logs=None):
        self.step += 1
        if self.dessilbi and self.step % self.every == 0:
            counts = _support_counts(self.model, self.model.optimizer)
            counts.pop("layers")
            self.out["path"].append({"step": self.step, **counts})

    def on_epoch(self, epoch, logs=None):
        epoch += 1
        self.out["acc_w"].append(self.accuracy(self.eval_ds))
        if not self.dessilbi:
            return
        opt = self.model.optimizer
        with self.tf_dessilbi.apply_w_star(self.model, opt):
            self.out["acc_w_star"].append(self.accuracy(self.eval_ds))
        self.out["support"].append(_support_counts(self.model, opt))
        if epoch in self.ticket_epochs:
            self.masks[epoch] = self.early_tickets.support_masks(self.model, opt)


def fit(config, data, steps_per_epoch: int, dessilbi: bool, ticket_epochs=()):
    """Trains dense SGD (``dessilbi=False``) or DessiLBI from ``config.seed``.

    Returns:
        ``(model, initial weights as NumPy arrays, recorder)``; the recorder's
        ``out`` holds the per-epoch accuracies, supports and support path,
        its ``masks`` the supp Γ masks at `ticket_epochs`.
    """
    import keras

    from tf_dessilbi.training import components as train
    from tf_dessilbi.training import methods

    keras.utils.set_random_seed(config.seed)
    model = train.build_model(config, data.input_shape, data.num_classes)
    initial = [keras.ops.convert_to_numpy(w) for w in model.weights]
    cfg = config if dessilbi else sgd_config(config)
    model.compile(
        optimizer=train.build_optimizer(cfg, model, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rec = _Recorder(keras, model, data.eval, dessilbi, ticket_epochs,
                    steps_per_epoch // PATH_SAMPLES_PER_EPOCH)
    # The config's DessiLBI phases (W* fine-tune, steady path), as the trainer adds them.
    extra = methods.get(config).callbacks(config, model, steps_per_epoch) if dessilbi else []
    t0 = time.time()
    model.fit(data.train, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
              callbacks=[*extra, rec.cb], verbose=0)
    rec.out["time_s"] = time.time() - t0
    return model, initial, rec


def retrain_early_ticket(config, data, steps_per_epoch: int, initial, masks, epoch) -> dict:
    """Retrains the ticket `masks` (supp Γ at `epoch`) from `initial` with SGD.

    Returns:
        `tf_dessilbi.procedures.early_tickets.retrain_ticket`'s result plus
        ``weight_fraction`` (weights kept / weights).
    """
    import keras

    from tf_dessilbi.training import components as train
    from tf_dessilbi.procedures import early_tickets

    keras.utils.set_random_seed(config.seed)
    sgd = sgd_config(config)
    result = early_tickets.retrain_ticket(
        lambda: train.build_model(config, data.input_shape, data.num_classes),
        initial, masks, data.train, data.eval, config.num_epochs, steps_per_epoch,
        make_optimizer=lambda: train.build_optimizer(sgd, None, steps_per_epoch),
    )
    result["weight_fraction"] = result["weights_kept"] / result["weights_total"]
    acc = "not retrained (a layer keeps nothing)" if result["accuracy"] is None else (
        f"{result['accuracy']:.4f}")
    log(f"seed {config.seed}: early ticket {epoch}: {acc} kept {result['weight_fraction']:.5f}")
    return result


def add_ticket_epochs(results_file: str, epochs) -> dict:
    """Adds early tickets at more epochs to a finished full run (same seeds and config).

    Re-runs DessiLBI with each seed up to the largest requested epoch (the
    learning-rate schedule of the run must not depend on the total epochs,
    which holds for the constant schedule), retrains the supports, trains
    TF-MOT at the same sparsities, and rewrites `results_file`.
    """
    import keras

    from tf_dessilbi.training import input_pipeline

    with open(results_file) as f:
        results = json.load(f)
    config, _ = load_config(quick=False)
    for key, value in results["config"]["optimizer"].items():
        config.optimizer[key] = value  # the hyperparameters the run used
    config.num_epochs = results["config"]["num_epochs"]
    if results["config"]["schedule"]["name"] != "constant":
        raise ValueError("add_ticket_epochs needs the constant schedule")
    specs = []
    for seed_out in results["seeds"]:
        cfg = config.copy_and_resolve_references()
        cfg.seed = seed_out["seed"]
        data = input_pipeline.get_datasets(cfg.data, cfg.batch_size, cfg.eval_batch_size, cfg.seed)
        spe = seed_out["steps_per_epoch"]
        short = cfg.copy_and_resolve_references()
        short.num_epochs = max(epochs)
        _, initial, rec = fit(short, data, spe, dessilbi=True, ticket_epochs=epochs)
        targets = {}
        for epoch in epochs:
            result = retrain_early_ticket(cfg, data, spe, initial, rec.masks[epoch], epoch)
            result["rerun"] = {
                "note": "support from a re-run of DessiLBI with the same seed",
                "w_star_acc_rerun": rec.out["acc_w_star"][epoch - 1],
                "w_star_acc_original": seed_out["dessilbi"]["acc_w_star"][epoch - 1],
                "kept_original": seed_out["dessilbi"]["support"][epoch - 1]["weight_fraction"],
            }
            seed_out["early_tickets"][str(epoch)] = result
            targets[f"early ticket (epoch {epoch})"] = result["weight_fraction"]
            keras.utils.clear_session()
        specs.append(tfmot.make_spec(cfg, spe, targets))
    extra = tfmot.run_specs(specs, "tfmot_spec_extra", timeout=3600)
    for i, seed_out in enumerate(results["seeds"]):
        if "error" in extra:
            seed_out.setdefault("notes", []).append(f"extra TF-MOT failed: {extra['error'][:300]}")
            continue
        res = seed_out["tfmot"].setdefault("results", {})
        # Keep the 90 % reference last in the tables.
        ref = {k: v for k, v in res.items() if k.startswith("90")}
        for k in ref:
            res.pop(k)
        res.update(extra["per_seed"][i]["results"])
        res.update(ref)
    results["config"]["early_ticket_epochs"] = sorted(
        set(results["config"]["early_ticket_epochs"]) | set(epochs))
    results["summary"] = summary.summarize(results["seeds"])
    results["extra_ticket_epochs"] = list(epochs)
    with open(results_file, "w") as f:
        json.dump(results, f, indent=1)
    return results

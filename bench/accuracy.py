"""Accuracy vs sparsity on Fashion-MNIST (FMNIST-CNN-S), several seeds.

Every contender trains for the same epochs with the same learning-rate
schedule (from ``configs/fmnist_dessilbi.py`` when present, else
`tf_dessilbi.training.config_lib.base_config()`), built by the trainer's own
`tf_dessilbi.training.components.build_optimizer`, on the trainer's input pipeline:

* dense SGD (momentum as in the config);
* DessiLBI: test accuracy of the dense W and of W* (W on supp Γ) after every
  epoch, the support size sampled along the run (claim 1 of issue 6);
* early tickets: supp(Γ) at an early epoch retrained from the initial
  weights with SGD (`tf_dessilbi.early_tickets.retrain_ticket`);
* a Continuous Sparsification ticket (`tf_dessilbi.TicketSearch`), when that
  API exists;
* TF-MOT `prune_low_magnitude` (tf_keras, in its own process) with a
  PolynomialDecay schedule to the sparsity of each of ours, and to 90 %.

    python -m bench.accuracy [--quick] [--json out.json] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import bench

bench.quiet_tf()

PATH_SAMPLES_PER_EPOCH = 12


def _log(message: str) -> None:
    import sys

    print(f"[accuracy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- configuration -----------------------------------------------------------------
def load_config(quick: bool):
    """The DessiLBI config for Fashion-MNIST (and where it came from)."""
    from tf_dessilbi.training import config_lib

    path = os.path.join(bench.REPO_ROOT, "configs", "fmnist_dessilbi.py")
    config = None
    if os.path.exists(path):
        try:
            config = config_lib.load_config(path)
            source = "`configs/fmnist_dessilbi.py`"
        except Exception as e:  # noqa: BLE001 - a config being edited
            why = f"configs/fmnist_dessilbi.py failed to load: {type(e).__name__}: {e}"
    else:
        why = "configs/fmnist_dessilbi.py not there yet"
    if config is None:
        config = config_lib.base_config()
        source = f"`tf_dessilbi.training.config_lib.base_config()` ({why})"
    config.data.name = "fashion_mnist"
    config.model.name = "fmnist_cnn_s"
    config.optimizer.name = "dessilbi"
    config.batch_size = 128
    if quick:
        config.num_epochs = 2
        config.data.train_limit = 512
        config.data.eval_limit = 500
    return config, source


def early_ticket_epochs(config) -> list:
    epochs = [e for e in tuple(config.early_tickets.epochs) if e < config.num_epochs]
    return sorted(epochs)[:2] or [1, 2]


# -- helpers (Keras 3 side) -----------------------------------------------------------
def make_accuracy_fn(model):
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


def _lr_table(config, steps_per_epoch: int) -> list:
    """The learning rate at every step of the run (to give tf_keras the same schedule)."""
    import keras

    from tf_dessilbi.training import components as train

    lr = train.learning_rate_schedule(config, steps_per_epoch)
    total = config.num_epochs * steps_per_epoch
    if callable(lr):
        return [float(keras.ops.convert_to_numpy(lr(s))) for s in range(total)]
    return [float(lr)] * total


def _sgd_config(config):
    c = config.copy_and_resolve_references()
    c.optimizer.name = "sgd"
    return c


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


def _fit(config, data, steps_per_epoch, dessilbi, ticket_epochs=()):
    import keras

    from tf_dessilbi.training import components as train

    keras.utils.set_random_seed(config.seed)
    model = train.build_model(config, data.input_shape, data.num_classes)
    initial = [keras.ops.convert_to_numpy(w) for w in model.weights]
    cfg = config if dessilbi else _sgd_config(config)
    model.compile(
        optimizer=train.build_optimizer(cfg, model, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rec = _Recorder(keras, model, data.eval, dessilbi, ticket_epochs,
                    steps_per_epoch // PATH_SAMPLES_PER_EPOCH)
    t0 = time.time()
    model.fit(data.train, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
              callbacks=[rec.cb], verbose=0)
    rec.out["time_s"] = time.time() - t0
    return model, initial, rec


def _retrain(config, data, steps_per_epoch, initial, masks):
    import keras

    from tf_dessilbi import train
    from tf_dessilbi.procedures import early_tickets

    keras.utils.set_random_seed(config.seed)
    sgd = _sgd_config(config)
    return early_tickets.retrain_ticket(
        lambda: train.build_model(config, data.input_shape, data.num_classes),
        initial, masks, data.train, data.eval, config.num_epochs, steps_per_epoch,
        make_optimizer=lambda: train.build_optimizer(sgd, None, steps_per_epoch),
    )


def load_cs_gates():
    """The gate settings of ``configs/fmnist_cs.py`` (or the schema defaults)."""
    from tf_dessilbi.training import config_lib

    path = os.path.join(bench.REPO_ROOT, "configs", "fmnist_cs.py")
    try:
        return config_lib.load_config(path).gates, "`configs/fmnist_cs.py`"
    except Exception as e:  # noqa: BLE001
        return config_lib.base_config().gates, f"schema defaults ({type(e).__name__}: {e})"


def _cs_ticket(config, data, steps_per_epoch, quick):
    """A Continuous Sparsification ticket (`tf_dessilbi.TicketSearch`), or ``{"error": why}``.

    Search: ``gates.rounds`` rounds of ``num_epochs`` epochs with the run's
    SGD schedule; the ticket is then trained ``num_epochs`` epochs from the
    rewind point, again with the same schedule (a fresh optimizer per fit).
    """
    TicketSearch, why = bench.optional_attr("tf_dessilbi", "TicketSearch")
    if TicketSearch is None:
        return {"error": f"not available: {why}"}
    import keras

    from tf_dessilbi import models, train

    gates, source = load_cs_gates()
    sgd = _sgd_config(config)
    epochs = config.num_epochs
    keras.utils.set_random_seed(config.seed)
    t0 = time.time()
    try:
        search = TicketSearch(
            lambda: models.fmnist_cnn_s(input_shape=data.input_shape, num_classes=data.num_classes),
            lambda: train.build_optimizer(sgd, None, steps_per_epoch),
            rounds=int(gates.rounds),
            epochs_per_round=epochs,
            rewind_epoch=min(int(gates.rewind_epoch), epochs),
            final_beta=float(gates.final_beta),
            penalty=float(gates.penalty),
            per_step=bool(gates.per_step),
            ticket_epochs=epochs,
            granularity=gates.granularity,
            gate_init=float(gates.gate_init),
        )
        result = search.run(data.train, data.eval, steps_per_epoch=steps_per_epoch)
    except Exception as e:  # noqa: BLE001
        return {"error": f"failed: TicketSearch: {type(e).__name__}: {e}"}
    return {
        "acc": float(result.ticket_metrics.get("accuracy", float("nan"))),
        "weight_fraction": float(result.weight_fraction),
        "rounds": result.rounds,
        "settings": {"source": source, "rounds": int(gates.rounds), "epochs_per_round": epochs,
                     "rewind_epoch": min(int(gates.rewind_epoch), epochs),
                     "final_beta": float(gates.final_beta), "penalty": float(gates.penalty),
                     "granularity": gates.granularity, "gate_init": float(gates.gate_init),
                     "per_step": bool(gates.per_step), "ticket_epochs": epochs},
        "time_s": time.time() - t0,
    }


# -- one seed ----------------------------------------------------------------------------
def run_seed(config, seed: int, quick: bool) -> dict:
    import keras

    from tf_dessilbi.training import input_pipeline

    config = config.copy_and_resolve_references()
    config.seed = seed
    data = input_pipeline.get_datasets(config.data, config.batch_size, config.eval_batch_size, seed)
    steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    tickets = early_ticket_epochs(config)
    out = {"seed": seed, "steps_per_epoch": steps_per_epoch}

    _, _, rec = _fit(config, data, steps_per_epoch, dessilbi=False)
    out["sgd"] = {"acc": rec.out["acc_w"], "time_s": rec.out["time_s"]}
    _log(f"seed {seed}: SGD {out['sgd']['acc']}")
    keras.utils.clear_session()

    model, initial, rec = _fit(config, data, steps_per_epoch, dessilbi=True, ticket_epochs=tickets)
    out["dessilbi"] = {k: v for k, v in rec.out.items() if k != "epoch_weights"}
    masks = rec.masks
    _log(f"seed {seed}: DessiLBI W {out['dessilbi']['acc_w']} W* {out['dessilbi']['acc_w_star']} "
         f"kept {[round(x['weight_fraction'], 5) for x in out['dessilbi']['support']]}")
    del model
    keras.utils.clear_session()

    out["early_tickets"] = {}
    for epoch in tickets:
        result = _retrain(config, data, steps_per_epoch, initial, masks[epoch])
        result["weight_fraction"] = result["weights_kept"] / result["weights_total"]
        out["early_tickets"][str(epoch)] = result
        _log(f"seed {seed}: early ticket {epoch}: {result['accuracy']:.4f} "
             f"kept {result['weight_fraction']:.5f}")
        keras.utils.clear_session()

    out["cs"] = _cs_ticket(config, data, steps_per_epoch, quick)
    _log(f"seed {seed}: CS {out['cs'].get('acc', out['cs'].get('error'))} "
         f"kept {out['cs'].get('weight_fraction')}")
    keras.utils.clear_session()

    # TF-MOT at the sparsity of each of ours (+ 90 %): trained later, in a tf_keras process.
    targets = {"W* (end)": out["dessilbi"]["support"][-1]["weight_fraction"]}
    for epoch, r in out["early_tickets"].items():
        targets[f"early ticket (epoch {epoch})"] = r["weight_fraction"]
    if "weight_fraction" in out["cs"]:
        targets["CS ticket"] = out["cs"]["weight_fraction"]
    targets["90 % sparsity (reference)"] = 0.10
    out["tfmot_spec"] = {
        "seed": seed,
        "data": config.data.to_dict(),
        "batch_size": config.batch_size,
        "epochs": config.num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "lr": _lr_table(config, steps_per_epoch),
        "momentum": config.optimizer.momentum,
        "nesterov": config.optimizer.nesterov,
        "targets": targets,
    }
    return out


def _tfmot_all(per_seed) -> None:
    """Runs TF-MOT for every seed in one tf_keras process; fills ``seed["tfmot"]``."""
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    spec_file = os.path.join(bench.WORK_DIR, f"tfmot_spec_{os.getpid()}.json")
    with open(spec_file, "w") as f:
        json.dump([s.pop("tfmot_spec") for s in per_seed], f)
    result = bench.run_worker("bench.accuracy", ["--tfmot-worker", spec_file], timeout=4 * 3600)
    os.remove(spec_file)
    for i, seed in enumerate(per_seed):
        if "error" in result:
            seed["tfmot"] = {"error": result["error"]}
        else:
            seed["tfmot"] = {**result["per_seed"][i], **{k: v for k, v in result.items()
                                                          if k != "per_seed"}}


def run(quick: bool = False, seeds: int = 0) -> dict:
    config, source = load_config(quick)
    seeds = seeds or (2 if quick else 3)
    t0 = time.time()
    per_seed = [run_seed(config, s, quick) for s in range(seeds)]
    _tfmot_all(per_seed)
    return {
        "config_source": source,
        "config": {
            "num_epochs": config.num_epochs,
            "batch_size": config.batch_size,
            "optimizer": config.optimizer.to_dict(),
            "schedule": config.schedule.to_dict(),
            "early_ticket_epochs": early_ticket_epochs(config),
            "train_limit": config.data.train_limit,
            "eval_limit": config.data.eval_limit,
        },
        "seeds": per_seed,
        "summary": summarize(per_seed),
        "time_s": time.time() - t0,
    }


# -- TF-MOT worker (tf_keras, own process) --------------------------------------------------
def tfmot_worker(spec_file: str) -> dict:
    import tensorflow_model_optimization as tfmot
    import tf_keras

    with open(spec_file) as f:
        specs = json.load(f)
    per_seed = [_tfmot_seed(spec) for spec in specs]
    return {"per_seed": per_seed, "tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__,
            "schedule": "PolynomialDecay(0 → target, steps 0 → 2/3 of training, 30 updates)"}


def _tfmot_seed(spec) -> dict:
    import ml_collections
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from bench.step_time import tf_keras_fmnist_cnn_s
    from tf_dessilbi.training import input_pipeline

    data = input_pipeline.get_datasets(
        ml_collections.ConfigDict(spec["data"]), spec["batch_size"], None, spec["seed"]
    )
    table = tf.constant(spec["lr"], tf.float32)

    class TableSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            i = tf.minimum(tf.cast(step, tf.int32), tf.shape(table)[0] - 1)
            return tf.gather(table, i)

        def get_config(self):
            return {}

    total = spec["epochs"] * spec["steps_per_epoch"]
    results = {}
    done = {}  # kept fraction → result: equal targets are trained once
    for name, kept in spec["targets"].items():
        same = [k for k in done if abs(k - kept) <= 0.02 * max(k, kept)]
        if same:
            results[name] = {**done[same[0]], "shared_with_target": same[0]}
            continue
        sparsity = float(min(max(1.0 - kept, 0.0), 0.999))
        tf_keras.utils.set_random_seed(spec["seed"])
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
            end_step=max(int(total * 2 / 3), 1), frequency=max(total // 30, 1),
        )
        model = tfmot.sparsity.keras.prune_low_magnitude(
            tf_keras_fmnist_cnn_s(tf_keras), pruning_schedule=schedule
        )
        model.compile(
            optimizer=tf_keras.optimizers.SGD(TableSchedule(), momentum=spec["momentum"],
                                              nesterov=spec["nesterov"]),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        t0 = time.time()
        model.fit(data.train, epochs=spec["epochs"], steps_per_epoch=spec["steps_per_epoch"],
                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0)
        stripped = tfmot.sparsity.keras.strip_pruning(model)
        stripped.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                         metrics=["accuracy"])
        acc = stripped.evaluate(data.eval, verbose=0)[1]
        kernels = [w for w in stripped.weights if "kernel" in w.name]
        nz = sum(int(np.count_nonzero(w.numpy())) for w in kernels)
        tot = sum(int(np.size(w.numpy())) for w in kernels)
        results[name] = {"target_kept": kept, "sparsity": sparsity, "acc": float(acc),
                         "weight_fraction": nz / tot, "time_s": time.time() - t0}
        done[kept] = results[name]
        print(f"[tfmot {time.strftime('%H:%M:%S')}] seed {spec['seed']} {name}: "
              f"{results[name]['acc']:.4f} kept {results[name]['weight_fraction']:.5f}",
              file=__import__("sys").stderr, flush=True)
    return {"results": results}


# -- aggregation and report ------------------------------------------------------------------
def _ms(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def summarize(per_seed) -> dict:
    """Mean ± std over seeds of every (accuracy, fraction kept) point."""
    rows = {}

    def add(key, accs, kept):
        rows[key] = {"acc": _ms(accs), "kept": _ms(kept)}

    epochs = len(per_seed[0]["sgd"]["acc"])
    add("SGD (dense)", [s["sgd"]["acc"][-1] for s in per_seed], [1.0] * len(per_seed))
    trained = [s["sgd"]["acc"][-1] for s in per_seed if s["sgd"]["acc"][-1] >= 0.2]
    if trained and len(trained) < len(per_seed):
        add(f"SGD (dense), the {len(trained)} of {len(per_seed)} seeds that did not diverge",
            trained, [1.0] * len(trained))
    for e in range(epochs):
        tag = "end" if e == epochs - 1 else f"epoch {e + 1}"
        add(f"DessiLBI dense W ({tag})", [s["dessilbi"]["acc_w"][e] for s in per_seed],
            [1.0] * len(per_seed))
        add(f"DessiLBI W* ({tag})", [s["dessilbi"]["acc_w_star"][e] for s in per_seed],
            [s["dessilbi"]["support"][e]["weight_fraction"] for s in per_seed])
    for epoch in per_seed[0]["early_tickets"]:
        rs = [s["early_tickets"][epoch] for s in per_seed]
        add(f"early ticket (supp Γ at epoch {epoch}), retrained",
            [r["accuracy"] for r in rs], [r["weight_fraction"] for r in rs])
    if all("acc" in s["cs"] for s in per_seed):
        last = [s["cs"]["rounds"][-1] for s in per_seed]
        if all("val_accuracy_hard" in r for r in last):
            add("CS search model, hard mask, before ticket retraining",
                [r["val_accuracy_hard"] for r in last], [r["weight_fraction"] for r in last])
        add("CS ticket", [s["cs"]["acc"] for s in per_seed],
            [s["cs"]["weight_fraction"] for s in per_seed])
    if all("results" in s["tfmot"] for s in per_seed):
        for name in per_seed[0]["tfmot"]["results"]:
            rs = [s["tfmot"]["results"][name] for s in per_seed]
            add(f"TF-MOT magnitude @ {name}", [r["acc"] for r in rs],
                [r["weight_fraction"] for r in rs])
    path = {}
    for s in per_seed:
        for p in s["dessilbi"]["path"]:
            path.setdefault(p["step"], []).append(p)
    return {
        "rows": rows,
        "path": [
            {"step": step,
             "filters_kept": _ms([p["filters_kept"] for p in ps]),
             "units_kept": _ms([p["units_kept"] for p in ps]),
             "weight_fraction": _ms([p["weight_fraction"] for p in ps])}
            for step, ps in sorted(path.items())
        ],
        "filters_total": per_seed[0]["dessilbi"]["support"][-1]["filters_total"],
        "units_total": per_seed[0]["dessilbi"]["support"][-1]["units_total"],
    }


def config_drift(results: dict) -> str:
    """A sentence when configs/fmnist_dessilbi.py changed since these results were made."""
    try:
        now = load_config(quick=False)[0].optimizer.to_dict()
    except Exception:  # noqa: BLE001
        return ""
    used = results["config"]["optimizer"]
    changed = {k: (used.get(k), v) for k, v in now.items() if used.get(k) != v}
    if not changed:
        return ""
    return ("`configs/fmnist_dessilbi.py` changed after this run started; these results use "
            + ", ".join(f"{k}={a!r}" for k, (a, b) in changed.items())
            + " where the config now says "
            + ", ".join(f"{k}={b!r}" for k, (a, b) in changed.items())
            + ". Re-run `python -m bench.run` to refresh.")


def _pm(x, scale=100.0, digits=2):
    if x is None:
        return "n/a"
    return f"{scale * x['mean']:.{digits}f} ± {scale * x['std']:.{digits}f}"


def to_markdown(results: dict) -> str:
    c = results["config"]
    s = results["summary"]
    n = len(results["seeds"])
    lines = [
        f"Config: {results['config_source']}; {c['num_epochs']} epochs, batch {c['batch_size']}, "
        f"optimizer `{c['optimizer']}`, schedule `{c['schedule']}`; the same epochs and "
        f"learning-rate schedule for every contender (TF-MOT gets the identical per-step "
        f"learning rates). {n} seeds (0…{n - 1}); mean ± sample std. "
        + (f"Quick mode: {c['train_limit']} training / {c['eval_limit']} test images."
           if c["train_limit"] else "Full Fashion-MNIST: 60,000 training / 10,000 test images.")
        + f" Wall time {results['time_s'] / 60:.1f} min.",
        "",
    ]
    drift = config_drift(results)
    if drift:
        lines += [f"**Note:** {drift}", ""]
    lines += [
        bench.md_table(
            ("model", "test accuracy %", "weights kept %"),
            [(k, _pm(r["acc"]), _pm(r["kept"])) for k, r in s["rows"].items()],
        ),
        "",
        "Weights kept = nonzero entries of the conv and dense kernels (all of them coupled "
        "or pruned alike), out of "
        f"{results['seeds'][0]['dessilbi']['support'][-1]['layers'] and sum(v[3] for v in results['seeds'][0]['dessilbi']['support'][-1]['layers'].values()):,}.",
    ]
    cs = results["seeds"][0]["cs"]
    if "settings" in cs:
        lines.append(f"\nCS ticket search (`tf_dessilbi.TicketSearch`), gate settings from "
                     f"{cs['settings']['source']}: `{ {k: v for k, v in cs['settings'].items() if k != 'source'} }`; "
                     "SGD with the same learning-rate schedule in every round and for the ticket.")
    tf = results["seeds"][0]["tfmot"]
    if "schedule" in tf:
        lines.append(f"\nTF-MOT {tf.get('tfmot')} on tf_keras {tf.get('tf_keras')} (separate process): "
                     f"`prune_low_magnitude` on every Conv2D/Dense, `{tf['schedule']}`, SGD with the "
                     "same per-step learning rates; accuracy of the stripped model.")
    for seed in results["seeds"]:
        for key in ("cs", "tfmot"):
            if "error" in seed[key]:
                lines.append(f"\n- seed {seed['seed']} {key}: {seed[key]['error'][:500]}")
    last = results["seeds"][0]["dessilbi"]["support"][-1]["layers"]
    lines += ["", "DessiLBI support at the end, seed 0 (per layer):", "",
              bench.md_table(("layer", "units kept", "weights kept"),
                             [(k, f"{v[0]}/{v[1]}", f"{v[2]}/{v[3]} ({100 * v[2] / v[3]:.2f} %)")
                              for k, v in last.items()])]
    return "\n".join(lines)


def path_markdown(results: dict) -> str:
    s = results["summary"]
    path = s["path"]
    if not path:
        return "no support path recorded"
    pick = path[:: max(len(path) // 12, 1)]
    if pick[-1] is not path[-1]:
        pick.append(path[-1])
    return bench.md_table(
        ("step", f"conv filters in supp Γ (of {s['filters_total']})",
         f"units in supp Γ (of {s['units_total']})", "weights in supp Γ %"),
        [(p["step"], _pm(p["filters_kept"], 1, 1), _pm(p["units_kept"], 1, 1),
          _pm(p["weight_fraction"], 100, 3)) for p in pick],
    )


def plot(results: dict, accuracy_png: str, path_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    styles = [("SGD", "k", "s"), ("DessiLBI dense", "tab:blue", "o"),
              ("DessiLBI W*", "tab:blue", "D"), ("early ticket", "tab:green", "^"),
              ("CS", "tab:red", "*"), ("TF-MOT", "tab:gray", "v")]
    floor = 0.01  # % kept; an empty support is drawn here (log axis)
    for name, r in s["rows"].items():
        if r["acc"] is None or r["kept"] is None:
            continue
        colour, marker = "tab:purple", "x"
        for prefix, c, m in styles:
            if name.startswith(prefix):
                colour, marker = c, m
        early = "(epoch" in name
        kept = max(100 * r["kept"]["mean"], floor)
        label = name + (" [0 kept: drawn at 0.01 %]" if 100 * r["kept"]["mean"] < floor else "")
        ax.errorbar(kept, 100 * r["acc"]["mean"],
                    xerr=min(100 * r["kept"]["std"], kept * 0.9), yerr=100 * r["acc"]["std"],
                    fmt=marker, color=colour, capsize=3, label=label, markersize=7,
                    alpha=0.45 if early else 1.0, mfc="none" if early else colour)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("weights kept (% of conv + dense kernels, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, FMNIST-CNN-S, {results['config']['num_epochs']} epochs, "
                 f"{len(results['seeds'])} seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(accuracy_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = [p["step"] for p in s["path"]]
    for key, label, total, colour in (
        ("filters_kept", "conv filters in supp Γ", s["filters_total"], "tab:blue"),
        ("units_kept", "all units (filters + neurons) in supp Γ", s["units_total"], "tab:orange"),
    ):
        mean = [p[key]["mean"] / total * 100 for p in s["path"]]
        std = [p[key]["std"] / total * 100 for p in s["path"]]
        ax.plot(steps, mean, color=colour, label=f"{label} (of {total})")
        ax.fill_between(steps, [m - d for m, d in zip(mean, std)],
                        [m + d for m, d in zip(mean, std)], color=colour, alpha=0.2)
    wf = [p["weight_fraction"]["mean"] * 100 for p in s["path"]]
    ax.plot(steps, wf, color="tab:green", label="weights in supp Γ")
    spe = results["seeds"][0]["steps_per_epoch"]
    for e in range(1, results["config"]["num_epochs"]):
        ax.axvline(e * spe, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("training step (dashed: epoch boundaries)")
    ax.set_ylabel("% in the support of Γ")
    ax.set_title("DessiLBI support along training (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--tfmot-worker", help=argparse.SUPPRESS)
    parser.add_argument("--add-ticket-epochs", default="",
                        help="comma-separated epochs: add early tickets to the results in --json")
    args = parser.parse_args(argv)
    if args.add_ticket_epochs:
        add_ticket_epochs(args.json, [int(e) for e in args.add_ticket_epochs.split(",")])
        return
    if args.tfmot_worker:
        results = tfmot_worker(args.tfmot_worker)
    else:
        results = run(args.quick, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.tfmot_worker:
        print(to_markdown(results))
        print(path_markdown(results))



# -- extra early tickets, added to finished results ---------------------------------------
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
        _, initial, rec = _fit(short, data, spe, dessilbi=True, ticket_epochs=epochs)
        targets = {}
        for epoch in epochs:
            result = _retrain(cfg, data, spe, initial, rec.masks[epoch])
            result["weight_fraction"] = result["weights_kept"] / result["weights_total"]
            result["rerun"] = {
                "note": "support from a re-run of DessiLBI with the same seed",
                "w_star_acc_rerun": rec.out["acc_w_star"][epoch - 1],
                "w_star_acc_original": seed_out["dessilbi"]["acc_w_star"][epoch - 1],
                "kept_original": seed_out["dessilbi"]["support"][epoch - 1]["weight_fraction"],
            }
            seed_out["early_tickets"][str(epoch)] = result
            targets[f"early ticket (epoch {epoch})"] = result["weight_fraction"]
            _log(f"seed {cfg.seed}: early ticket {epoch}: {result['accuracy']:.4f} "
                 f"kept {result['weight_fraction']:.5f}")
            keras.utils.clear_session()
        specs.append({
            "seed": cfg.seed, "data": cfg.data.to_dict(), "batch_size": cfg.batch_size,
            "epochs": cfg.num_epochs, "steps_per_epoch": spe, "lr": _lr_table(cfg, spe),
            "momentum": cfg.optimizer.momentum, "nesterov": cfg.optimizer.nesterov,
            "targets": targets,
        })
    spec_file = os.path.join(bench.WORK_DIR, f"tfmot_spec_extra_{os.getpid()}.json")
    with open(spec_file, "w") as f:
        json.dump(specs, f)
    extra = bench.run_worker("bench.accuracy", ["--tfmot-worker", spec_file], timeout=3600)
    os.remove(spec_file)
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
    results["summary"] = summarize(results["seeds"])
    results["extra_ticket_epochs"] = list(epochs)
    with open(results_file, "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()

"""TF-MOT `prune_low_magnitude` at the sparsities of our models, in a tf_keras process.

TF-MOT needs tf_keras (``TF_USE_LEGACY_KERAS=1`` for the whole process), so
`run_specs` starts ``python -m bench.accuracy --tfmot-worker SPEC`` through
`bench.run_worker`; the worker (`tfmot_worker`) trains, per seed and per
target fraction of weights kept, FMNIST-CNN-S with a PolynomialDecay
pruning schedule and SGD with the per-step learning rates of our runs.
"""

from __future__ import annotations

import json
import os
import time

import bench
from bench.accuracy.config import lr_table


def make_spec(config, steps_per_epoch: int, targets: dict) -> dict:
    """What the worker needs for one seed: data, schedule, and ``{name: fraction kept}``."""
    return {
        "seed": config.seed,
        "data": config.data.to_dict(),
        "batch_size": config.batch_size,
        "epochs": config.num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "lr": lr_table(config, steps_per_epoch),
        "momentum": config.optimizer.momentum,
        "nesterov": config.optimizer.nesterov,
        "targets": targets,
    }


def run_specs(specs: list, name: str, timeout: float) -> dict:
    """Runs the worker on `specs` (one per seed) in one tf_keras process.

    Returns:
        ``{"per_seed": [...], "tfmot", "tf_keras", "schedule"}`` or
        ``{"error": ...}`` (see `bench.run_worker`).
    """
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    spec_file = os.path.join(bench.WORK_DIR, f"{name}_{os.getpid()}.json")
    with open(spec_file, "w") as f:
        json.dump(specs, f)
    result = bench.run_worker("bench.accuracy", ["--tfmot-worker", spec_file], timeout=timeout)
    os.remove(spec_file)
    return result


def run_all(per_seed) -> None:
    """Runs TF-MOT for every seed in one tf_keras process; fills ``seed["tfmot"]``."""
    result = run_specs([s.pop("tfmot_spec") for s in per_seed], "tfmot_spec", timeout=4 * 3600)
    for i, seed in enumerate(per_seed):
        if "error" in result:
            seed["tfmot"] = {"error": result["error"]}
        else:
            seed["tfmot"] = {**result["per_seed"][i], **{k: v for k, v in result.items()
                                                          if k != "per_seed"}}


def tfmot_worker(spec_file: str) -> dict:
    """The worker side (tf_keras process): trains every spec in `spec_file`."""
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

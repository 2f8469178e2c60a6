"""The TF-MOT contender of `bench/sparse_compare.py`, trained in a tf_keras process.

TF-MOT needs tf_keras (``TF_USE_LEGACY_KERAS=1`` for the whole process), so
`tfmot_run` starts ``python -m bench.sparse_tfmot SPEC --json OUT`` through
`bench.run_worker`; the worker trains FMNIST-CNN-S with ``prune_low_magnitude``,
our GMP contender's schedule and the protocol's per-step learning rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import bench
from bench import protocol


def tfmot_spec(sparsity, seed, epochs, limit=0) -> dict:
    steps_per_epoch = (limit or protocol.NUM_TRAIN) // protocol.BATCH_SIZE
    total = epochs * steps_per_epoch
    return {"sparsity": sparsity, "seed": seed, "epochs": epochs, "limit": limit,
            "begin": int(round(0.1 * total)), "end": int(round(0.75 * total)), "frequency": 100,
            "lr": [protocol.lr_at(s, steps_per_epoch, epochs) for s in range(total + 1)]}


def tfmot_run(sparsity, seed, epochs, limit=0) -> dict:
    spec_file = os.path.join(bench.WORK_DIR, f"sparse_compare_tfmot_{os.getpid()}.json")
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    with open(spec_file, "w") as f:
        json.dump(tfmot_spec(sparsity, seed, epochs, limit), f)
    try:
        result = bench.run_worker("bench.sparse_tfmot", [spec_file], timeout=3600)
    finally:
        os.remove(spec_file)
    if "error" in result:
        raise RuntimeError(result["error"])
    print(f"[sparse_compare {time.strftime('%H:%M:%S')}] tfmot s={sparsity} seed={seed}: "
          f"{result['accuracy']:.4f}, density {result['density']:.4f}", file=sys.stderr, flush=True)
    return result


def tfmot_worker(spec_file: str) -> dict:
    """The tf_keras side: TF-MOT's prune_low_magnitude with the GMP contender's schedule."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from bench.step_time import tf_keras_fmnist_cnn_s

    with open(spec_file) as f:
        spec = json.load(f)
    limit = spec.get("limit") or None
    data = protocol.load_data(spec["seed"], spec["epochs"], train_limit=limit, test_limit=limit)
    table = tf.constant(spec["lr"], tf.float32)

    class TableSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.gather(table, tf.minimum(tf.cast(step, tf.int32), tf.shape(table)[0] - 1))

        def get_config(self):
            return {}

    tf_keras.utils.set_random_seed(spec["seed"])
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=spec["sparsity"], begin_step=spec["begin"],
        end_step=spec["end"], power=3, frequency=spec["frequency"])
    model = tfmot.sparsity.keras.prune_low_magnitude(tf_keras_fmnist_cnn_s(tf_keras),
                                                      pruning_schedule=schedule)
    model.compile(optimizer=tf_keras.optimizers.SGD(TableSchedule(), momentum=protocol.MOMENTUM,
                                                    nesterov=True),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(data.train, epochs=spec["epochs"], steps_per_epoch=data.steps_per_epoch,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0)
    wall = time.perf_counter() - t0
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    stripped.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"])
    accuracy = stripped.evaluate(data.test, verbose=0)[1]
    kernels = [w.numpy() for w in stripped.weights if "kernel" in w.name]
    density = sum(int(np.count_nonzero(k)) for k in kernels) / sum(k.size for k in kernels)
    return {"method": "tfmot", "sparsity": spec["sparsity"], "seed": spec["seed"],
            "accuracy": float(accuracy), "density": density, "wall_s": wall,
            "tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the JSON spec `tfmot_spec` wrote")
    parser.add_argument("--json", required=True, help="where the result goes")
    args = parser.parse_args(argv)
    result = tfmot_worker(args.spec)
    with open(args.json, "w") as f:
        json.dump(result, f)
    return result


if __name__ == "__main__":
    main()

"""Median ms per train step: SGD vs DessiLBI vs gated layers vs TF-MOT.

All Keras 3 contenders live in one process and are timed alternately in
blocks (`bench.alternate_timings`), on the same in-memory batches of real
Fashion-MNIST (batch 128, FMNIST-CNN-S), each through the same compiled step
(`tf_dessilbi.make_train_step`). TF-MOT needs tf_keras, so it runs in its own
process (``--tfmot-worker``) and is compared with its own dense tf_keras step
timed alternately there. ResNet-20 runs on synthetic 32×32×3 images.

    python -m bench.step_time [--quick] [--json out.json]

Targets (issue 6): DessiLBI/SGD ≤ 1.10, gated/plain ≤ 1.15, each below
TF-MOT's pruned/dense ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import bench

bench.quiet_tf()

BATCH = 128
TARGET_DESSILBI = 1.10
TARGET_GATED = 1.15


def _settings(quick: bool) -> dict:
    if quick:
        return {"warmup": 2, "steps_per_block": 5, "blocks": 2,
                "resnet_steps_per_block": 2, "resnet_blocks": 2}
    return {"warmup": 20, "steps_per_block": 10, "blocks": 20,
            "resnet_steps_per_block": 10, "resnet_blocks": 10}


def _fmnist_batches(n: int):
    import numpy as np
    import tensorflow as tf

    from tf_dessilbi.training import data

    (x, y), _ = data.load_fashion_mnist()
    x = data.to_float_images(x[: n * BATCH])
    y = y[: n * BATCH].astype("int32")
    return [
        (tf.constant(x[i * BATCH:(i + 1) * BATCH]),
         tf.constant(y[i * BATCH:(i + 1) * BATCH]))
        for i in range(n)
    ], np


def _synthetic_batches(n: int, shape=(32, 32, 3), classes=10, seed=0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return [
        (tf.constant(rng.random((BATCH, *shape), dtype=np.float32)),
         tf.constant(rng.integers(0, classes, BATCH, dtype=np.int32)))
        for _ in range(n)
    ]


def _group_structure(model):
    """Conv kernels by filter, hidden dense kernels by neuron, logits elementwise.

    (The config's ``"filter_neuron"``: dropping a logits unit drops a class.)
    """
    mapping = dict(__import__("tf_dessilbi").structures_for(model))
    last = list(mapping)[-1]
    return {p: ("neuron" if k == "elementwise" and p != last else k)
            for p, k in mapping.items()}


def _elementwise_structure(model):
    return {p: "elementwise" for p in __import__("tf_dessilbi").structures_for(model)}


def _keras_contenders(model_fn, hp, notes, with_gates=True, structures=True, joint=False):
    """``{name: step}`` for SGD, DessiLBI variants and gated SGD.

    ``joint``: also DessiLBI auto with the model's dependency groups coupled
    jointly (``unit_groups=joint_unit_groups(model)``).
    """
    import keras

    import tf_dessilbi

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    contenders = {}

    def add(name, model, optimizer):
        contenders[name] = tf_dessilbi.make_train_step(model, optimizer, loss)

    add("sgd", model_fn(), keras.optimizers.SGD(hp["learning_rate"], momentum=hp["momentum"]))
    add("dessilbi_auto", model_fn(), tf_dessilbi.DessiLBI(**hp))
    if joint:
        m = model_fn()
        add("dessilbi_joint", m, tf_dessilbi.DessiLBI(**hp, unit_groups=tf_dessilbi.joint_unit_groups(m)))
    if structures:
        m = model_fn()
        add("dessilbi_filter", m, tf_dessilbi.DessiLBI(**{**hp, "structure": _group_structure(m)}))
        m = model_fn()
        add("dessilbi_elementwise", m,
            tf_dessilbi.DessiLBI(**{**hp, "structure": _elementwise_structure(m)}))
    if with_gates:
        gm = tf_dessilbi.gate_model(model_fn())
        add("gated_sgd", gm, keras.optimizers.SGD(hp["learning_rate"], momentum=hp["momentum"]))
    return contenders


def _ratios(timings, base="sgd"):
    return {
        name: t["median_ms"] / timings[base]["median_ms"]
        for name, t in timings.items()
        if name != base
    }


def run(quick: bool = False) -> dict:
    """Runs every timing; returns plain data (see `to_markdown`)."""
    import keras

    import tf_dessilbi
    from bench.accuracy.config import dessilbi_hparams
    from tf_dessilbi import models

    s = _settings(quick)
    hp = dessilbi_hparams()
    opt_hp = hp["optimizer"]
    notes = {}
    keras.utils.set_random_seed(0)
    batches, _ = _fmnist_batches(20)
    contenders = _keras_contenders(models.fmnist_cnn_s, opt_hp, notes)
    fmnist = bench.alternate_timings(
        contenders, batches, s["warmup"], s["steps_per_block"], s["blocks"]
    )
    result = {
        "settings": s,
        "hparams_source": hp["source"],
        "optimizer": opt_hp,
        "fmnist": fmnist,
        "fmnist_ratios": _ratios(fmnist),
        "notes": notes,
    }
    del contenders

    # TF-MOT on tf_keras, in its own process.
    args = ["--tfmot-worker", "--lr", str(opt_hp["learning_rate"]),
            "--momentum", str(opt_hp["momentum"])]
    if quick:
        args.append("--quick")
    result["tfmot"] = bench.run_worker("bench.step_time", args, timeout=900)

    # ResNet-20 on synthetic 32×32×3.
    from tf_dessilbi.models import resnet20 as resnet_fn

    keras.utils.clear_session()
    rnotes = {}
    rb = _synthetic_batches(4)
    try:
        rc = _keras_contenders(
            lambda: resnet_fn(input_shape=(32, 32, 3), num_classes=10),
            opt_hp, rnotes, with_gates=not quick, structures=False, joint=True,
        )
        rt = bench.alternate_timings(
            rc, rb, 1 if quick else 3, s["resnet_steps_per_block"],
            s["resnet_blocks"],
        )
        result["resnet20"] = {"timings": rt, "ratios": _ratios(rt), "notes": rnotes}
    except Exception as e:  # noqa: BLE001
        result["resnet20"] = {"error": f"failed: {type(e).__name__}: {e}"}
    _ = tf_dessilbi
    return result


# -- TF-MOT worker (tf_keras; runs in its own process) ------------------------
def tfmot_worker(quick: bool, lr: float, momentum: float) -> dict:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    s = _settings(quick)
    tf_keras.utils.set_random_seed(0)
    batches, _ = _fmnist_batches(20)
    dense = tf_keras_fmnist_cnn_s(tf_keras)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        tf_keras_fmnist_cnn_s(tf_keras),
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(
            0.9, begin_step=0, frequency=100
        ),
    )
    update = tfmot.sparsity.keras.UpdatePruningStep()
    update.set_model(pruned)
    update.on_train_begin()

    def make_step(model):
        opt = tf_keras.optimizers.SGD(lr, momentum=momentum)
        loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return step

    dense_step = make_step(dense)
    pruned_inner = make_step(pruned)

    def pruned_step(x, y):
        # What `fit` does with the UpdatePruningStep callback, as TF-MOT's
        # guide prescribes for custom training loops.
        update.on_train_batch_begin(batch=-1)
        return pruned_inner(x, y)

    timings = bench.alternate_timings(
        {"tf_keras_dense": dense_step, "tfmot_pruned": pruned_step},
        batches, s["warmup"], s["steps_per_block"], s["blocks"],
    )
    return {
        "timings": timings,
        "ratio": timings["tfmot_pruned"]["median_ms"] / timings["tf_keras_dense"]["median_ms"],
        "schedule": "ConstantSparsity(0.9, begin_step=0, frequency=100)",
        "tf_keras": tf_keras.__version__,
        "tfmot": tfmot.__version__,
    }


def tf_keras_fmnist_cnn_s(tf_keras):
    """FMNIST-CNN-S (as `tf_dessilbi.models.fmnist_cnn_s`) in tf_keras."""
    L = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((28, 28, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        L.MaxPooling2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(128, activation="relu", name="fc1"),
        L.Dense(10, name="logits"),
    ], name="fmnist_cnn_s")


# -- report ----------------------------------------------------------------------
def _fmt_ratio(r, target=None):
    if r is None:
        return "n/a"
    mark = ""
    if target is not None:
        mark = " ✓" if r <= target else " ✗"
    return f"{r:.3f}×{mark}"


def _spread(timings, name, base) -> str:
    if name == base:
        return ""
    spread = bench.block_ratio_spread(timings, name, base)
    return "" if spread is None else f"{spread[0]:.2f}–{spread[1]:.2f}"


def _cpu_ratio(timings, name, base) -> str:
    if name == base or "cpu_median_ms" not in timings[name]:
        return ""
    return f"{timings[name]['cpu_median_ms'] / timings[base]['cpu_median_ms']:.3f}×"


def to_markdown(results: dict) -> str:
    s = results["settings"]
    out = []
    out.append(
        f"Median ms per train step, batch {BATCH}, {s['blocks']} alternating blocks × "
        f"{s['steps_per_block']} steps per contender after {s['warmup']} warm-up steps "
        f"(= {s['blocks'] * s['steps_per_block']} timed steps each). DessiLBI "
        f"hyperparameters from {results['hparams_source']}: `{results['optimizer']}`."
    )
    fm = results["fmnist"]
    ratios = results["fmnist_ratios"]
    tfm = results.get("tfmot", {})
    tfmot_ratio = tfm.get("ratio")
    labels = {
        "sgd": ("SGD (momentum 0.9)", None),
        "dessilbi_auto": ("DessiLBI auto (conv by filter, dense elementwise)", TARGET_DESSILBI),
        "dessilbi_filter": ("DessiLBI groups (conv filter, hidden dense neuron)", TARGET_DESSILBI),
        "dessilbi_elementwise": ("DessiLBI elementwise (every kernel)", TARGET_DESSILBI),
        "gated_sgd": ("CS-gated layers, SGD", TARGET_GATED),
        "dessilbi_joint": ("DessiLBI auto, residual groups joint (`unit_groups`)", TARGET_DESSILBI),
    }
    rows = []
    for name, t in fm.items():
        label, target = labels.get(name, (name, None))
        r = ratios.get(name)
        beats = ""
        if r is not None and tfmot_ratio is not None:
            beats = "wall " + ("yes" if r < tfmot_ratio else "no")
            t_cpu = tfm["timings"]["tfmot_pruned"].get("cpu_median_ms")
            if t_cpu and "cpu_median_ms" in t:
                ours = t["cpu_median_ms"] / fm["sgd"]["cpu_median_ms"]
                theirs = t_cpu / tfm["timings"]["tf_keras_dense"]["cpu_median_ms"]
                beats += ", CPU " + ("yes" if ours < theirs else "no")
        rows.append((
            label, f"{t['median_ms']:.1f}", f"{t['p10_ms']:.1f}–{t['p90_ms']:.1f}",
            "1 (base)" if name == "sgd" else _fmt_ratio(r, target),
            _spread(fm, name, "sgd"), _cpu_ratio(fm, name, "sgd"),
            f"≤ {target:.2f}" if target else "", beats,
        ))
    if "timings" in tfm:
        for name, t in tfm["timings"].items():
            label = ("tf_keras dense, SGD" if name == "tf_keras_dense"
                     else "TF-MOT prune_low_magnitude, SGD")
            rows.append((
                label, f"{t['median_ms']:.1f}", f"{t['p10_ms']:.1f}–{t['p90_ms']:.1f}",
                "1 (base of TF-MOT)" if name == "tf_keras_dense"
                else f"{tfmot_ratio:.3f}× vs tf_keras dense",
                "" if name == "tf_keras_dense"
                else _spread(tfm["timings"], name, "tf_keras_dense"),
                "" if name == "tf_keras_dense"
                else _cpu_ratio(tfm["timings"], name, "tf_keras_dense"),
                "", "",
            ))
    out.append("")
    out.append("**FMNIST-CNN-S, real Fashion-MNIST batches**")
    out.append("")
    out.append(bench.md_table(
        ("contender", "median ms", "p10–p90 ms", "ratio vs SGD",
         "per-block ratio IQR", "CPU-time ratio", "target", "below TF-MOT ratio"), rows))
    out.append(
        "\nRatio = median over all timed steps / SGD's. Per-block ratio IQR: quartiles of "
        "the ratio of each block's median to the SGD block run next to it — the spread the "
        "machine's load puts on a ratio. CPU-time ratio: the same with this process's CPU time per step (all threads), which other jobs on the machine disturb less. A ✓/✗ or a \"below TF-MOT\" verdict is only "
        "meaningful where these ranges do not overlap the threshold."
    )
    for key, note in results.get("notes", {}).items():
        out.append(f"\n- {key}: {note}")
    if "error" in tfm:
        out.append(f"\n- TF-MOT: not available: {tfm['error']}")
    else:
        out.append(
            f"\nTF-MOT ({tfm.get('tfmot')}, tf_keras {tfm.get('tf_keras')}) runs in a "
            f"separate process (`python -m bench.step_time --tfmot-worker`), schedule "
            f"`{tfm.get('schedule')}`, its `UpdatePruningStep` callback called before "
            f"each step as `fit` would; its ratio is against a dense tf_keras step timed "
            f"alternately in that same process."
        )
    rn = results.get("resnet20", {})
    out.append("")
    out.append("**ResNet-20, synthetic 32×32×3 images**")
    out.append("")
    if "error" in rn:
        out.append(f"{rn['error']}")
    else:
        rows = []
        for name, t in rn["timings"].items():
            label, target = labels.get(name, (name, None))
            r = rn["ratios"].get(name)
            rows.append((label, f"{t['median_ms']:.1f}", f"{t['p10_ms']:.1f}–{t['p90_ms']:.1f}",
                         "1 (base)" if name == "sgd" else _fmt_ratio(r, target),
                         _spread(rn["timings"], name, "sgd"), _cpu_ratio(rn["timings"], name, "sgd"),
                         t["steps"]))
        out.append(bench.md_table(
            ("contender", "median ms", "p10–p90 ms", "ratio vs SGD", "per-block ratio IQR",
             "CPU-time ratio", "timed steps"), rows))
        for key, note in rn.get("notes", {}).items():
            out.append(f"\n- {key}: {note}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--tfmot-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument("--momentum", type=float, default=0.9, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tfmot_worker:
        results = tfmot_worker(args.quick, args.lr, args.momentum)
    else:
        results = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.tfmot_worker:
        print(to_markdown(results))
    _ = (platform, sys)


if __name__ == "__main__":
    main()

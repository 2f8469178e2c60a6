"""Median ms per train step: FMNIST-CNN-S gated (`gate_model`) vs plain.

Both models are timed alternately in one process (`bench.alternate_timings`)
on the same in-memory batches of real Fashion-MNIST (batch 128), each through
the same compiled step (`tf_dessilbi.make_train_step`, SGD). "gated + β" also
assigns β to every gate before each step, the work `GateTemperature` adds
per step in `fit`. Done with and without XLA.

    python -m bench.gate_step_time [--quick] [--json out.json]

Target (issue 3): gated/plain ≤ 1.15.
"""

from __future__ import annotations

import platform

import bench

bench.quiet_tf()

BATCH = 128
TARGET = 1.15


def _settings(quick: bool) -> dict:
    if quick:
        return {"warmup": 3, "steps_per_block": 5, "blocks": 2, "jit": (False,)}
    return {"warmup": 20, "steps_per_block": 20, "blocks": 10, "jit": (False, True)}


def _batches(n: int):
    import tensorflow as tf

    from tf_dessilbi.training import data

    (x, y), _ = data.load_fashion_mnist()
    x = data.to_float_images(x[: n * BATCH])
    y = y[: n * BATCH].astype("int32")
    return [
        (tf.constant(x[i * BATCH:(i + 1) * BATCH]), tf.constant(y[i * BATCH:(i + 1) * BATCH]))
        for i in range(n)
    ]


def run(quick: bool = False) -> dict:
    import keras
    import tensorflow as tf

    import tf_dessilbi
    from tf_dessilbi.models import fmnist_cnn_s

    settings = _settings(quick)
    batches = _batches(8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {"settings": settings, "batch": BATCH, "cpu": platform.processor() or platform.machine(),
               "tf": tf.__version__, "keras": keras.__version__, "rows": []}
    for jit in settings["jit"]:
        keras.utils.set_random_seed(0)
        plain = fmnist_cnn_s()
        gated = tf_dessilbi.gate_model(fmnist_cnn_s())
        gates = tf_dessilbi.gated_layers(gated)
        plain_step = tf_dessilbi.make_train_step(plain, keras.optimizers.SGD(0.02, momentum=0.9), loss, jit)
        gated_step = tf_dessilbi.make_train_step(gated, keras.optimizers.SGD(0.02, momentum=0.9), loss, jit)
        beta = [1.0]

        def gated_with_beta(x, y):
            beta[0] = min(beta[0] * 1.01, 200.0)
            for gate in gates:
                gate.beta.assign(beta[0])
            return gated_step(x, y)

        timings = bench.alternate_timings(
            {"plain": plain_step, "gated": gated_step, "gated + β": gated_with_beta},
            batches, settings["warmup"], settings["steps_per_block"], settings["blocks"],
        )
        base = timings["plain"]["median_ms"]
        for name, t in timings.items():
            results["rows"].append({
                "jit_compile": jit, "model": name, "median_ms": t["median_ms"],
                "p10_ms": t["p10_ms"], "p90_ms": t["p90_ms"], "steps": t["steps"],
                "ratio": t["median_ms"] / base,
            })
    return results


def to_markdown(results: dict) -> str:
    if "error" in results:
        return results["error"]
    lines = [
        f"FMNIST-CNN-S, batch {results['batch']}, SGD, `tf_dessilbi.make_train_step`; "
        f"models timed alternately in one process ({results['settings']['blocks']} blocks × "
        f"{results['settings']['steps_per_block']} steps each). Target gated/plain ≤ {TARGET}.",
        "",
        "| jit_compile | model | median ms/step | p10–p90 ms | ratio to plain |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['jit_compile']} | {r['model']} | {r['median_ms']:.2f} | "
            f"{r['p10_ms']:.1f}–{r['p90_ms']:.1f} | {r['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    bench.part_main(__doc__, run, to_markdown, 'a few steps only (smoke run)', argv)


if __name__ == "__main__":
    main()

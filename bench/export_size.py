"""SavedModel size and inference latency: stripped (W*) vs dense.

FMNIST-CNN-S is trained with DessiLBI on real Fashion-MNIST (hyperparameters
from ``tf_dessilbi/configs/fmnist_dessilbi.py`` via `bench.accuracy.config.dessilbi_hparams`), then
written three ways:

* dense: ``tf_dessilbi.export_saved_model(model, ...)`` (the dense W);
* stripped: ``tf_dessilbi.export_saved_model(model, ..., optimizer=opt)`` (W*);
* Keras: Keras 3's own ``model.export()`` of the dense model, for reference.

Sizes are the bytes of each SavedModel directory and of its ``tar.gz``
(the "gzip'd size" TF-MOT users compare); the checkpoint's variable count
shows how many copies of each weight are stored. Latency is the median ms
per batch of 128 test images through each loaded ``serving_default``
signature, stripped and dense timed alternately in blocks.

    python -m bench.export_size [--quick] [--json out.json]
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile

import bench

bench.quiet_tf()

BATCH = 128


def _settings(quick: bool) -> dict:
    if quick:
        return {"epochs": 1, "train_limit": 2048, "test_limit": 1000,
                "warmup": 3, "steps_per_block": 5, "blocks": 2}
    return {"epochs": 3, "train_limit": None, "test_limit": None,
            "warmup": 10, "steps_per_block": 20, "blocks": 10}


def dir_bytes(path: str) -> int:
    """Total size of the files under `path`."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def gzip_bytes(path: str) -> int:
    """Size of ``tar.gz`` of the directory `path` (default gzip level 9)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=os.path.basename(path))
    return buffer.tell()


def checkpoint_variables(path: str) -> int:
    import tensorflow as tf

    prefix = os.path.join(path, "variables", "variables")
    return sum(
        1 for name, _ in tf.train.list_variables(prefix)
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    )


def _optimizer_kwargs() -> tuple:
    try:
        from bench.accuracy.config import dessilbi_hparams

        hp = dessilbi_hparams()
        kwargs = dict(hp["optimizer"])
        structure = hp.get("structure")
        if structure not in (None, "auto"):
            kwargs["structure"] = dict(structure)
        return kwargs, hp["source"]
    except Exception as e:  # noqa: BLE001 - a config being edited elsewhere
        return {}, f"DessiLBI defaults (config not readable: {type(e).__name__}: {e})"


def run(quick: bool = False) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    import tf_dessilbi
    from tf_dessilbi.training.data import fashion_mnist_datasets
    from tf_dessilbi.models import fmnist_cnn_s

    s = _settings(quick)
    keras.utils.set_random_seed(0)
    train, test = fashion_mnist_datasets(
        BATCH, train_limit=s["train_limit"], test_limit=s["test_limit"]
    )
    kwargs, source = _optimizer_kwargs()
    model = fmnist_cnn_s()
    optimizer = tf_dessilbi.DessiLBI(**kwargs)
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _, train_s = bench.timed(model.fit, train, epochs=s["epochs"], verbose=0)
    dense_acc = float(model.evaluate(test, verbose=0)[1])
    with tf_dessilbi.apply_w_star(model, optimizer):
        w_star_acc = float(model.evaluate(test, verbose=0)[1])
    report = tf_dessilbi.sparsity_report(model, optimizer)

    work = tempfile.mkdtemp(prefix="export_size_", dir=_work_dir())
    try:
        paths = {
            "dense": tf_dessilbi.export_saved_model(model, os.path.join(work, "dense")),
            "stripped": tf_dessilbi.export_saved_model(
                model, os.path.join(work, "stripped"), optimizer=optimizer
            ),
        }
        paths["keras_export"] = os.path.join(work, "keras_export", "1")
        model.export(paths["keras_export"], verbose=False)
        sizes = {
            name: {
                "bytes": dir_bytes(path),
                "gzip_bytes": gzip_bytes(path),
                "checkpoint_variables": checkpoint_variables(path),
            }
            for name, path in paths.items()
        }
        x = next(iter(test.unbatch().batch(BATCH)))[0]
        serve = {
            name: tf.saved_model.load(paths[name]).signatures["serving_default"]
            for name in ("stripped", "dense")
        }
        expected = keras.ops.convert_to_numpy(
            tf_dessilbi.strip(model, optimizer)(x, training=False)
        )
        max_diff = float(np.max(np.abs(serve["stripped"](image=x)["logits"].numpy() - expected)))
        timings = bench.alternate_timings(
            {name: (lambda fn: lambda x, y: fn(image=x)["logits"])(fn) for name, fn in serve.items()},
            [(x, None)],
            warmup=s["warmup"],
            steps_per_block=s["steps_per_block"],
            blocks=s["blocks"],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "quick": quick,
        "settings": s,
        "optimizer_source": source,
        "optimizer": kwargs,
        "train_seconds": train_s,
        "accuracy": {"dense_w": dense_acc, "w_star": w_star_acc},
        "weights_kept": report.weights_kept,
        "weights_total": report.weights_total,
        "units_kept": report.units_kept,
        "units_total": report.units_total,
        "model_weights": len(model.weights),
        "sizes": sizes,
        "stripped_vs_expected_max_abs_diff": max_diff,
        "latency": timings,
    }


def _work_dir() -> str:
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    return bench.WORK_DIR


def to_markdown(results: dict) -> str:
    if "error" in results:
        return f"Not available: {results['error']}"
    sizes = results["sizes"]
    dense_gz = sizes["dense"]["gzip_bytes"]
    rows = []
    labels = {
        "stripped": "stripped W* (`export_saved_model(..., optimizer=opt)`)",
        "dense": "dense W (`export_saved_model`)",
        "keras_export": "dense W (Keras 3 `model.export()`)",
    }
    for name in ("stripped", "dense", "keras_export"):
        size = sizes[name]
        rows.append((
            labels[name],
            f"{size['bytes'] / 1e6:.3f}",
            f"{size['gzip_bytes'] / 1e6:.3f}",
            f"{size['gzip_bytes'] / dense_gz:.2f}×",
            f"{size['checkpoint_variables']} (model has {results['model_weights']})",
        ))
    lat = results["latency"]
    kept = results["weights_kept"] / max(results["weights_total"], 1)
    acc = results["accuracy"]
    s = results["settings"]
    lines = [
        f"FMNIST-CNN-S, DessiLBI ({results['optimizer_source']}), "
        f"{s['epochs']} epoch(s){' on ' + str(s['train_limit']) + ' images' if s['train_limit'] else ''}: "
        f"{100 * kept:.2f} % of coupled weights kept "
        f"({results['weights_kept']}/{results['weights_total']}; units "
        f"{results['units_kept']}/{results['units_total']}); test accuracy dense W "
        f"{100 * acc['dense_w']:.2f} %, W* {100 * acc['w_star']:.2f} %.",
        "",
        bench.md_table(
            ("SavedModel", "size MB", "tar.gz MB", "gzip vs dense", "checkpoint variables"),
            rows,
        ),
        "",
        bench.md_table(
            ("serving_default, batch 128", "median ms", "p10 ms", "p90 ms", "batches"),
            [
                (name, f"{lat[name]['median_ms']:.2f}", f"{lat[name]['p10_ms']:.2f}",
                 f"{lat[name]['p90_ms']:.2f}", lat[name]["steps"])
                for name in ("stripped", "dense")
            ],
        ),
        "",
        f"Stripped/dense latency: {lat['stripped']['median_ms'] / lat['dense']['median_ms']:.2f}× "
        "(zeros are stored, not skipped: dense kernels compute the same FLOPs). "
        f"Served W* vs Keras W*: max |Δ| = {results['stripped_vs_expected_max_abs_diff']:.2e}.",
    ]
    return "\n".join(lines)


def main(argv=None):
    bench.part_main(__doc__, run, to_markdown, 'small smoke run', argv)


if __name__ == "__main__":
    main()

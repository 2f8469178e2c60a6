"""Deployable files: size, latency and accuracy of dense, stripped, shrunk and int8 exports.

    python -m bench.deploy --epochs fmnist=10 resnet20=3   # writes bench/DEPLOY.md

FMNIST-CNN-S and ResNet-20 (28×28×1) are trained under `bench.protocol`
(real Fashion-MNIST, the per-(seed, epoch) order, Nesterov 0.9, peak lr
0.05, warm-up then cosine) at the supports of the protocol configs
(``configs/fmnist_dessilbi_protocol.py``: filter groups,
``init+mu40+lam0.25+u0.5+trim``; ``configs/fmnist_resnet20_dessilbi_protocol.py``:
``unitinit+lam0.45+u0.5+trim``; `bench.parity.dessilbi_run`), beside the
dense SGD run of the same seed. Each network is then exported with
`tf_dessilbi.export_model` as

* dense float32 (the SGD model, no sparsity),
* stripped sparse (W* in the dense architecture, `tf_dessilbi.strip`),
* shrunk float32 / float16 / int8 (`tf_dessilbi.shrink`, then
  ``quantize=None`` / ``"float16"`` / ``"int8"`` — full-integer, the
  representative set drawn from the training images),

to LiteRT (``.tflite``) and ONNX (``.onnx``), and the peer: TF-MOT's 90 %
magnitude pruning of the dense SGD model (one epoch of pruned fine-tuning,
``strip_pruning``) converted to a full-integer int8 TFLite file the same way.

Each file's size, its accuracy on the 10k test images (run by the TFLite
interpreter / onnxruntime) and its latency at batch 1 and 128 (2 threads;
every file of a network alternated in blocks in one process,
`bench.serving.alternate_calls`: medians and quartiles) are reported.

Training is cached (``.keras`` files and JSON under ``bench/_work/deploy``),
so an interrupted run resumes; ``--train-only`` stops after training.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import bench
from bench import protocol

bench.quiet_tf()

RESULTS = os.path.join(bench.REPO_ROOT, "bench", "DEPLOY.md")
# (structure, recipe, the config's epochs) of each protocol config (bench.parity_recipe tokens).
RECIPES = {
    "fmnist": ("filter", "init+mu40+lam0.25+u0.5+trim", 10),
    "resnet20": ("filter", "unitinit+lam0.45+u0.5+trim", 3),
}
TFMOT_SPARSITY = 0.9
_log = bench.logger("deploy")


def _work_dir() -> str:
    return os.path.join(bench.WORK_DIR, "deploy")


def _paths(work, tag) -> dict:
    stem = os.path.join(work, tag)
    return {kind: f"{stem}_{kind}.keras" for kind in ("dense", "sparse", "shrunk")} | {
        "tfmot": f"{stem}_tfmot90.npz"}


def _save(model, path):
    tmp = path + f".tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


def train(model_name: str, epochs: int, seed: int = 0, limit: int = 0, work=None) -> dict:
    """Trains (or reads back) the SGD and DessiLBI models of one network; their ``.keras`` paths."""
    from bench import parity

    import tf_dessilbi as tfd

    work = work or _work_dir()
    os.makedirs(work, exist_ok=True)
    structure, recipe, _ = RECIPES[model_name]
    tag = f"{model_name}_e{epochs}_s{seed}" + (f"_l{limit}" if limit else "")
    paths = _paths(work, tag)

    def sparse_run():
        def keep(model, optimizer, data):
            _save(tfd.strip(model, optimizer), paths["sparse"])
            _save(tfd.shrink(model, optimizer=optimizer), paths["shrunk"])

        result = parity.dessilbi_run(model_name, structure, seed, epochs, work, limit=limit,
                                     recipe=recipe, on_trained=keep)
        result.pop("step_loss", None)
        return result

    def dense_run():
        import keras

        keras.utils.clear_session()
        data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
        model = parity.build(model_name, seed)
        result = protocol.train(model, data, epochs)
        _save(model, paths["dense"])
        result["tfmot"] = _tfmot_peer(model, data, seed, paths["tfmot"])
        return result

    out = {"dense": protocol.run_cached(work, tag + "_dense", dense_run),
           "sparse": protocol.run_cached(work, tag + "_dessilbi", sparse_run),
           "paths": paths}
    _log(f"{tag}: dense {out['dense']['accuracy']:.4f}, W* {out['sparse']['w_star_accuracy']:.4f}")
    return out


def _tfmot_peer(model, data, seed, path) -> dict:
    """TF-MOT's peer: 90 % magnitude masks, one pruned epoch of fine-tuning, `strip_pruning`.

    The stripped tf_keras model's weights are saved to ``path`` (``.npz``, in
    the order of ``tf_dessilbi.tfmot.to_tf_keras(model).weights``).
    """
    import tf_dessilbi as tfd

    tk = tfd.tfmot.to_tf_keras(model)
    masks = {}
    for layer in tk.layers:
        if type(layer).__name__ in ("Conv2D", "Dense") and layer.get_weights():
            k = layer.get_weights()[0]
            masks[layer.name] = np.abs(k) > np.quantile(np.abs(k), TFMOT_SPARSITY)
    pruned = tfd.tfmot.to_pruned(tk, masks)
    import tensorflow_model_optimization as tfmot  # loaded by the bridge
    import tf_keras

    pruned.compile(tf_keras.optimizers.SGD(0.01, momentum=0.9),
                   tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(data.batches(seed, data.steps_per_epoch), epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    weights = stripped.get_weights()
    tmp = path + f".tmp-{os.getpid()}.npz"
    np.savez(tmp, *weights)
    os.replace(tmp, path)
    kept = sum(int((stripped.get_layer(n).get_weights()[0] != 0).sum()) for n in masks)
    return {"weights_kept": kept / sum(m.size for m in masks.values()), "fine_tune_epochs": 1}


def _parse_epochs(items) -> dict:
    out = {name: cfg[2] for name, cfg in RECIPES.items()}
    for item in items or ():
        name, _, value = item.partition("=")
        if name not in RECIPES or not value.isdigit():
            raise SystemExit(f"--epochs takes NAME=E with NAME in {sorted(RECIPES)}; got {item!r}")
        out[name] = int(value)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs", nargs="*", help="NAME=E per network (default: the configs')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (smoke runs)")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    epochs = _parse_epochs(args.epochs)
    trained = {m: train(m, epochs[m], args.seed, args.limit) for m in args.models}
    if args.train_only:
        print(json.dumps({m: t["paths"] for m, t in trained.items()}, indent=1))
        return trained
    raise NotImplementedError("measurement stage: see below")


if __name__ == "__main__":
    main()

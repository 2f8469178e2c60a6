"""Deployable files: size, latency and accuracy of dense, stripped, shrunk and int8 exports.

    python -m bench.deploy --epochs fmnist=10 resnet20=3   # writes docs/research/reports/DEPLOY.md

FMNIST-CNN-S and ResNet-20 (28×28×1) are trained under `bench.protocol`
(real Fashion-MNIST, the per-(seed, epoch) order, Nesterov 0.9, peak lr
0.05, warm-up then cosine) at the supports of the protocol configs
(``tf_dessilbi/configs/fmnist_dessilbi_protocol.py``: filter groups,
``init+mu40+lam0.25+u0.5+trim``; ``tf_dessilbi/configs/fmnist_resnet20_dessilbi_protocol.py``:
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

RESULTS = os.path.join(bench.REPORTS_DIR, "DEPLOY.md")
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


ROWS = (  # (row, the .keras model, quantize of the LiteRT file, quantize of the ONNX file)
    ("dense float32", "dense", None, None),
    ("stripped sparse float32", "sparse", None, None),
    ("shrunk float32", "shrunk", None, None),
    ("shrunk float16", "shrunk", "float16", "-"),
    ("shrunk int8", "shrunk", "int8", "dynamic_int8"),
)
PEER = "TF-MOT 90 % → strip → int8"
BATCHES = (1, 128)


def _peer_file(dense, weights_path, representative, path) -> None:
    """TF-MOT's stripped 90 % model (tf_keras) as a full-integer int8 TFLite file."""
    import tensorflow as tf

    import tf_dessilbi as tfd
    from tf_dessilbi.export import convert

    tk = tfd.tfmot.to_tf_keras(dense)
    with np.load(weights_path) as f:
        tk.set_weights([f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))])
    converter = tf.lite.TFLiteConverter.from_keras_model(tk)
    for key, value in convert.litert_options("int8", representative).items():
        if key == "target_spec":
            for k, v in value.items():
                setattr(converter.target_spec, k, v)
        else:
            setattr(converter, key, value)
    with open(path, "wb") as f:
        f.write(converter.convert())


def _onnx_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def measure(model_name: str, trained: dict, seed: int = 0, blocks: int = 7, work=None,
            allow_dead: bool = False) -> dict:
    """Exports every row of one network, checks each file on the test set, times them side by side."""
    import keras

    import tf_dessilbi as tfd
    from bench import serving
    from tf_dessilbi.export import check as check_lib
    from tf_dessilbi.export import convert

    work = os.path.join(work or _work_dir(), "files", model_name)
    os.makedirs(work, exist_ok=True)
    data = protocol.load_data(seed, 1)
    x_test, y_test = data.x_test, data.y_test
    representative = data.x_train[np.random.RandomState(seed).permutation(len(data.x_train))[:256]]
    models = {k: keras.models.load_model(trained["paths"][k]) for k in ("dense", "sparse", "shrunk")}
    rows, files = [], {}
    for row, kind, q_tfl, q_onnx in ROWS:
        entry = {"row": row, "model": kind, "params": int(models[kind].count_params())}
        for fmt, quantize in (("litert", q_tfl), ("onnx", q_onnx)):
            if quantize == "-":
                continue
            path = os.path.join(work, f"{kind}_{quantize or 'float32'}{convert.SUFFIX[fmt]}")
            out = tfd.export_model(models[kind], path, format=fmt, quantize=quantize,
                                   representative_data=representative if quantize == "int8" else None,
                                   eval_data=(x_test, y_test), allow_dead=allow_dead)
            entry[fmt] = {"quantize": quantize, "bytes": out.size_bytes, **out.check.to_dict()}
            files[(row, fmt)] = path
            _log(f"{model_name} {row} {fmt}: {out.size_bytes} B, accuracy {out.check.accuracy:.4f}")
        rows.append(entry)
    peer_path = os.path.join(work, "tfmot90_int8.tflite")
    _peer_file(models["dense"], trained["paths"]["tfmot"], convert.representative_dataset(
        representative, models["dense"].inputs[0].shape), peer_path)
    peer = check_lib.compare(check_lib.run_file("litert", peer_path, x_test),
                             models["dense"].predict(x_test, batch_size=256, verbose=0),
                             y_test, quantized=True)
    rows.append({"row": PEER, "model": "tfmot", "params": int(models["dense"].count_params()),
                 "weights_kept": trained["dense"]["tfmot"]["weights_kept"],
                 "litert": {"quantize": "int8", "bytes": os.path.getsize(peer_path), **peer.to_dict()}})
    files[(PEER, "litert")] = peer_path
    latency = {}
    for batch in BATCHES:
        x = x_test[:batch]
        calls = {}
        for (row, fmt), path in files.items():
            if fmt == "litert":
                with open(path, "rb") as f:
                    call = serving.interpreter(f.read(), x.shape)
            else:
                call = _onnx_session(path)
            calls[f"{row}|{fmt}"] = (lambda c=call: c(x))
        per_block = max(3, 40 // batch) if batch > 1 else 40
        latency[f"b{batch}"] = serving.alternate_calls(calls, blocks, per_block)
        _log(f"{model_name} batch {batch} timed")
    return {"model": model_name, "rows": rows, "latency": latency,
            "epochs": trained["dense"]["epochs"], "seed": seed,
            "dense_accuracy_keras": trained["dense"]["accuracy"],
            "w_star_accuracy_keras": trained["sparse"]["w_star_accuracy"],
            "filters": [trained["sparse"]["filters_kept"], trained["sparse"]["filters_total"]]}


def _ms(latency, batch, key) -> str:
    t = latency[f"b{batch}"].get(key)
    return f"{t['median_ms']:.2f} [{t['p25_ms']:.2f}, {t['p75_ms']:.2f}]" if t else "—"


def _bytes(cell) -> str:
    return f"{cell['bytes']:,}" if cell else "—"


def _acc(cell) -> str:
    return f"{100 * cell['accuracy']:.2f}" if cell else "—"


def goals(result: dict) -> dict:
    """The issue's three goals on one network: size, accuracy, speed against the peer."""
    from bench import serving

    rows = {r["row"]: r for r in result["rows"]}
    dense, float_, int8 = rows["dense float32"], rows["shrunk float32"], rows["shrunk int8"]
    out = {"size_ratio": int8["litert"]["bytes"] / dense["litert"]["bytes"],
           "accuracy_drop_pt": 100 * (float_["litert"]["accuracy"] - int8["litert"]["accuracy"])}
    for batch in BATCHES:
        out[f"vs_peer_b{batch}"] = serving.ratio(result["latency"][f"b{batch}"],
                                                 "shrunk int8|litert", f"{PEER}|litert")
    return out


def to_markdown(results: dict) -> str:
    lines = ["# Deployable files: LiteRT, ONNX, float16 and int8 (bench/deploy.py)", "",
             "Command:", "", f"    {results['command']}", "",
             "Each file written by `tf_dessilbi.export_model` and checked by it in a fresh process "
             "(float files within 1e-5 relative of the Keras model); accuracy: the file run by the "
             "TFLite interpreter / onnxruntime on the 10k test images. Latency: ms per call, median "
             "[quartiles], 2 threads, every file of a network alternated in blocks in one process "
             f"({results['machine']}). ONNX int8 is onnxruntime's dynamic int8 (weights int8, "
             "activations quantized per call); LiteRT int8 is full-integer, calibrated on 256 training "
             "images."]
    for result in results["networks"]:
        lat, g = result["latency"], goals(result)
        lines += ["", f"## {result['model']} (protocol E = {result['epochs']}, seed {result['seed']}; "
                  f"Keras accuracy dense {100 * result['dense_accuracy_keras']:.2f} %, W* "
                  f"{100 * result['w_star_accuracy_keras']:.2f} % with {result['filters'][0]}/"
                  f"{result['filters'][1]} conv filters)", "",
                  "| file | parameters | LiteRT bytes | × dense | LiteRT acc % | ONNX bytes | ONNX acc % "
                  "| LiteRT b1 ms | LiteRT b128 ms | ORT b1 ms | ORT b128 ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        dense_bytes = result["rows"][0]["litert"]["bytes"]
        for r in result["rows"]:
            tfl, onnx = r.get("litert"), r.get("onnx")
            name = r["row"] + (f" ({100 * r['weights_kept']:.0f} % weights kept)" if "weights_kept" in r else "")
            lines.append(
                f"| {name} | {r['params']:,} | {tfl['bytes']:,} | {tfl['bytes'] / dense_bytes:.3f} "
                f"| {_acc(tfl)} | {_bytes(onnx)} "
                f"| {_acc(onnx)} | {_ms(lat, 1, r['row'] + '|litert')} | {_ms(lat, 128, r['row'] + '|litert')} "
                f"| {_ms(lat, 1, r['row'] + '|onnx')} | {_ms(lat, 128, r['row'] + '|onnx')} |")
        met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
        b1, b128 = g["vs_peer_b1"], g["vs_peer_b128"]
        lines += ["", f"Goals: shrunk int8 / dense float32 LiteRT bytes = {g['size_ratio']:.3f} "
                  f"(≤ 0.05: {met(g['size_ratio'] <= 0.05)}); int8 accuracy {g['accuracy_drop_pt']:+.2f} pt "
                  f"below shrunk float32 (≤ 0.5: {met(g['accuracy_drop_pt'] <= 0.5)}); latency / TF-MOT "
                  f"peer at batch 1 {b1['ratio']:.2f}× [{b1['block_ratio_p25']:.2f}, {b1['block_ratio_p75']:.2f}], "
                  f"batch 128 {b128['ratio']:.2f}× [{b128['block_ratio_p25']:.2f}, {b128['block_ratio_p75']:.2f}] "
                  f"(< 1: {met(b1['ratio'] < 1 and b128['ratio'] < 1)})."]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    import platform

    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared"


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
    import sys

    results = {"command": "python -m bench.deploy " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": _machine(),
               "networks": [measure(m, trained[m], args.seed, allow_dead=bool(args.limit)) for m in args.models]}
    os.makedirs(_work_dir(), exist_ok=True)
    with open(os.path.join(_work_dir(), "deploy.json"), "w") as f:
        json.dump(results, f, indent=1)
    report = to_markdown(results)
    tmp = args.out + f".tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(report)
    os.replace(tmp, args.out)
    print(report)
    return results


if __name__ == "__main__":
    main()

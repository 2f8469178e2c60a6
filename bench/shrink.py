"""Physical removal (`tf_dessilbi.shrink`): parameters, MACs, file sizes, latency, accuracy.

Contenders, each against its own dense-shaped sparse model (what a deployer
has without shrink: `tf_dessilbi.strip`, zeros stored and computed):

* FMNIST-CNN-S, DessiLBI with the default config (``tf_dessilbi/configs/fmnist_dessilbi.py``:
  structure "auto", conv filters as groups), trained on real Fashion-MNIST;
* FMNIST-CNN-S, DessiLBI with the config's ``filter_neuron`` structure
  (conv filters and fc1 neurons as groups);
* FMNIST-CNN-S with Continuous Sparsification *filter* gates (conv1–3 and
  fc1 gated per unit, β annealed), shrunk from the ticket (hard) masks;
* ResNet-20 on a synthetic 32×32×3 input, no training: a random structural
  mask at the default DessiLBI run's filter density, one mask per group of
  producers coupled by a residual stage (so the stage's channels can go);
* the peer: TF-MOT's stripped 90 %-sparse FMNIST-CNN-S (magnitude masks on
  the DessiLBI run's dense W, fine-tuned 1 epoch through the bridge,
  `strip_pruning`), against the same dense model.

For each: parameters, MACs (from shapes, `ShrinkReport`), gzip'd SavedModel
(`tf_dessilbi.export_saved_model`) and TFLite file sizes, latency of the
SavedModel ``serving_default`` and of the TFLite interpreter (2 threads) at
batch 1 and 128 — shrunk and dense alternated in blocks of 10 calls in one
process, median and IQR over ≥ 60 calls each — and test accuracy of the
sparse model, the shrunk model, and the shrunk model after one epoch of SGD
fine-tuning (all its weights train).

    python -m bench.shrink [--quick] [--json out.json]    # writes docs/research/reports/SHRINK.md
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import bench
from bench import serving

bench.quiet_tf()

RESULTS = os.path.join(bench.REPORTS_DIR, "SHRINK.md")


def _settings(quick: bool) -> dict:
    if quick:
        return {"epochs": 1, "cs_epochs": 1, "train_limit": 2048, "test_limit": 1000,
                "finetune_limit": 1024, "blocks": 2, "per_block": 5}
    return {"epochs": 3, "cs_epochs": 2, "train_limit": None, "test_limit": None,
            "finetune_limit": None, "blocks": 6, "per_block": 10}


def _accuracy(model, test) -> float:
    import numpy as np

    right = total = 0
    for x, y in test:
        pred = np.argmax(np.asarray(model(x, training=False)), axis=-1)
        right += int((pred == y.numpy()).sum())
        total += len(pred)
    return right / total


def _compare(dense, shrunk, s, work, tag, x128, tf_keras_dense=False) -> dict:
    """Sizes and latencies of ``shrunk`` vs ``dense`` (both Keras 3, or both tf_keras)."""
    import numpy as np

    serve_d, gz_d = serving.saved_model(dense, work, tag + "_dense", tf_keras_dense)
    serve_s, gz_s = serving.saved_model(shrunk, work, tag + "_shrunk", tf_keras_dense)
    tfl_d = serving.tflite(dense, work, tag + "_dense", tf_keras_dense)
    tfl_s = serving.tflite(shrunk, work, tag + "_shrunk", tf_keras_dense)
    result = {"gzip_savedmodel_bytes": {"dense": gz_d, "shrunk": gz_s},
              "tflite_bytes": {"dense": len(tfl_d), "shrunk": len(tfl_s)}, "latency": {}}
    for batch in (1, 128):
        x = np.ascontiguousarray(x128[:batch])
        sm = serving.alternate_calls({"shrunk": lambda: serve_s(x).numpy(), "dense": lambda: serve_d(x).numpy()},
                        s["blocks"], s["per_block"])
        it_s, it_d = serving.interpreter(tfl_s, x.shape), serving.interpreter(tfl_d, x.shape)
        tl = serving.alternate_calls({"shrunk": lambda: it_s(x), "dense": lambda: it_d(x)},
                        s["blocks"], s["per_block"])
        result["latency"][f"savedmodel_b{batch}"] = {**sm, **serving.ratio(sm)}
        result["latency"][f"tflite_b{batch}"] = {**tl, **serving.ratio(tl)}
    return result


# -- models -----------------------------------------------------------------------
def _hparams():
    try:
        from bench.accuracy.config import dessilbi_hparams

        hp = dessilbi_hparams()
        return dict(hp["optimizer"]), hp["source"]
    except Exception as e:  # noqa: BLE001 - a config being edited elsewhere
        return {"learning_rate": 0.05, "mu": 20.0, "lambda_": 1.5}, f"fallback ({e})"


def _filter_neuron(model):
    import tf_dessilbi

    mapping = tf_dessilbi.structures_for(model)
    last = list(mapping)[-1]
    return {k: ("neuron" if v == "elementwise" and k != last else v) for k, v in mapping.items()}


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train_dessilbi(structure, s, train):
    import keras

    import tf_dessilbi
    from tf_dessilbi.models import fmnist_cnn_s

    keras.utils.set_random_seed(0)
    model = fmnist_cnn_s()
    kwargs, _ = _hparams()
    if structure == "filter_neuron":
        kwargs["structure"] = _filter_neuron(model)
    opt = tf_dessilbi.DessiLBI(**kwargs)
    model.compile(opt, _loss())
    t0 = time.time()
    model.fit(train, epochs=s["epochs"], verbose=0)
    return model, opt, time.time() - t0


def _train_cs(s, train):
    import keras

    import tf_dessilbi
    from tf_dessilbi.callbacks import GateTemperature
    from tf_dessilbi.models import fmnist_cnn_s

    keras.utils.set_random_seed(0)
    base = fmnist_cnn_s()
    gated = tf_dessilbi.gate_model(
        base, layer_filter=lambda layer: layer.name in ("conv1", "conv2", "conv3", "fc1"),
        granularity="filter", penalty=CS_PENALTY, gate_init=0.0,
    )
    gated.compile(keras.optimizers.SGD(0.05, momentum=0.9), _loss())
    t0 = time.time()
    gated.fit(train, epochs=s["cs_epochs"], verbose=0,
              callbacks=[GateTemperature(200.0, epochs=s["cs_epochs"])])
    tf_dessilbi.set_ticket_mode(gated, True)
    return gated, time.time() - t0


CS_PENALTY = 1e-6  # filter gates: 1e-4 emptied every conv layer in 2 epochs, 1e-6 kept 4/8/13


def _finetune(model, s, train_ft):
    import keras

    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), _loss())
    model.fit(train_ft, epochs=1, verbose=0)
    return model


def _fmnist_case(name, sparse_source, s, data, work, x128):
    """Shrinks a trained FMNIST model and measures it against its stripped (dense) copy."""
    import keras

    import tf_dessilbi
    from tf_dessilbi.shrink import shrink

    model, optimizer = sparse_source
    train, test, train_ft = data
    dense = tf_dessilbi.strip(model, optimizer)
    t0 = time.time()
    small, report = shrink(model, optimizer=optimizer, return_report=True)
    shrink_s = time.time() - t0
    diff = float(abs(keras.ops.convert_to_numpy(small(x128)) -
                     keras.ops.convert_to_numpy(dense(x128))).max())
    acc = {"sparse": _accuracy(dense, test), "shrunk": _accuracy(small, test)}
    result = {"name": name, "report": report.to_dict(), "shrink_seconds": shrink_s,
              "max_abs_diff_vs_sparse": diff,
              "widths": {r.layer: [r.units_before, r.units_after] for r in report.rows},
              **_compare(dense, small, s, work, name, x128)}
    clone = keras.models.clone_model(small)
    clone.set_weights(small.get_weights())
    acc["shrunk_finetuned_1_epoch"] = _accuracy(_finetune(clone, s, train_ft), test)
    result["accuracy"] = acc
    return result


def _coupled_masks(model, density, seed=0):
    """A random unit mask per producer, shared by producers coupled through merges."""
    import numpy as np

    from tf_dessilbi.dependency import graph as graph_lib

    g = graph_lib.Graph(model)
    roots = g.uf.roots()
    rng = np.random.default_rng(seed)
    shared, masks = {}, {}
    for info in g.producers():
        if info.layer.name in ("logits", "out", "dense"):
            continue
        key = tuple(roots[info.out_elems].tolist())
        if key not in shared:
            keep = np.zeros(len(key), bool)
            keep[rng.choice(len(key), max(1, round(density * len(key))), replace=False)] = True
            shared[key] = keep
        masks[info.layer.name] = shared[key]
    return masks


def _resnet_case(s, work, density):
    import numpy as np

    from tf_dessilbi.models import resnet20
    from tf_dessilbi.shrink import shrink

    model = resnet20(input_shape=(32, 32, 3), num_classes=10)
    masks = _coupled_masks(model, density)
    dense = model  # the sparse model: kernel columns of removed units zeroed
    for name, keep in masks.items():
        layer = model.get_layer(name)
        kernel, *rest = layer.get_weights()
        kernel[..., ~keep] = 0
        layer.set_weights([kernel, *rest])
    small, report = shrink(dense, masks, return_report=True)
    x128 = np.random.default_rng(0).standard_normal((128, 32, 32, 3)).astype("float32")
    diff = float(np.abs(np.asarray(small(x128)) - np.asarray(dense(x128))).max())
    return {"name": "resnet20_synthetic", "report": report.to_dict(), "density": density,
            "max_abs_diff_vs_sparse": diff,
            **_compare(dense, small, s, work, "resnet20", x128)}


def _tfmot_case(model, optimizer, s, data, work, x128):
    """TF-MOT's stripped 90 %-sparse model vs the dense one (the peer)."""
    import numpy as np

    import tf_dessilbi

    train, test, train_ft = data
    tk = tf_dessilbi.tfmot.to_tf_keras(model)  # dense W
    masks = {}
    for layer in tk.layers:
        if layer.name in ("conv1", "conv2", "conv3", "fc1", "logits"):
            k = layer.get_weights()[0]
            masks[layer.name] = np.abs(k) > np.quantile(np.abs(k), 0.9)
    pruned = tf_dessilbi.tfmot.to_pruned(tk, masks)
    # The bridge has imported tf_keras and TF-MOT (without leaking
    # TF_USE_LEGACY_KERAS); these imports only fetch the loaded modules.
    import tensorflow_model_optimization as tfmot
    import tf_keras

    pruned.compile(tf_keras.optimizers.SGD(0.01, momentum=0.9),
                   tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(train_ft, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    dense = tf_dessilbi.tfmot.to_tf_keras(model)
    kept = sum(int((lyr.get_weights()[0] != 0).sum()) for lyr in stripped.layers
               if lyr.name in masks)
    total = sum(m.size for m in masks.values())
    result = {"name": "tfmot_strip_90", "weights_kept": kept / total,
              "accuracy": {"tfmot_90_finetuned_1_epoch": _accuracy(stripped, test)}}
    result.update(_compare(dense, stripped, s, work, "tfmot", x128, tf_keras_dense=True))
    # _compare calls the second model "shrunk"; here it is TF-MOT's stripped model.
    result["params"] = {"dense": int(dense.count_params()), "tfmot": int(stripped.count_params())}
    return result


def run(quick: bool = False) -> dict:
    import numpy as np

    from tf_dessilbi.training.data import fashion_mnist_datasets

    s = _settings(quick)
    train, test = fashion_mnist_datasets(128, train_limit=s["train_limit"], test_limit=s["test_limit"])
    train_ft, _ = fashion_mnist_datasets(128, train_limit=s["finetune_limit"], test_limit=10)
    x128 = np.concatenate([x.numpy() for x, _ in test.take(1)])[:128]
    data = (train, test, train_ft)
    work = tempfile.mkdtemp(prefix="shrink_", dir=_work_dir())
    results = {"quick": quick, "settings": s, "hparams": _hparams(), "cases": [],
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "load_average_start": os.getloadavg()}
    t_start = time.time()
    try:
        model, opt, train_s = _train_dessilbi("auto", s, train)
        case = _fmnist_case("fmnist_dessilbi_default", (model, opt), s, data, work, x128)
        case["train_seconds"] = train_s
        results["cases"].append(case)
        conv_rows = [r for r in case["report"]["layers"] if r["layer"].startswith("conv")]
        density = sum(r["units_after"] for r in conv_rows) / sum(r["units_before"] for r in conv_rows)
        results["cases"].append(_tfmot_case(model, opt, s, data, work, x128))
        model_fn, opt_fn, train_s = _train_dessilbi("filter_neuron", s, train)
        case = _fmnist_case("fmnist_dessilbi_filter_neuron", (model_fn, opt_fn), s, data, work, x128)
        case["train_seconds"] = train_s
        results["cases"].append(case)
        gated, train_s = _train_cs(s, train)
        case = _fmnist_case("fmnist_cs_filter_gates", (gated, None), s, data, work, x128)
        case["train_seconds"] = train_s
        case["cs_penalty"] = CS_PENALTY
        results["cases"].append(case)
        results["cases"].append(_resnet_case(s, work, density))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["wall_minutes"] = (time.time() - t_start) / 60
    results["load_average_end"] = os.getloadavg()
    return results


def _work_dir() -> str:
    os.makedirs(bench.WORK_DIR, exist_ok=True)
    return bench.WORK_DIR


# -- markdown ---------------------------------------------------------------------
def _lat(case, key) -> str:
    lat = case["latency"][key]
    return (f"{lat['ratio']:.2f}× ({lat['shrunk']['median_ms']:.2f} / {lat['dense']['median_ms']:.2f} ms; "
            f"IQR {lat['shrunk']['p25_ms']:.2f}–{lat['shrunk']['p75_ms']:.2f} / "
            f"{lat['dense']['p25_ms']:.2f}–{lat['dense']['p75_ms']:.2f}; "
            f"block ratios {lat['block_ratio_p25']:.2f}–{lat['block_ratio_p75']:.2f})")


def _load(results, key) -> str:
    return ", ".join(f"{v:.1f}" for v in results[key])


def to_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# shrink: physical removal of filters and neurons",
        "",
        f"Generated by `python -m bench.shrink{' --quick' if results['quick'] else ''}` "
        f"(started {results['started']}, {results['wall_minutes']:.1f} min wall) on "
        f"{os.cpu_count()} shared CPU cores, TensorFlow backend, float32. "
        f"DessiLBI hyperparameters: {results['hparams'][1]}, {s['epochs']} epoch(s)"
        f"{' on ' + str(s['train_limit']) + ' images' if s['train_limit'] else ' on the full training set'}; "
        f"CS gates {s['cs_epochs']} epoch(s)."
        + (f" Load average at start {_load(results, 'load_average_start')}, at end "
           f"{_load(results, 'load_average_end')}." if "load_average_start" in results else ""),
        "",
        "Latency cells: shrunk/dense ratio of medians (shrunk / dense median ms; IQR of every "
        f"call; quartiles of the per-block ratios), {s['blocks']} alternating blocks × "
        f"{s['per_block']} calls per contender. Dense = the stripped sparse model of the same "
        "architecture (what `export_saved_model(..., optimizer=opt)` serves today).",
        "",
    ]
    header = ("model", "params", "MACs", "SavedModel tar.gz", "TFLite file",
              "SavedModel b1", "SavedModel b128", "TFLite b1", "TFLite b128")
    rows = []
    for case in results["cases"]:
        gz, tfl = case["gzip_savedmodel_bytes"], case["tflite_bytes"]
        if "report" in case:
            t = case["report"]["totals"]
            params = f"{t['params_before']:,} → {t['params_after']:,} ({t['params_ratio']:.2f}×)"
            macs = f"{t['macs_before']:,} → {t['macs_after']:,} ({t['macs_ratio']:.2f}×)"
        else:
            p = case["params"]
            params = f"{p['dense']:,} → {p['tfmot']:,} (1.00×, {100 * case['weights_kept']:.0f} % nonzero)"
            macs = "unchanged (1.00×)"
        rows.append((
            case["name"], params, macs,
            f"{gz['shrunk'] / 1e3:.0f} / {gz['dense'] / 1e3:.0f} kB ({gz['shrunk'] / gz['dense']:.2f}×)",
            f"{tfl['shrunk'] / 1e3:.0f} / {tfl['dense'] / 1e3:.0f} kB ({tfl['shrunk'] / tfl['dense']:.2f}×)",
            *(_lat(case, k) for k in ("savedmodel_b1", "savedmodel_b128", "tflite_b1", "tflite_b128")),
        ))
    lines.append(bench.md_table(header, rows))
    lines += ["", "## Accuracy (test set) and widths", ""]
    acc_rows = []
    for case in results["cases"]:
        acc = case.get("accuracy", {})
        widths = ", ".join(f"{k} {a}→{b}" for k, (a, b) in case.get("widths", {}).items()
                           if a != b or k.startswith("conv"))
        acc_rows.append((
            case["name"],
            " / ".join(f"{k} {100 * v:.2f} %" for k, v in acc.items()) or "not measured (synthetic)",
            f"{case.get('max_abs_diff_vs_sparse', float('nan')):.1e}"
            if "max_abs_diff_vs_sparse" in case else "–",
            widths or "–",
        ))
    lines.append(bench.md_table(("model", "accuracy", "max |shrunk − sparse| (logits)", "widths"), acc_rows))
    lines += [""]
    for case in results["cases"]:
        if "report" in case:
            r = case["report"]
            lines.append(
                f"- {case['name']}: removed {sum(map(len, r['removed'].values()))} units, "
                f"folded {sum(map(len, r['folded'].values()))}, zeroed {sum(map(len, r['zeroed'].values()))}"
                + (f"; shrink() took {case['shrink_seconds']:.1f} s" if "shrink_seconds" in case else "")
                + (f"; trained {case['train_seconds'] / 60:.1f} min" if "train_seconds" in case else "")
                + (f"; random mask at filter density {case['density']:.2f}" if "density" in case else "")
                + (f"; CS penalty {case['cs_penalty']}" if "cs_penalty" in case else "")
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    import json

    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    results = run(quick)
    if "--json" in args:
        with open(args[args.index("--json") + 1], "w") as f:
            json.dump(results, f, indent=1, default=str)
    text = to_markdown(results)
    if not quick:
        with open(RESULTS, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()

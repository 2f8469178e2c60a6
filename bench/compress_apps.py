"""A keras.applications network end to end: train → compress → shrink → TFLite, on real data.

    python -m bench.compress_apps [--epochs 1] [--fine-tune-epochs 1] [--macs 0.5] [--limit N]

MobileNetV2 (α 0.35, ``weights=None``) on Fashion-MNIST padded to 32×32 and
tiled to 3 channels (the protocol's normalization and batch order), trained
dense with the protocol's SGD, compressed with `tf_dessilbi.Pruner` (filter
L1, ``round_to`` 8) to ``--macs`` of its MACs, fine-tuned, converted to
TFLite, and the TFLite model's accuracy measured on the 10k test images.
BatchNormalization momentum is set to 0.9 for the short run (Keras' 0.999
leaves the moving statistics unconverged after a few epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import bench

bench.quiet_tf()

from bench import protocol  # noqa: E402

_log = bench.logger("compress-apps")


def _to_rgb32(x):
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.repeat(x, 3, axis=-1)


def run(args) -> dict:
    import keras
    import tensorflow as tf

    import tf_dessilbi
    from bench import serving

    data = protocol.load_data(args.seed, args.epochs + args.fine_tune_epochs,
                              train_limit=args.limit or None, test_limit=args.limit or None)
    xte = _to_rgb32(data.x_test)
    train = data.train.map(lambda x, y: (tf.repeat(tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]]), 3, -1), y))
    test = tf.data.Dataset.from_tensor_slices((xte, data.y_test)).batch(512)
    keras.utils.set_random_seed(args.seed)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None)
    # keras.applications' BatchNormalization momentum is 0.999: after a few epochs the moving
    # statistics still hold the first steps' and the model predicts one class in inference
    # mode (10.0 % with 72 % in training mode, measured). 0.9 follows the short run.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.perf_counter()
    model.compile(optimizer=protocol.make_sgd(data.steps_per_epoch, args.epochs), loss=loss,
                  metrics=["accuracy"])
    model.fit(train, steps_per_epoch=data.steps_per_epoch, epochs=args.epochs, verbose=0)
    dense_acc = float(model.evaluate(test, verbose=0)[1])
    _log(f"dense MobileNetV2: {dense_acc:.4f} ({time.perf_counter() - t0:.0f} s)")
    pruner = tf_dessilbi.Pruner(model, "l1", macs=args.macs, round_to=8)
    small = pruner.step()
    report = pruner.reports[-1]
    steps = data.steps_per_epoch * args.fine_tune_epochs
    small.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, steps),
                                                 momentum=0.9, nesterov=True), loss=loss, metrics=["accuracy"])
    small.fit(train.skip(data.steps_per_epoch * args.epochs), steps_per_epoch=steps, epochs=1, verbose=0)
    small_acc = float(small.evaluate(test, verbose=0)[1])
    work = os.path.join(bench.WORK_DIR, "compress", "apps")
    os.makedirs(work, exist_ok=True)
    flat = serving.tflite(small, work, "mobilenetv2_small")
    dense_flat = serving.tflite(model, work, "mobilenetv2_dense")
    batch = 500 if len(xte) % 500 == 0 else 1
    interp = serving.interpreter(flat, (batch, 32, 32, 3))
    correct = sum(int((np.argmax(interp(xte[i:i + batch]), -1) == data.y_test[i:i + batch]).sum())
                  for i in range(0, len(xte), batch))
    result = {
        "dense_accuracy": dense_acc, "shrunk_accuracy": small_acc, "tflite_accuracy": correct / len(xte),
        "macs_ratio": report.macs_after / report.macs_before,
        "params_ratio": report.params_after / report.params_before,
        "macs": [report.macs_before, report.macs_after], "tflite_bytes": [len(dense_flat), len(flat)],
        "args": vars(args), "wall_s": time.perf_counter() - t0,
    }
    _log(json.dumps({k: v for k, v in result.items() if k != "args"}))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fine-tune-epochs", type=int, default=1)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    tag = f"e{args.epochs}_f{args.fine_tune_epochs}_m{args.macs}" + (f"_limit{args.limit}" if args.limit else "")
    result = protocol.run_cached(os.path.join(bench.WORK_DIR, "compress"), f"apps_mobilenetv2_{tag}",
                                 lambda: run(args))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

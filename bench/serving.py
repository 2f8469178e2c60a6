"""Serving latency, side by side: SavedModel and TFLite call timers shared by the export benchmarks.

`alternate_calls` times several zero-argument callables alternately in
blocks (odd blocks reversed) in one process, so a noisy shared machine
slows every contender alike; `ratio` is the ratio of medians with the
quartiles of the per-block ratios (the spread).
"""

from __future__ import annotations

import os
import statistics
import time


def alternate_calls(contenders: dict, blocks: int, per_block: int) -> dict:
    """Alternates ``{name: fn()}`` in blocks; median and IQR (ms) of every call."""
    for fn in contenders.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in contenders}
    block_medians = {name: [] for name in contenders}
    names = list(contenders)
    for block in range(blocks):
        for name in (names if block % 2 == 0 else names[::-1]):
            ts = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                contenders[name]()
                ts.append(time.perf_counter() - t0)
            times[name] += ts
            block_medians[name].append(statistics.median(ts))
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive")
        out[name] = {"median_ms": 1e3 * statistics.median(ts), "p25_ms": 1e3 * q[0],
                     "p75_ms": 1e3 * q[2], "calls": len(ts),
                     "block_median_ms": [1e3 * t for t in block_medians[name]]}
    return out


def ratio(timing, a="shrunk", b="dense") -> dict:
    """median(a) / median(b) over every call, and the quartiles of the per-block ratios."""
    ratios = [x / y for x, y in zip(timing[a]["block_median_ms"], timing[b]["block_median_ms"])]
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"ratio": timing[a]["median_ms"] / timing[b]["median_ms"],
            "block_ratio_p25": q[0], "block_ratio_p75": q[2]}


def saved_model(model, work, name, tf_keras_model=False):
    """Exports ``model`` under ``work/name``; ``(serve(x) -> logits, gzip'd bytes)``."""
    import tensorflow as tf

    import tf_dessilbi

    from bench.export_size import gzip_bytes

    path = os.path.join(work, name)
    if tf_keras_model:
        path = os.path.join(path, "1")
        tf.saved_model.save(model, path)
    else:
        path = tf_dessilbi.export_saved_model(model, path)
    sig = tf.saved_model.load(path).signatures["serving_default"]
    key = list(sig.structured_input_signature[1])[0]
    return (lambda x: list(sig(**{key: x}).values())[0]), gzip_bytes(path)


def tflite(model, work, name, tf_keras_model=False) -> bytes:
    """``model`` converted to a TFLite flatbuffer (Keras 3 through its exported SavedModel)."""
    import tensorflow as tf

    if tf_keras_model:
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = os.path.join(work, name + "_tfl")
    model.export(path, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(path).convert()


def interpreter(flatbuffer, batch_shape):
    """A TFLite interpreter (2 threads) for ``batch_shape`` as ``call(x) -> logits``."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=flatbuffer, num_threads=2)
    idx = it.get_input_details()[0]["index"]
    it.resize_tensor_input(idx, list(batch_shape))
    it.allocate_tensors()
    out = it.get_output_details()[0]["index"]

    def call(x):
        it.set_tensor(idx, x)
        it.invoke()
        return it.get_tensor(out)

    return call

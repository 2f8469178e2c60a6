"""The CLI's exports: ``config.outputs.formats`` (saved_model, litert, onnx) and ``config.outputs.quantize``.

Every file goes through `tf_dessilbi.export_model`, so each is checked in a
fresh process on the eval split (up to `EVAL_EXAMPLES` examples) and the
summary lists its path, size and accuracy beside the Keras model's. With
``quantize`` set, each format that offers it gets a quantized file beside
its float one (LiteRT: float16, dynamic_int8, int8; ONNX: dynamic_int8),
``int8`` calibrated on training inputs (`CALIBRATION_EXAMPLES`).
"""

from __future__ import annotations

import os

import numpy as np

from tf_dessilbi.export import convert

EVAL_EXAMPLES = 10_000
_EVAL_BYTES = 1 << 30  # fewer examples for large inputs (e.g. 224×224×3)
CALIBRATION_EXAMPLES = 256


def _arrays(dataset, limit: int):
    """Up to `limit` ``(x, y)`` examples of a dataset of ``(x, y)`` batches, as arrays."""
    xs, ys, n = [], [], 0
    for x, y in dataset:
        x = np.asarray(x, np.float32)
        limit = min(limit, max(1, _EVAL_BYTES // max(x[0].nbytes, 1)))
        xs.append(x)
        ys.append(np.asarray(y))
        n += len(x)
        if n >= limit:
            break
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


def file_name(fmt: str, quantize) -> str:
    """``model.tflite``, ``model_int8.tflite``, ``model.onnx``, ... under ``workdir/export``."""
    return "model" + (f"_{quantize}" if quantize else "") + convert.SUFFIX[fmt]


def export_all(config, workdir: str, model, optimizer, data) -> list:
    """Writes every format of ``config.outputs.formats``; one summary dict per file.

    Args:
        model: the model to export (the shrunk one, or the trained one with
            its DessiLBI `optimizer` for W*).
        data: the run's `input_pipeline.Datasets` (eval split, training inputs).
    """
    from tf_dessilbi.export.formats import export_model

    outputs = config.outputs
    quantize = outputs.quantize or None  # "" in a config: float files only
    eval_data = _arrays(data.eval, EVAL_EXAMPLES)
    representative = _arrays(data.train, CALIBRATION_EXAMPLES)[0] if quantize == "int8" else None
    jobs = []
    for fmt in outputs.formats:
        if fmt == "saved_model":
            jobs.append((fmt, None, os.path.join(workdir, "export")))
            continue
        jobs.append((fmt, None, os.path.join(workdir, "export", file_name(fmt, None))))
        if quantize in convert.FORMAT_QUANTIZE[fmt] and quantize is not None:
            jobs.append((fmt, quantize, os.path.join(workdir, "export", file_name(fmt, quantize))))
    files = []
    for fmt, quantize, path in jobs:
        out = export_model(
            model, path, format=fmt, optimizer=optimizer, quantize=quantize,
            representative_data=representative if quantize == "int8" else None,
            eval_data=eval_data, allow_dead=True,  # the CLI refused dead models before this
            version=outputs.export_version if fmt == "saved_model" else None)
        files.append({"path": os.path.abspath(out.path), **out.to_dict(),
                      "path_relative": os.path.relpath(out.path, workdir)})
    return files


def table(files: list) -> str:
    """The summary's lines: each file, its size and its checked accuracy."""
    lines = [f"{'file':<34} {'format':<12} {'quantize':<13} {'size':>12} {'accuracy':>9} {'Keras':>7}"]
    for f in files:
        check = f.get("check") or {}
        acc = check.get("accuracy")
        ref = check.get("reference_accuracy")
        lines.append(
            f"{f['path_relative']:<34} {f['format']:<12} {f['quantize'] or 'float32':<13} "
            f"{f['size_bytes']:>12,} {'' if acc is None else f'{acc:.4f}':>9} "
            f"{'' if ref is None else f'{ref:.4f}':>7}")
    return "\n".join(lines)

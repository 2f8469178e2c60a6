"""Single-file converters on Keras' own exporters: LiteRT (``.tflite``) and ONNX (``.onnx``).

LiteRT goes through ``model.export(format="litert")`` (Keras' ExportArchive,
then the TFLite converter), with the converter settings of each
quantization; ONNX through ``model.export(format="onnx")`` (tf2onnx), and
``dynamic_int8`` through onnxruntime's ``quantize_dynamic``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os

import numpy as np

FORMATS = ("saved_model", "litert", "onnx")
QUANTIZE = (None, "float16", "dynamic_int8", "int8")
# The quantizations each format offers.
FORMAT_QUANTIZE = {
    "saved_model": (None,),
    "litert": QUANTIZE,
    "onnx": (None, "dynamic_int8"),
}
SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}
# The modules each format needs beyond the package's own, and the extra that installs them.
EXTRAS = {"onnx": ("onnx", ("tf2onnx", "onnx", "onnxruntime"))}
CALIBRATION_EXAMPLES = 256


def require(fmt: str) -> None:
    """Raises ImportError naming the extra to install when `fmt` lacks a dependency."""
    if fmt not in EXTRAS:
        return
    extra, modules = EXTRAS[fmt]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"export_model(format={fmt!r}) needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install them with "
            f"`pip install \"tf_dessilbi[{extra}]\"`.")


def _examples(data, limit: int):
    """Up to `limit` single input examples (float32 arrays) from arrays, ``(x, y)`` or a `tf.data` set."""
    if isinstance(data, tuple) and len(data) == 2:
        data = data[0]
    if isinstance(data, np.ndarray):
        return list(np.asarray(data[:limit], np.float32))
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        out = []
        for element in data:
            x = element[0] if isinstance(element, (tuple, list)) else element
            x = np.asarray(x, np.float32)
            out.extend(x if x.ndim > 1 else [x])  # a batch, or one example
            if len(out) >= limit:
                break
        return out[:limit]
    raise TypeError(
        "`representative_data` must be a NumPy array of inputs, an (x, y) tuple of arrays "
        f"or a tf.data.Dataset of inputs or (inputs, labels). Received: "
        f"representative_data of type {type(data).__name__}")


def representative_dataset(data, input_shape, limit: int = CALIBRATION_EXAMPLES):
    """The TFLite converter's ``representative_dataset``: one-example batches of `data`."""
    examples = _examples(data, limit)
    if not examples:
        raise ValueError("`representative_data` holds no examples; int8 calibration needs some.")
    expected = tuple(input_shape[1:])
    got = tuple(np.shape(examples[0]))
    if got != expected and got[1:] == expected and got[0] == 1:
        examples = [e[0] for e in examples]
    elif got != expected:
        raise ValueError(
            f"`representative_data` examples have shape {got}; the model takes {expected} "
            f"per example (input shape {tuple(input_shape)}).")

    def generate():
        for example in itertools.islice(examples, limit):
            yield [example[None]]

    return generate


def litert_options(quantize, representative=None, int8_io: bool = False) -> dict:
    """The TFLite converter settings (``model.export(format="litert", **options)``) of `quantize`."""
    import tensorflow as tf

    if quantize is None:
        return {}
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif quantize == "int8":
        options["representative_dataset"] = representative
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
        if int8_io:
            options["inference_input_type"] = tf.int8
            options["inference_output_type"] = tf.int8
    return options


def write_litert(model, path: str, quantize=None, representative=None, int8_io=False) -> None:
    """Writes `model` to `path` (``.tflite``) with the converter settings of `quantize`."""
    from tf_dessilbi.export.saved_model import _quiet_tf_logs

    with _quiet_tf_logs():
        model.export(path, format="litert", verbose=False,
                     **litert_options(quantize, representative, int8_io))


def write_onnx(model, path: str, quantize=None) -> None:
    """Writes `model` to `path` (``.onnx``); ``dynamic_int8`` quantizes its weights with onnxruntime."""
    from tf_dessilbi.export.saved_model import _quiet_tf_logs

    if quantize is None:
        # Keras' ONNX exporter refuses a model never called (a clone from strip/shrink).
        model(np.zeros((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype), training=False)
        with _quiet_tf_logs():
            model.export(path, format="onnx", verbose=False)
        return
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic

    float_path = path + ".float.onnx"
    try:
        write_onnx(model, float_path)
        quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
    finally:
        if os.path.exists(float_path):
            os.remove(float_path)


WRITERS = {"litert": write_litert, "onnx": write_onnx}

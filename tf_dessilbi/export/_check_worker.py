"""Runs an exported file on inputs, in a fresh process: ``python _check_worker.py FORMAT PATH IN OUT``.

Run by file path (not as a package module), so the check process imports
only the runtime of its format — the TFLite interpreter, onnxruntime or
TensorFlow's SavedModel loader — and nothing of the package or of Keras:
what a deployment has. ``IN`` is an ``.npz`` with ``x`` (float32); ``OUT``
receives ``y``, the float outputs (an int8-input/-output LiteRT file is fed
quantized inputs and its outputs are dequantized with the file's own scales).
"""

import os
import sys

import numpy as np

_CHUNK = 256


def _quantize(x, detail):
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y, detail):
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_litert(path, x):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter
    it = Interpreter(model_path=path, num_threads=2)
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    ys, shape = [], None
    for start in range(0, len(x), _CHUNK):
        chunk = x[start:start + _CHUNK]
        if chunk.shape != shape:
            it.resize_tensor_input(inp["index"], list(chunk.shape))
            it.allocate_tensors()
            inp, out = it.get_input_details()[0], it.get_output_details()[0]
            shape = chunk.shape
        if inp["dtype"] != np.float32:
            chunk = _quantize(chunk, inp)
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        y = it.get_tensor(out["index"])
        ys.append(_dequantize(y, out) if out["dtype"] != np.float32 else y.copy())
    return np.concatenate(ys)


def run_onnx(path, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[s:s + _CHUNK]})[0]
                           for s in range(0, len(x), _CHUNK)])


def run_saved_model(path, x):
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures["serving_default"]
    key = list(signature.structured_input_signature[1])[0]
    ys = []
    for s in range(0, len(x), _CHUNK):
        outputs = signature(**{key: tf.constant(x[s:s + _CHUNK])})
        # The model's output: the first floating one (a serving signature may add class names).
        floating = sorted(k for k, v in outputs.items() if v.dtype.is_floating)
        ys.append(tf.cast(outputs[floating[0]], tf.float32).numpy())  # bfloat16 does not survive .npy
    return np.concatenate(ys)


RUNNERS = {"litert": run_litert, "onnx": run_onnx, "saved_model": run_saved_model}


def main(argv):
    fmt, path, inputs, outputs = argv
    x = np.load(inputs)["x"].astype(np.float32)
    y = RUNNERS[fmt](path, x)
    tmp = outputs + ".tmp.npy"
    np.save(tmp, y)
    os.replace(tmp, outputs)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1:])

"""`export_model`: one export call for SavedModel, LiteRT and ONNX, float or quantized, each checked.

The model is first made plain — `strip` (W* for a DessiLBI optimizer, the
wrappers' masks) or, with ``shrink=True``, `tf_dessilbi.shrink` (the removed
filters and neurons physically gone) — then written by Keras' own exporters
and the TFLite converter (`tf_dessilbi.export.convert`). A LiteRT or ONNX
file is written to a hidden temporary file beside the target, run in a fresh
process against the plain in-memory model (`tf_dessilbi.export.check`) and
only then renamed into place: a kill at any point, or a file that does not
reproduce the model, leaves the previous file as it was.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _validate
from tf_dessilbi.export import check as check_lib
from tf_dessilbi.export import convert
from tf_dessilbi.export import files
from tf_dessilbi.export.saved_model import export_saved_model
from tf_dessilbi.export.strip import strip

CHECK_EXAMPLES = 256


@dataclasses.dataclass
class ExportedModel:
    """One exported model: where it is, what it is, and what its check measured.

    Attributes:
        path: the file (LiteRT, ONNX) or version folder (SavedModel) written.
        format: ``"saved_model"``, ``"litert"`` or ``"onnx"``.
        quantize: None, ``"float16"``, ``"dynamic_int8"`` or ``"int8"``.
        size_bytes: the file's size (a SavedModel: all its files).
        check: the `CheckResult` of the fresh-process run, or None unchecked.
    """

    path: str
    format: str
    quantize: Optional[str]
    size_bytes: int
    check: Optional[check_lib.CheckResult] = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["check"] = self.check.to_dict() if self.check is not None else None
        return out


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _labelled(data):
    """``(x, y)`` arrays from an ``(x, y)`` tuple or a `tf.data` set of ``(x, y)`` batches."""
    if data is None:
        return None, None
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[0], np.float32), np.asarray(data[1])
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        xs, ys = [], []
        for x, y in data:
            xs.append(np.asarray(x, np.float32))
            ys.append(np.asarray(y))
        return np.concatenate(xs), np.concatenate(ys)
    raise TypeError(
        "`eval_data` must be an (x, y) tuple of arrays or a tf.data.Dataset of (x, y) "
        f"batches. Received: eval_data of type {type(data).__name__}")


def _check_inputs(plain, representative_data, x_eval, seed: int = 0):
    """Inputs for a float check: the eval inputs, else calibration data, else seeded noise."""
    if x_eval is not None:
        return x_eval
    if representative_data is not None:
        return np.stack(convert._examples(representative_data, CHECK_EXAMPLES))
    shape = tuple(plain.inputs[0].shape[1:])
    return np.random.RandomState(seed).standard_normal((32, *shape)).astype(np.float32)


def _plain_model(model, optimizer, source, shrink, shrink_options, prune_bias):
    if shrink:
        from tf_dessilbi.shrink import shrink as shrink_fn

        return shrink_fn(model, source, optimizer=optimizer, **(shrink_options or {}))
    return strip(model, optimizer, prune_bias=prune_bias)


def _refuse_dead(plain, allow_dead: bool) -> None:
    """Raises if a layer of the plain (stripped or shrunk) model has an all-zero kernel.

    Judged on the weights that will be exported (W* and the masks applied),
    not on an optimizer's state, so a stripped model loaded back is judged
    by its kernels too.
    """
    from tf_dessilbi import _compat

    dead = [layer.name for layer in _compat.flatten_layers(plain)
            if getattr(layer, "kernel", None) is not None
            and not np.any(keras.ops.convert_to_numpy(layer.kernel))]
    if dead and not allow_dead:
        raise ValueError(
            f"Refusing to export {plain.name!r}: layer(s) {', '.join(dead)} keep no weight at all, "
            f"so its outputs no longer depend on its inputs. Pass allow_dead=True to export it anyway.")


def _validate_args(model, path, fmt, quantize, representative_data, int8_io, check, version):
    _validate.model(model, "export_model")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path. Received: path={path!r}")
    _validate.one_of("format", fmt, convert.FORMATS)
    if quantize not in convert.FORMAT_QUANTIZE[fmt]:
        raise ValueError(
            f"`quantize` must be one of {convert.FORMAT_QUANTIZE[fmt]} for format={fmt!r}. "
            f"Received: quantize={quantize!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' (full-integer) calibrates on `representative_data`: pass "
            "training inputs (an array, (x, y) or a tf.data.Dataset). Received: "
            "representative_data=None")
    if _validate.boolean("int8_io", int8_io) and quantize != "int8":
        raise ValueError(f"`int8_io=True` goes with quantize='int8'. Received: quantize={quantize!r}")
    _validate.boolean("check", check)
    if version is not None and fmt != "saved_model":
        raise ValueError(f"`version` numbers SavedModel folders; a {fmt} export is one file. "
                         f"Received: format={fmt!r}, version={version!r}")
    if fmt != "saved_model" and not os.fspath(path).endswith(convert.SUFFIX[fmt]):
        raise ValueError(f"`path` of a {fmt} export must end with {convert.SUFFIX[fmt]!r}. "
                         f"Received: path={os.fspath(path)!r}")
    if fmt != "saved_model" and keras.backend.backend() != "tensorflow":
        raise ValueError(f"export_model(format={fmt!r}) needs the TensorFlow backend. "
                         f"Received: backend {keras.backend.backend()!r}")


def export_model(
    model: keras.Model,
    path,
    *,
    format: str = "saved_model",  # noqa: A002 - Keras' own `model.export(format=...)` name
    optimizer=None,
    source=None,
    shrink: bool = False,
    shrink_options: Optional[dict] = None,
    prune_bias: bool = True,
    quantize: Optional[str] = None,
    representative_data=None,
    int8_io: bool = False,
    eval_data=None,
    check: bool = True,
    allow_dead: bool = False,
    overwrite: bool = True,
    version: Optional[int] = None,
) -> ExportedModel:
    """Exports a sparse model as a SavedModel, a LiteRT or an ONNX file, checked in a fresh process.

    The model is made plain first: ``strip(model, optimizer, prune_bias)``, or
    with ``shrink=True`` ``tf_dessilbi.shrink(model, source, optimizer=...)``
    (the pruned units physically removed: a smaller, faster file). Then:

    * ``format="saved_model"``: `export_saved_model` (``path`` is the base
      folder; a new version, or ``version``);
    * ``format="litert"``: one ``.tflite`` file via ``model.export(format=
      "litert")``; ``quantize`` ``"float16"`` (float16 weights),
      ``"dynamic_int8"`` (int8 weights, float activations) or ``"int8"``
      (full-integer: weights and activations int8, calibrated on
      ``representative_data``; ``int8_io=True`` makes the input and output
      tensors int8 too, for integer-only accelerators);
    * ``format="onnx"``: one ``.onnx`` file via ``model.export(format="onnx")``
      (tf2onnx; ``pip install "tf_dessilbi[onnx]"``); ``quantize=
      "dynamic_int8"`` quantizes its weights with onnxruntime.

    A file is written to a hidden temporary file beside `path` (readable
    permissions, ``0o666`` less the umask), run in a fresh process that loads
    only its runtime, and renamed onto `path` only when the check passes:
    a float file must give the plain model's outputs within 1e-5 relative
    (else `ExportCheckError`, nothing written); a quantized one reports its
    argmax agreement with the model and, with ``eval_data``, its accuracy
    beside the float model's. A kill at any point leaves the previous file.
    A SavedModel version is moved into place atomically by
    `export_saved_model` and checked the same way once it is there.

    Args:
        model: a built Sequential or Functional Keras model (sparse or not).
        path: the ``.tflite`` / ``.onnx`` file, or the SavedModel base folder.
        format: ``"saved_model"``, ``"litert"`` or ``"onnx"``. Defaults to
            `"saved_model"`.
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model` (W*,
            supp Γ). Defaults to `None`.
        source: with ``shrink=True``, the mask source that says which units
            go (see `tf_dessilbi.shrink`). Defaults to `None`.
        shrink: physically remove the pruned filters and neurons first.
            Defaults to `False`.
        shrink_options: keyword arguments for `tf_dessilbi.shrink`. Defaults
            to `None`.
        prune_bias: see `strip`. Defaults to `True`.
        quantize: None, ``"float16"``, ``"dynamic_int8"`` or ``"int8"`` (see
            above for which format offers which). Defaults to `None`.
        representative_data: training inputs for int8 calibration (up to
            256 examples are used): an array, ``(x, y)``, or a `tf.data.Dataset`
            of inputs or ``(inputs, labels)`` batches. Defaults to `None`.
        int8_io: int8 input and output tensors (``quantize="int8"`` only).
            Defaults to `False`.
        eval_data: ``(x, y)`` or a `tf.data.Dataset` of ``(x, y)`` batches:
            the check runs on it and reports the file's accuracy beside the
            model's. Without it the check uses up to 256 calibration
            examples, else 32 seeded normal inputs. Defaults to `None`.
        check: run the fresh-process check. Defaults to `True`.
        allow_dead: export a model with a layer that keeps no weight (its
            outputs are constant). Defaults to `False`.
        overwrite: replace an existing file or SavedModel version. Defaults
            to `True`.
        version: the SavedModel version (``format="saved_model"``). Defaults
            to `None` (the next one).

    Returns:
        An `ExportedModel` (path, format, quantize, size, check).

    Raises:
        TypeError / ValueError: a bad argument (named, with the allowed values),
            a dead model, or a model `strip`/`shrink` refuses.
        ImportError: the format's dependencies are missing (names the extra).
        ExportCheckError: a float file does not reproduce the model.

    Example:

    ```python
    out = tf_dessilbi.export_model(model, "fmnist_int8.tflite", format="litert",
                                   optimizer=model.optimizer, shrink=True,
                                   quantize="int8", representative_data=x_train,
                                   eval_data=(x_test, y_test))
    print(out.size_bytes, out.check.accuracy, out.check.reference_accuracy)
    ```
    """
    _validate_args(model, path, format, quantize, representative_data, int8_io, check, version)
    shrink = _validate.boolean("shrink", shrink)
    allow_dead = _validate.boolean("allow_dead", allow_dead)
    overwrite = _validate.boolean("overwrite", overwrite)
    if source is not None and not shrink:
        raise ValueError("`source` is used with shrink=True (strip takes the model's own masks "
                         "and `optimizer`). Received: shrink=False, source=" + repr(source))
    convert.require(format)
    path = os.fspath(path)
    if format != "saved_model":
        if os.path.isdir(path):
            raise ValueError(f"`path` must be a file path. Received: path={path!r}, a directory.")
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"{path!r} exists. Pass overwrite=True to replace it.")
    plain = _plain_model(model, optimizer, source, shrink, shrink_options, prune_bias)
    _refuse_dead(plain, allow_dead)
    x_eval, y_eval = _labelled(eval_data)
    checkable = check and len(plain.inputs) == 1 and len(plain.outputs) == 1
    if check and not checkable:
        logging.warning("export_model: the check covers single-input, single-output models; "
                        "%r is exported unchecked.", plain.name)
    x_check = _check_inputs(plain, representative_data, x_eval) if checkable else None
    quantized = quantize is not None

    if format == "saved_model":
        target = export_saved_model(plain, path, version=version, overwrite=overwrite,
                                    allow_dead=allow_dead)
        result = (check_lib.check_export(format, target, plain, x_check, y_eval, quantized)
                  if checkable else None)
        return ExportedModel(target, format, quantize, _size(target), result)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    files.clean_stale_files(folder)
    staging = files.staging_path(path)
    try:
        if format == "litert":
            representative = (convert.representative_dataset(representative_data, plain.inputs[0].shape)
                              if quantize == "int8" else None)
            convert.write_litert(plain, staging, quantize, representative, int8_io)
        else:
            convert.write_onnx(plain, staging, quantize)
        result = (check_lib.check_export(format, staging, plain, x_check, y_eval, quantized)
                  if checkable else None)
        files.commit(staging, path)
    except BaseException:
        files.discard(staging)
        raise
    logging.info("Exported %s%s to %s (%d bytes).", format,
                 f" ({quantize})" if quantize else "", path, _size(path))
    return ExportedModel(path, format, quantize, _size(path), result)

"""Sparse models out of the package: plain Keras models and SavedModels.

`strip` turns a sparse model (trained with `tf_dessilbi.DessiLBI`, or with
`tf_dessilbi.layers.SparseGate` / `MaskedLayer` wrappers) into an ordinary
Keras model of the same architecture whose kernels are the sparse ones, like
TF-MOT's ``strip_pruning``. `export_saved_model` writes that stripped model
as a versioned SavedModel for TF Serving, each weight stored once;
`export_model` writes a SavedModel, a LiteRT or an ONNX file, float or
quantized (float16, int8), each checked in a fresh process.
"""

from tf_dessilbi.export.check import CheckResult
from tf_dessilbi.export.check import ExportCheckError
from tf_dessilbi.export.formats import ExportedModel
from tf_dessilbi.export.formats import export_model
from tf_dessilbi.export.saved_model import SERVING_SIGNATURE
from tf_dessilbi.export.saved_model import _spec_name  # noqa: F401 (tests)
from tf_dessilbi.export.saved_model import _unique  # noqa: F401 (tests)
from tf_dessilbi.export.saved_model import clean_stale
from tf_dessilbi.export.saved_model import export_saved_model
from tf_dessilbi.export.saved_model import signature_names
from tf_dessilbi.export.strip import is_mask_wrapper
from tf_dessilbi.export.strip import strip

__all__ = [
    "CheckResult",
    "ExportCheckError",
    "ExportedModel",
    "SERVING_SIGNATURE",
    "clean_stale",
    "export_model",
    "export_saved_model",
    "is_mask_wrapper",
    "signature_names",
    "strip",
]

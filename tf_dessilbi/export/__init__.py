"""Sparse models out of the package: plain Keras models and SavedModels.

`strip` turns a sparse model (trained with `tf_dessilbi.DessiLBI`, or with
`tf_dessilbi.layers.SparseGate` / `MaskedLayer` wrappers) into an ordinary
Keras model of the same architecture whose kernels are the sparse ones, like
TF-MOT's ``strip_pruning``. `export_saved_model` writes that stripped model
as a versioned SavedModel for TF Serving, each weight stored once.
"""

from tf_dessilbi.export.saved_model import SERVING_SIGNATURE
from tf_dessilbi.export.saved_model import _spec_name  # noqa: F401 (tests)
from tf_dessilbi.export.saved_model import _unique  # noqa: F401 (tests)
from tf_dessilbi.export.saved_model import clean_stale
from tf_dessilbi.export.saved_model import export_saved_model
from tf_dessilbi.export.saved_model import signature_names
from tf_dessilbi.export.strip import is_mask_wrapper
from tf_dessilbi.export.strip import strip

__all__ = [
    "SERVING_SIGNATURE",
    "clean_stale",
    "export_saved_model",
    "is_mask_wrapper",
    "signature_names",
    "strip",
]

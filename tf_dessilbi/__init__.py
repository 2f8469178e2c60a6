"""tf_dessilbi: deep networks sparse by construction, for Keras 3.

DessiLBI (split linearized Bregman iteration) as a Keras optimizer,
Continuous Sparsification gates as layer wrappers, and export of the sparse
models to plain Keras, SavedModel and TF-MOT.
"""

__version__ = "0.1.0"

from tf_dessilbi import tfmot  # the TF-MOT bridge; imports tf_keras only when used
from tf_dessilbi.dessilbi import DessiLBI
from tf_dessilbi.export import export_saved_model
from tf_dessilbi.export import strip
from tf_dessilbi.proximal import group_soft_threshold
from tf_dessilbi.proximal import soft_threshold
from tf_dessilbi.sparsity import SparsityReport
from tf_dessilbi.sparsity import SparsityRow
from tf_dessilbi.sparsity import WStar
from tf_dessilbi.sparsity import apply_w_star
from tf_dessilbi.sparsity import sparsity_report
from tf_dessilbi.structures import structures_for


def make_train_step(*args, **kwargs):
    """See `tf_dessilbi.train_step.make_train_step` (TensorFlow backend only)."""
    from tf_dessilbi.train_step import make_train_step as _make_train_step

    return _make_train_step(*args, **kwargs)


__all__ = [
    "DessiLBI",
    "SparsityReport",
    "SparsityRow",
    "WStar",
    "__version__",
    "apply_w_star",
    "export_saved_model",
    "group_soft_threshold",
    "make_train_step",
    "soft_threshold",
    "sparsity_report",
    "strip",
    "structures_for",
    "tfmot",
]

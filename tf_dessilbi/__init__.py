"""tf_dessilbi: deep networks sparse by construction, for Keras 3.

DessiLBI (split linearized Bregman iteration) as a Keras optimizer,
Continuous Sparsification gates as layer wrappers, and export of the sparse
models to plain Keras, SavedModel, LiteRT, ONNX and TF-MOT.
"""

__version__ = "0.1.0"

from tf_dessilbi import _cli_start

_cli_start.quiet_import_for_the_cli()  # before Keras imports TensorFlow: the CLI starts quiet

from tf_dessilbi import callbacks  # GateTemperature
from tf_dessilbi import compress  # Pruner, importances, budgets, DessiLBI warm start
from tf_dessilbi import layers  # SparseGate
from tf_dessilbi import tfmot  # the TF-MOT bridge; imports tf_keras only when used
from tf_dessilbi import masks  # Mask, MaskSource and the adapters
from tf_dessilbi import sparse  # mask methods: GMP, SET, RigL, schedules, densities
from tf_dessilbi.dessilbi import DessiLBI
from tf_dessilbi.dessilbi import Fork
from tf_dessilbi.dessilbi import WStarFinetune
from tf_dessilbi.dessilbi import WStar
from tf_dessilbi.dessilbi import apply_w_star
from tf_dessilbi.dessilbi import joint_unit_groups
from tf_dessilbi.dessilbi import structures_for
from tf_dessilbi.dessilbi.proximal import group_soft_threshold
from tf_dessilbi.dessilbi.proximal import soft_threshold
from tf_dessilbi.export import export_model
from tf_dessilbi.compress import DessiLBIWarmStart
from tf_dessilbi.compress import Pruner
from tf_dessilbi.export import export_saved_model
from tf_dessilbi.export import strip
from tf_dessilbi.gates.gating import gate_masks
from tf_dessilbi.gates.gating import gate_model
from tf_dessilbi.gates.gating import gated_layers
from tf_dessilbi.gates.gating import reset_gates
from tf_dessilbi.gates.gating import set_beta
from tf_dessilbi.gates.gating import set_ticket_mode
from tf_dessilbi.layers.masked import mask_model
from tf_dessilbi.masks import Mask
from tf_dessilbi.masks import MaskSource
from tf_dessilbi.procedures.shrink_switch import fit_with_switch
from tf_dessilbi.procedures.shrink_switch import switch_to_small
from tf_dessilbi.procedures.ticket_search import TicketSearch
from tf_dessilbi.procedures.ticket_search import TicketSearchResult
from tf_dessilbi.registry import register_gated_layer
from tf_dessilbi.registry import register_layer
from tf_dessilbi.shrink import ShrinkReport
from tf_dessilbi.shrink.carry import carry_optimizer
from tf_dessilbi.sparse.gmp import prune_low_magnitude
from tf_dessilbi.shrink import shrink  # the function (the subpackage stays importable by path)
from tf_dessilbi.sparsity import SparsityReport
from tf_dessilbi.sparsity import SparsityRow
from tf_dessilbi.sparsity import sparsity_report


def make_train_step(*args, **kwargs):
    """See `tf_dessilbi.dessilbi.train_step.make_train_step` (TensorFlow backend only)."""
    from tf_dessilbi.dessilbi.train_step import make_train_step as _make_train_step

    return _make_train_step(*args, **kwargs)


__all__ = [
    "DessiLBI",
    "DessiLBIWarmStart",
    "Fork",
    "Mask",
    "MaskSource",
    "Pruner",
    "ShrinkReport",
    "SparsityReport",
    "SparsityRow",
    "TicketSearch",
    "TicketSearchResult",
    "WStar",
    "WStarFinetune",
    "__version__",
    "apply_w_star",
    "carry_optimizer",
    "joint_unit_groups",
    "callbacks",
    "export_model",
    "compress",
    "export_saved_model",
    "fit_with_switch",
    "gate_masks",
    "gate_model",
    "gated_layers",
    "group_soft_threshold",
    "layers",
    "make_train_step",
    "mask_model",
    "prune_low_magnitude",
    "masks",
    "register_gated_layer",
    "register_layer",
    "reset_gates",
    "set_beta",
    "set_ticket_mode",
    "shrink",
    "soft_threshold",
    "sparse",
    "sparsity_report",
    "strip",
    "switch_to_small",
    "structures_for",
    "tfmot",
]

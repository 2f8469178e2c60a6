"""Keras layers of tf_dessilbi: the gate wrapper and the fixed-mask wrapper."""

from tf_dessilbi.layers.masked import MaskedLayer
from tf_dessilbi.layers.masked import mask_model
from tf_dessilbi.layers.sparse_gate import SparseGate

__all__ = [
    "MaskedLayer",
    "SparseGate",
    "mask_model",
]

"""Keras layers of tf_dessilbi."""

from tf_dessilbi.layers.sparse_gate import SparseGate

__all__ = [
    "SparseGate",
]

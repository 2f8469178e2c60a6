"""Keras 3 functional models used by the configs, benchmarks and tests."""

from tf_dessilbi.models.fmnist import fmnist_cnn_s

__all__ = [
    "fmnist_cnn_s",
]

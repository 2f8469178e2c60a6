"""The package's Keras callbacks, in one public namespace."""

from tf_dessilbi.gates.callbacks import GateTemperature

__all__ = [
    "GateTemperature",
]

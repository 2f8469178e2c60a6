"""Which layers `SparseGate` can wrap, and which of their weights it gates.

Built-in: Dense, Conv1D/2D/3D (weight ``kernel``, output units on the last
axis) and DepthwiseConv1D/2D (``kernel`` of shape ``(*k, in, multiplier)``,
output channels on the last two axes). Custom layers opt in with
`register_gated_layer`, as a function or a class decorator::

    @tf_dessilbi.register_gated_layer(weight_name="w")
    class MyDense(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 8), name="w")

        def call(self, x):
            return x @ self.w       # must read the weight through ``self.w``

The layer's ``call`` must read the weight through the attribute holding the
variable (``self.w`` above, or ``self._w`` behind a ``w`` property), because
`SparseGate` substitutes the masked kernel there during the call.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras


@dataclasses.dataclass(frozen=True)
class GateSpec:
    """How a layer class is gated.

    Attributes:
        weight_name: name of the gated weight (the variable's name, and the
            attribute, or ``"_" + name`` behind a property, holding it).
        output_axes: how many trailing kernel axes index the output units
            (one gate per unit for granularity "filter"/"neuron").
    """

    weight_name: str = "kernel"
    output_axes: int = 1


_REGISTRY: dict = {}


def register_gated_layer(layer_class=None, *, weight_name: str = "kernel", output_axes: int = 1):
    """Lets `SparseGate` wrap ``layer_class``, gating its weight ``weight_name``.

    Usable as ``register_gated_layer(MyLayer, weight_name="w")`` or as a class
    decorator ``@register_gated_layer(weight_name="w")``. Subclasses of a
    registered class are gated the same way unless registered themselves.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        weight_name: the gated weight. Defaults to `"kernel"`.
        output_axes: number of trailing axes of that weight indexing output
            units. Defaults to `1`.

    Returns:
        ``layer_class`` (or a decorator when it is omitted).

    Raises:
        TypeError: ``layer_class`` is not a Layer subclass.
        ValueError: a bad ``weight_name`` or ``output_axes``.
    """
    if not isinstance(weight_name, str) or not weight_name:
        raise ValueError(
            f"`weight_name` must be a non-empty string. Received: weight_name={weight_name!r}"
        )
    if isinstance(output_axes, bool) or not isinstance(output_axes, int) or output_axes < 1:
        raise ValueError(
            f"`output_axes` must be a positive integer. Received: output_axes={output_axes!r}"
        )

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(
                f"register_gated_layer() needs a keras.layers.Layer subclass. "
                f"Received: {cls!r}"
            )
        _REGISTRY[cls] = GateSpec(weight_name, output_axes)
        return cls

    return register if layer_class is None else register(layer_class)


def gate_spec(layer) -> Optional[GateSpec]:
    """The `GateSpec` of a layer (instance or class), or None if not gateable."""
    cls = layer if isinstance(layer, type) else type(layer)
    for klass in cls.__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    return None


def supported_layers() -> list:
    """Names of the registered layer classes, sorted."""
    return sorted(cls.__name__ for cls in _REGISTRY)


for _cls in (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
):
    register_gated_layer(_cls)
for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_gated_layer(_cls, output_axes=2)
del _cls

"""The one layer table: what every part of the package knows about a layer class.

For each layer class the table records (a `LayerSpec`):

* ``weight_name``: its sparsifiable weight (``kernel`` of Dense and convs,
  ``pointwise_kernel`` of SeparableConv), or None for layers with none;
* ``unit_axes``: the axes of that weight indexing the layer's output units
  (filters, neurons; Depthwise: ``(-2, -1)`` = channel × multiplier,
  ConvTranspose: ``(-2,)``);
* ``input_axis``: the axis of that weight indexing input channels;
* ``role``: how the layer treats the channel axis, for physical removal
  (`tf_dessilbi.shrink`): ``"producer"`` (mixes input channels into new
  output units), ``"depthwise"`` (one output group per input channel,
  in = out), ``"channelwise"`` (per-channel parameters, channels kept:
  BatchNormalization, LayerNormalization, PReLU), ``"passthrough"`` (channels
  unchanged, no per-channel weights: activations, pooling, dropout, padding),
  ``"flatten"``, ``"reshape"``, ``"permute"`` (a Permute keeping the channel
  axis last; one moving it leaves its channels whole), ``"merge"`` (element-wise Add, Multiply, …:
  channels coupled across inputs), ``"concatenate"``, ``"input"``,
  ``"attention"`` (MultiHeadAttention: heads as units);
* ``structure``: the DessiLBI structure `structures_for` gives the weight
  (``"filter"``, ``"elementwise"`` or None);
* ``gateable``: whether `SparseGate` / `MaskedLayer` can wrap it;
* ``cut``: the shrink handler that rebuilds the layer with fewer
  input/output units (filled in by `tf_dessilbi.shrink` for built-ins).

Gates (`SparseGate`), fixed masks (`MaskedLayer`), structures
(`structures_for`), masks (`tf_dessilbi.masks`), strip, the TF-MOT bridge and
shrink all read this table. Custom layers opt in once with `register_layer`
(or its older name `register_gated_layer`), as a function or a class
decorator::

    @tf_dessilbi.register_gated_layer(weight_name="w")
    class MyDense(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 8), name="w")

        def call(self, x):
            return x @ self.w       # must read the weight through ``self.w``

The layer's ``call`` must read the weight through the attribute holding the
variable (``self.w`` above, or ``self._w`` behind a ``w`` property), because
the wrappers substitute the masked weight there during the call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import keras

from tf_dessilbi import _compat
from tf_dessilbi import _validate

ROLES = (
    "producer",
    "depthwise",
    "channelwise",
    "passthrough",
    "flatten",
    "reshape",
    "permute",
    "merge",
    "concatenate",
    "input",
    "attention",
)
_STRUCTURES = ("filter", "neuron", "head", "elementwise", None)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What the package knows about one layer class (see the module docstring)."""

    weight_name: Optional[str] = "kernel"
    unit_axes: tuple = (-1,)
    input_axis: Optional[int] = -2
    role: str = "producer"
    structure: Optional[str] = None
    gateable: bool = True
    cut: Any = None

    @property
    def output_axes(self) -> int:
        """How many trailing weight axes index the output units (gates)."""
        return len(self.unit_axes)

    @property
    def sparsifiable(self) -> bool:
        return self.weight_name is not None


_REGISTRY: dict = {}


def register_layer(
    layer_class=None,
    *,
    weight_name: Optional[str] = "kernel",
    unit_axes=None,
    output_axes: Optional[int] = None,
    input_axis: Optional[int] = -2,
    role: str = "producer",
    structure: Optional[str] = None,
    gateable: Optional[bool] = None,
    cut: Any = None,
):
    """Adds ``layer_class`` to the layer table (function or class decorator).

    Subclasses of a registered class share its entry unless registered
    themselves.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        weight_name: the sparsifiable weight, or None. Defaults to `"kernel"`.
        unit_axes: axes of that weight indexing output units. Defaults to the
            last ``output_axes`` axes.
        output_axes: number of trailing axes indexing output units (the
            older way to give ``unit_axes``). Defaults to `1`.
        input_axis: axis of the weight indexing input channels. Defaults to `-2`.
        role: one of `ROLES`. Defaults to `"producer"`.
        structure: the DessiLBI structure for `structures_for`. Defaults to None.
        gateable: whether the wrappers can wrap it. Defaults to True when the
            layer has a sparsifiable weight whose unit axes are trailing.
        cut: a `tf_dessilbi.shrink` handler. Defaults to None.

    Returns:
        ``layer_class`` (or a decorator when it is omitted).

    Raises:
        TypeError: ``layer_class`` is not a Layer subclass.
        ValueError: a bad argument (named in the message).

    Example: a layer `shrink` refuses ("cannot reason about layer 'scale'
    (Scale)") joins the table once; a per-channel layer (every weight's last
    axis is the channel axis) is cut with its channels, a pass-through one
    (activations, any op keeping each channel apart) just passes them on::

        tf_dessilbi.register_layer(Scale, weight_name=None, role="channelwise")
        tf_dessilbi.register_layer(MyActivation, weight_name=None, role="passthrough")
        small = tf_dessilbi.shrink(model, optimizer=model.optimizer)

    A layer that mixes channels in another way stays whole with
    ``shrink(..., keep=["its name"])`` instead.
    """
    if weight_name is not None and (not isinstance(weight_name, str) or not weight_name):
        raise ValueError(
            f"`weight_name` must be a non-empty string or None. Received: weight_name={weight_name!r}"
        )
    if unit_axes is None:
        count = 1 if output_axes is None else _validate.positive_int("output_axes", output_axes)
        unit_axes = tuple(range(-count, 0))
    elif output_axes is not None:
        raise ValueError("Give `unit_axes` or `output_axes`, not both.")
    else:
        unit_axes = tuple(unit_axes)
        if not unit_axes or not all(isinstance(a, int) and a < 0 for a in unit_axes):
            raise ValueError(
                f"`unit_axes` must be a non-empty tuple of negative axes. Received: unit_axes={unit_axes!r}"
            )
    if role not in ROLES:
        raise ValueError(f"`role` must be one of {ROLES}. Received: role={role!r}")
    if structure not in _STRUCTURES:
        raise ValueError(
            f"`structure` must be one of {_STRUCTURES}. Received: structure={structure!r}"
        )
    trailing = unit_axes == tuple(range(-len(unit_axes), 0))
    if gateable is None:
        gateable = weight_name is not None and trailing
    elif gateable and (weight_name is None or not trailing):
        raise ValueError(
            "`gateable=True` needs a `weight_name` whose unit axes are the trailing axes. "
            f"Received: weight_name={weight_name!r}, unit_axes={unit_axes!r}"
        )
    spec = LayerSpec(weight_name, unit_axes, input_axis, role, structure, bool(gateable), cut)

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(
                f"register_layer() needs a keras.layers.Layer subclass. Received: {cls!r}"
            )
        _REGISTRY[cls] = spec
        return cls

    return register if layer_class is None else register(layer_class)


def register_gated_layer(layer_class=None, *, weight_name: str = "kernel", output_axes: int = 1):
    """Lets `SparseGate` (and every other part) use ``layer_class``'s ``weight_name``.

    The older, shorter form of `register_layer` for custom producer layers:
    ``register_gated_layer(MyLayer, weight_name="w")`` or as a class
    decorator ``@register_gated_layer(weight_name="w")``.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        weight_name: the gated weight. Defaults to `"kernel"`.
        output_axes: number of trailing axes of that weight indexing output
            units. Defaults to `1`.

    Returns:
        ``layer_class`` (or a decorator when it is omitted).
    """
    if not isinstance(weight_name, str) or not weight_name:
        raise ValueError(
            f"`weight_name` must be a non-empty string. Received: weight_name={weight_name!r}"
        )
    return register_layer(layer_class, weight_name=weight_name, output_axes=output_axes)


def set_cut(layer_class, cut) -> None:
    """Attaches a shrink handler to a registered class (keeps the rest of its entry)."""
    spec = _REGISTRY.get(layer_class)
    if spec is None:
        raise ValueError(f"{layer_class!r} is not in the layer table; register_layer() it first.")
    _REGISTRY[layer_class] = dataclasses.replace(spec, cut=cut)


def layer_spec(layer) -> Optional[LayerSpec]:
    """The `LayerSpec` of a layer (instance or class), or None if unknown."""
    cls = layer if isinstance(layer, type) else type(layer)
    for klass in cls.__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
    return None


def gate_spec(layer) -> Optional[LayerSpec]:
    """The spec of a layer the wrappers can wrap, or None."""
    spec = layer_spec(layer)
    return spec if spec is not None and spec.gateable else None


def supported_layers() -> list:
    """Names of the classes the wrappers (gates, fixed masks) can wrap, sorted."""
    return sorted(cls.__name__ for cls, spec in _REGISTRY.items() if spec.gateable)


def known_layers() -> list:
    """Names of every class in the table, sorted."""
    return sorted(cls.__name__ for cls in _REGISTRY)


def _register_builtins():
    L = keras.layers
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        register_layer(cls, structure="filter")
    register_layer(L.Dense, structure="elementwise")
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_layer(cls, unit_axes=(-2, -1), role="depthwise")
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        # Keras transposed kernels are (*k, out, in).
        register_layer(cls, unit_axes=(-2,), input_axis=-1)
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, weight_name="pointwise_kernel", gateable=False)
    channelwise = [
        L.BatchNormalization, L.LayerNormalization, L.PReLU, L.GroupNormalization,
        L.Rescaling, L.Normalization,
    ]
    for cls in channelwise:
        register_layer(cls, weight_name=None, input_axis=None, role="channelwise")
    applications = _compat.application_layer_classes()
    if "LayerScale" in applications:  # ConvNeXt: x * gamma
        register_layer(
            applications["LayerScale"], weight_name=None, input_axis=None, role="channelwise"
        )
    if "CustomScaleLayer" in applications:  # InceptionResNetV2: x0 + x1 * scale
        register_layer(
            applications["CustomScaleLayer"], weight_name=None, input_axis=None, role="merge"
        )
    passthrough = [
        L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.Dropout, L.SpatialDropout1D,
        L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout,
        L.AlphaDropout, L.ActivityRegularization, L.Identity,
        L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
        L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
        L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
        L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
        L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
        L.UnitNormalization,
    ]
    for cls in passthrough:
        register_layer(cls, weight_name=None, input_axis=None, role="passthrough")
    register_layer(L.Flatten, weight_name=None, input_axis=None, role="flatten")
    register_layer(L.Reshape, weight_name=None, input_axis=None, role="reshape")
    register_layer(L.Permute, weight_name=None, input_axis=None, role="permute")
    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        register_layer(cls, weight_name=None, input_axis=None, role="merge")
    register_layer(L.Concatenate, weight_name=None, input_axis=None, role="concatenate")
    # Heads are the units: the value kernel (d, H, d_v) by its axis -2 (tf_dessilbi.dependency.attention).
    register_layer(L.MultiHeadAttention, weight_name="value/kernel", unit_axes=(-2,),
                   input_axis=0, role="attention", structure="head", gateable=False)
    register_layer(L.InputLayer, weight_name=None, input_axis=None, role="input")


_register_builtins()

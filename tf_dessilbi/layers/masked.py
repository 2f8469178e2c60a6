"""`MaskedLayer`: a layer whose sparsifiable weight is held to a fixed mask.

The one fixed-mask mechanism of the package: the state that the mask methods
(`tf_dessilbi.sparse`: GMP, SNIP, GraSP, SET, RigL), iterative magnitude
pruning, early tickets and ticket retraining share. Unlike a kernel
constraint it leaves the layer's own constraint alone, serializes with the
model (``.keras``), and its mask is a non-trainable boolean variable, so a
mask update in a callback needs no retrace and is the same on every replica.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class MaskedLayer(keras.layers.Wrapper):
    """Runs the wrapped layer on W ⊙ M, M a fixed boolean mask.

    ::

        y = layer(x; W ⊙ M),    ∂L/∂W = (∂L/∂W_eff) ⊙ M

    so weights outside the mask get no loss gradient and the effective weight
    is exactly zero there. `set_mask` changes M (a non-trainable ``bool``
    variable, ``aggregation="only_first_replica"``); `tf_dessilbi.strip`
    returns the plain layer with W ⊙ M as its weight.

    Args:
        layer: a layer of the layer table with a sparsifiable weight
            (Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, registered layers).
        mask: the initial mask (bool, shaped like the weight). Defaults to
            all True (dense).
        **kwargs: `keras.layers.Wrapper` arguments (``name``, ...).

    Raises:
        TypeError: the layer class is not in the layer table.
    """

    def __init__(self, layer, mask=None, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"MaskedLayer wraps a keras.layers.Layer. Received: layer={layer!r}")
        spec = registry.gate_spec(layer)
        if spec is None:
            raise TypeError(
                f"MaskedLayer cannot mask a {type(layer).__name__} layer ({layer.name!r}). "
                f"Supported: {', '.join(registry.supported_layers())}; register other "
                f"layers with tf_dessilbi.register_layer()."
            )
        kwargs.setdefault("name", f"{layer.name}_masked")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.weight_name = spec.weight_name
        self.unit_axes = spec.unit_axes
        self._initial_mask = None if mask is None else np.asarray(mask, bool)
        self._weight_attr = None
        self.weight_variable = None

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._weight_attr, self.weight_variable = walk.find_weight(self.layer, self.weight_name)
        shape = tuple(self.weight_variable.shape)
        self.weight_mask = self.add_weight(
            name="weight_mask",
            shape=shape,
            dtype="bool",
            initializer="ones",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True
        if self._initial_mask is not None:
            self.set_mask(self._initial_mask)
            self._initial_mask = None

    # ------------------------------------------------------------------ masks
    def set_mask(self, mask) -> None:
        """Sets M (bool or 0/1, shaped like the weight).

        Raises:
            ValueError: a wrong shape or non-boolean values.
        """
        array = masks_lib._bool_array(f"The mask of {self.name!r}", mask)
        shape = tuple(self.weight_variable.shape)
        if array.shape != shape:
            raise ValueError(
                f"The mask of {self.name!r} must have the weight's shape {shape}. "
                f"Received shape {array.shape}"
            )
        self.weight_mask.assign(array)

    def kept_mask(self) -> np.ndarray:
        """M as a bool NumPy array."""
        return np.asarray(ops.convert_to_numpy(self.weight_mask), bool)

    def kept_units(self):
        """None: a fixed mask is elementwise (unit masks derive from it)."""
        return None

    def stripped_kernel(self) -> np.ndarray:
        """W ⊙ M in the weight's dtype: the plain layer's weight."""
        w = ops.convert_to_numpy(self.weight_variable)
        return np.where(self.kept_mask(), w, np.zeros_like(w))

    # ------------------------------------------------------------------- call
    def call(self, inputs, training=None):
        dtype = self.layer.compute_dtype
        weight = ops.multiply(
            ops.cast(self.weight_variable, dtype), ops.cast(self.weight_mask, dtype)
        )
        return walk.call_with_weight(
            self.layer, self._weight_attr, weight, self.weight_variable, inputs, training
        )

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


masks_lib.register_wrapper_class("fixed", MaskedLayer)


def mask_model(model: keras.Model, mask=None, layer_filter=None) -> keras.Model:
    """A copy of ``model`` with its sparsifiable layers wrapped in `MaskedLayer`.

    Args:
        model: a built Sequential or Functional model (left untouched).
        mask: a `tf_dessilbi.masks.Mask` (or any source `masks.resolve`
            takes) giving the initial masks; layers it does not cover start
            dense. Defaults to None (all dense).
        layer_filter: ``layer_filter(layer) -> bool`` choosing the layers to
            wrap. Defaults to every layer `MaskedLayer` supports.

    Returns:
        The masked copy (same name, inputs, outputs and weights); not compiled.

    Raises:
        TypeError: a subclassed model or a non-callable filter.
        ValueError: an unbuilt model, no layer chosen, or a mask that does
            not fit the model.
    """
    walk.check_graph_model(model, "mask_model")
    if layer_filter is not None and not callable(layer_filter):
        raise TypeError(
            f"`layer_filter` must be callable(layer) -> bool. Received: layer_filter={layer_filter!r}"
        )
    chosen = set()
    for layer in walk.leaf_layers(model):
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Wrapper)):
            continue
        wanted = registry.gate_spec(layer) is not None if layer_filter is None else bool(layer_filter(layer))
        if wanted:
            MaskedLayer(layer)  # raises on unsupported layers
            chosen.add(id(layer))
    if not chosen:
        raise ValueError(
            f"mask_model() found no layer to mask in model {model.name!r}. "
            f"Supported: {', '.join(registry.supported_layers())}."
        )
    initial = {}
    if mask is not None:
        resolved = masks_lib.resolve(mask, model)
        initial = {id(layer): m for layer, _, m in masks_lib.apply_to(resolved, model)}

    def make_clone(layer):
        if id(layer) not in chosen:
            return walk.plain_clone(layer)
        inner, copy_weights = walk.plain_clone(layer)
        return MaskedLayer(inner, mask=initial.get(id(layer))), lambda w: copy_weights(w.layer)

    return walk.clone_with(model, make_clone)

"""One mask concept: a `Mask` value and the `MaskSource` protocol.

A `Mask` says which weights (and, where the structure has them, which output
units) a sparse model keeps. It is keyed by ``"<layer name>/<weight name>"``
(e.g. ``"conv1/kernel"``), where the layer is the one owning the weight in the
*plain* model, so a mask taken from a gated, masked or DessiLBI-trained model
applies unchanged to its stripped copy, to a rebuilt model of the same
architecture and to the tf_keras conversion.

A `MaskSource` is anything with ``mask(model) -> Mask``. Adapters cover every
source in the package:

* `OptimizerSupport` — DessiLBI's supp(Γ) (group structures give unit masks);
* `GateMasks` — Continuous Sparsification gates, 1[s > 0];
* `FixedMasks` — the `MaskedLayer` wrappers' fixed masks (IMP, SNIP, RigL, tickets);
* `UnitMasks` — a user's ``{layer name: bool[units]}`` (True = keep);
* a `Mask` itself;
* ``tf_dessilbi.tfmot.TFMOTMasks`` — a tf_keras pruned model's masks.

`resolve(source, model, optimizer=None)` turns any of them (or None: the
masks found in the model, intersected with ``optimizer``'s support) into a
`Mask`. Every consumer — `sparsity_report`, `strip`, `shrink`, the TF-MOT
bridge, the path recorder, early tickets and the mask methods — takes a source
through it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Optional, Protocol, runtime_checkable

import keras
import numpy as np

from tf_dessilbi import registry
from tf_dessilbi import walk


def weight_key(layer, variable) -> str:
    """The key of a layer's weight in a `Mask`: ``"<layer name>/<weight name>"``."""
    return f"{layer.name}/{variable.name.split('/')[-1]}"


def unit_norms(kernel) -> np.ndarray:
    """‖W[..., j]‖₂ of each output unit j (last axis) of a kernel, in float64."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))


def unit_mask_of(weight_mask: np.ndarray, unit_axes) -> np.ndarray:
    """Output units with at least one kept weight (flattened over ``unit_axes``)."""
    weight_mask = np.asarray(weight_mask, bool)
    axes = tuple(a % weight_mask.ndim for a in unit_axes)
    others = tuple(a for a in range(weight_mask.ndim) if a not in axes)
    return weight_mask.any(axis=others).reshape(-1) if others else weight_mask.reshape(-1)


def _bool_array(what: str, value) -> np.ndarray:
    array = np.asarray(keras.ops.convert_to_numpy(value))
    if array.dtype != bool:
        if array.dtype.kind not in "biuf" or not np.all((array == 0) | (array == 1)):
            raise ValueError(f"{what} must be boolean (or 0/1). Received dtype {array.dtype}")
        array = array.astype(bool)
    return array


@dataclasses.dataclass(frozen=True)
class Mask:
    """Which weights and units a sparse model keeps (True = kept).

    Attributes:
        weights: ``{"<layer>/<weight>": bool array shaped like the weight}``.
        units: ``{"<layer>": bool[units]}`` for layers whose structure has
            output units (filters, neurons); units outside are removed whole.
    """

    weights: Mapping = dataclasses.field(default_factory=dict)
    units: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.weights, Mapping) or not isinstance(self.units, Mapping):
            raise TypeError("Mask(weights=..., units=...) take mappings of boolean arrays.")
        weights = {str(k): _bool_array(f"Mask weight {k!r}", v) for k, v in self.weights.items()}
        units = {}
        for k, v in self.units.items():
            array = _bool_array(f"Mask units {k!r}", v)
            if array.ndim != 1:
                raise ValueError(f"Mask units {k!r} must be 1-D. Received shape {array.shape}")
            units[str(k)] = array
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "units", units)

    # --------------------------------------------------------------- algebra
    def __eq__(self, other) -> bool:
        """The same keys with the same shapes and entries, weights and units alike.

        (The dataclass default would compare the arrays with ``==`` and fail.)
        """
        if not isinstance(other, Mask):
            return NotImplemented
        return all(
            mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
            for mine, theirs in ((self.weights, other.weights), (self.units, other.units)))

    __hash__ = None  # arrays inside: not hashable

    def __and__(self, other: "Mask") -> "Mask":
        """The intersection: kept where both keep (a key in one only is taken as is)."""
        if not isinstance(other, Mask):
            return NotImplemented
        weights = dict(self.weights)
        for key, value in other.weights.items():
            if key in weights:
                if weights[key].shape != value.shape:
                    raise ValueError(
                        f"Masks disagree on the shape of {key!r}: {weights[key].shape} vs {value.shape}"
                    )
                weights[key] = weights[key] & value
            else:
                weights[key] = value
        units = dict(self.units)
        for key, value in other.units.items():
            units[key] = units[key] & value if key in units else value
        return Mask(weights, units)

    def __bool__(self) -> bool:
        return bool(self.weights) or bool(self.units)

    # ------------------------------------------------------------- counting
    @property
    def weights_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.weights.values()))

    @property
    def weights_total(self) -> int:
        return int(sum(int(m.size) for m in self.weights.values()))

    @property
    def density(self) -> float:
        """Fraction of masked weights kept (1.0 for an empty mask)."""
        total = self.weights_total
        return self.weights_kept / total if total else 1.0

    def layer_units(self, layer_name: str, weight_key_: Optional[str] = None, unit_axes=(-1,)):
        """The unit mask of a layer: explicit units, else units with a kept weight, else None."""
        if layer_name in self.units:
            return self.units[layer_name]
        if weight_key_ is not None and weight_key_ in self.weights:
            return unit_mask_of(self.weights[weight_key_], unit_axes)
        return None

    # ---------------------------------------------------------------- files
    def save(self, filename: str) -> None:
        """Writes the mask to ``filename`` (.npz), atomically."""
        arrays = {f"w:{k}": v for k, v in self.weights.items()}
        arrays.update({f"u:{k}": v for k, v in self.units.items()})
        tmp = f"{filename}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, filename)

    @classmethod
    def load(cls, filename: str) -> "Mask":
        """Reads a mask written by `save`."""
        with np.load(filename) as data:
            weights = {k[2:]: data[k] for k in data.files if k.startswith("w:")}
            units = {k[2:]: data[k] for k in data.files if k.startswith("u:")}
        return cls(weights, units)

    def mask(self, model) -> "Mask":  # a Mask is its own MaskSource
        return self


@runtime_checkable
class MaskSource(Protocol):
    """Anything that can say what a model keeps."""

    def mask(self, model: keras.Model) -> Mask:
        ...


def unwrap_optimizer(optimizer):
    """The optimizer doing the updates (unwraps `LossScaleOptimizer`)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


class OptimizerSupport:
    """supp(Γ) of a DessiLBI optimizer: W* = W on the support.

    Group structures (``filter``, ``neuron``) also give unit masks: a unit is
    kept iff its group is in the support.
    """

    def __init__(self, optimizer):
        optimizer = unwrap_optimizer(optimizer)
        if not hasattr(optimizer, "support") or not hasattr(optimizer, "variable_structure"):
            raise TypeError(
                "A support mask needs a tf_dessilbi.DessiLBI optimizer (one with "
                f"support(variable)); received {type(optimizer).__name__}. Models "
                "trained with another optimizer have no supp(Γ): pass no optimizer, "
                "or a mask source (gates, fixed masks, a Mask)."
            )
        if not getattr(optimizer, "built", False):
            raise ValueError(
                "The DessiLBI optimizer is not built yet: train at least one step first."
            )
        self.optimizer = optimizer

    def coupled(self, model):
        """``(layer, kernel, spec, structure)`` of every kernel of ``model`` the optimizer couples.

        Raises:
            ValueError: a sparsifiable kernel is not one of the optimizer's variables.
        """
        for layer, variable, spec in walk.sparsifiable(model):
            try:
                structure = self.optimizer.variable_structure(variable)
            except ValueError:
                raise ValueError(
                    f"Layer {layer.name!r}: its {spec.weight_name} is not known to the "
                    f"optimizer; was the model trained with it?"
                ) from None
            if structure is not None:
                yield layer, variable, spec, structure

    def mask(self, model) -> Mask:
        weights, units = {}, {}
        for layer, variable, _, structure in self.coupled(model):
            key = weight_key(layer, variable)
            gamma = keras.ops.convert_to_numpy(self.optimizer.gamma(variable))
            if not np.all(np.isfinite(gamma)):
                raise ValueError(
                    f"Γ of layer {layer.name!r} holds NaN/inf (the run diverged): it has no "
                    f"support to report, strip or shrink.")
            weights[key] = gamma != 0
            if structure in ("filter", "neuron"):
                units[layer.name] = unit_mask_of(weights[key], (-1,))
            elif structure == "head":
                units[layer.name] = unit_mask_of(weights[key], (-2,))
        return Mask(weights, units)


# The wrapper classes the adapters read, registered by the modules that
# define them (`tf_dessilbi.layers`): this module sits below the layers.
_WRAPPER_CLASSES = {}


class _Unregistered:
    """Stands for a wrapper class not imported yet: no layer is an instance of it."""


def register_wrapper_class(kind: str, wrapper_class) -> None:
    """Registers the wrapper layer class whose masks `GateMasks` ("gate") or `FixedMasks` ("fixed") read."""
    if kind not in ("gate", "fixed"):
        raise ValueError(f"`kind` must be 'gate' or 'fixed'. Received: kind={kind!r}")
    _WRAPPER_CLASSES[kind] = wrapper_class


class _WrapperMasks:
    kind = None  # set by subclasses

    @classmethod
    def wrapper_class(cls):
        return _WRAPPER_CLASSES.get(cls.kind, _Unregistered)

    def mask(self, model) -> Mask:
        weights, units = {}, {}
        for wrapper in find_wrappers(model, self.wrapper_class()):
            inner = wrapper.layer
            key = weight_key(inner, wrapper.weight_variable)
            if key in weights:
                raise ValueError(
                    f"Two wrapped layers are named {inner.name!r}; give the wrapped layers unique names."
                )
            weights[key] = wrapper.kept_mask()
            unit_mask = wrapper.kept_units()
            if unit_mask is not None:
                units[inner.name] = unit_mask
        return Mask(weights, units)


class GateMasks(_WrapperMasks):
    """What Continuous Sparsification gates keep: 1[s > 0] (the ticket's hard mask)."""

    kind = "gate"  # `tf_dessilbi.layers.SparseGate`


class FixedMasks(_WrapperMasks):
    """The fixed masks of the model's `MaskedLayer` wrappers."""

    kind = "fixed"  # `tf_dessilbi.layers.MaskedLayer`


class UnitMasks:
    """A ``{layer name: bool[units]}`` mapping (True = keep), checked against the model."""

    def __init__(self, units: Mapping):
        if not isinstance(units, Mapping):
            raise TypeError(f"Unit masks must be a mapping. Received: {units!r}")
        self.units = dict(units)

    def mask(self, model) -> Mask:
        by_name = {}
        for layer in walk.layers(model):
            by_name.setdefault(layer.name, layer)
        result = {}
        for name, value in self.units.items():
            layer = by_name.get(name)
            if layer is None:
                raise ValueError(
                    f"Unit mask for {name!r} names no layer of model {model.name!r}. "
                    f"Layers: {sorted(by_name)[:20]}"
                )
            array = _bool_array(f"Unit mask {name!r}", value)
            units = unit_count(layer)
            if units is None:
                raise ValueError(
                    f"Unit mask for {name!r}: a {type(layer).__name__} layer has no output "
                    f"units to remove (it is not a producer layer of the layer table)."
                )
            if array.shape != (units,):
                raise ValueError(
                    f"Unit mask for {name!r} has shape {array.shape}; layer {name!r} has "
                    f"{units} output units."
                )
            result[name] = array
        return Mask({}, result)


def unit_count(layer) -> Optional[int]:
    """Number of output units of a registered producer layer (None for others)."""
    spec = registry.layer_spec(layer)
    if spec is None or not spec.sparsifiable or not layer.built:
        return None
    _, variable = walk.find_weight(layer, spec.weight_name)
    shape = tuple(variable.shape)
    return int(np.prod([shape[a] for a in spec.unit_axes]))


def find_wrappers(model, wrapper_class) -> list:
    """Every built ``wrapper_class`` layer in ``model`` (nested included), once each."""
    found = []
    for layer in walk.layers(model) + ([model] if isinstance(model, wrapper_class) else []):
        if isinstance(layer, wrapper_class) and all(layer is not f for f in found):
            found.append(layer)
    return found


def in_model(model) -> Mask:
    """The masks the model carries itself: its gates' and its fixed masks' (intersected)."""
    return GateMasks().mask(model) & FixedMasks().mask(model)


def resolve(source, model, optimizer=None) -> Mask:
    """Any mask source → a `Mask` for ``model``.

    Args:
        source: None (the masks in the model: gates and `MaskedLayer`s, and
            ``optimizer``'s support when given), a `Mask`, a `MaskSource`, a
            DessiLBI optimizer, or a ``{layer name: bool[units]}`` mapping.
        model: the model the mask is for.
        optimizer: a DessiLBI optimizer whose support is intersected in.

    Raises:
        TypeError: an unknown kind of source, or ``optimizer`` without a support.
    """
    if source is None:
        result = in_model(model)
    elif isinstance(source, Mask):
        result = source
    elif isinstance(source, Mapping):
        result = UnitMasks(source).mask(model)
    elif hasattr(unwrap_optimizer(source), "support") and hasattr(
        unwrap_optimizer(source), "variable_structure"
    ):
        result = OptimizerSupport(source).mask(model)
    elif isinstance(source, MaskSource):
        result = source.mask(model)
    else:
        raise TypeError(
            "A mask source must be None, a tf_dessilbi.masks.Mask, a MaskSource "
            "(anything with mask(model)), a DessiLBI optimizer or a {layer name: "
            f"bool[units]}} mapping. Received: {source!r} of type {type(source).__name__}"
        )
    if optimizer is not None:
        result = result & OptimizerSupport(optimizer).mask(model)
    return result


def apply_to(mask: Mask, model) -> list:
    """``[(layer, variable, bool mask)]`` of the model's weights the mask covers.

    Unit masks of layers without a weight mask are broadcast over the unit axes.

    Raises:
        ValueError: a key names no sparsifiable weight of the model, or a shape differs.
    """
    found = {}
    for layer, variable, spec in walk.sparsifiable(model):
        found.setdefault(weight_key(layer, variable), (layer, variable, spec))
    unknown = [k for k in mask.weights if k not in found]
    known_layers = {layer.name: (layer, variable, spec) for layer, variable, spec in found.values()}
    unknown += [k for k in mask.units if k not in known_layers]
    if unknown:
        raise ValueError(
            f"Mask entries {unknown[:6]} match no sparsifiable weight of model "
            f"{model.name!r}; its weights are {sorted(found)[:12]}"
        )
    result = []
    for key, (layer, variable, spec) in found.items():
        shape = tuple(variable.shape)
        weight_mask = mask.weights.get(key)
        if weight_mask is not None and weight_mask.shape != shape:
            raise ValueError(f"Mask for {key!r} has shape {weight_mask.shape}; the weight {shape}.")
        units = mask.units.get(layer.name)
        if units is not None:
            unit_shape = [shape[a] for a in spec.unit_axes]
            count = int(np.prod(unit_shape))
            if units.size != count:
                raise ValueError(
                    f"Unit mask for {layer.name!r} has {units.size} units; the layer has {count}."
                )
            expand = np.ones(len(shape), int)
            for axis, size in zip(spec.unit_axes, unit_shape):
                expand[axis] = size
            broadcast = np.broadcast_to(units.reshape(expand), shape)
            weight_mask = broadcast if weight_mask is None else weight_mask & broadcast
        if weight_mask is not None:
            result.append((layer, variable, np.array(weight_mask, bool)))
    return result

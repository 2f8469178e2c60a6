"""The one model walk: find layers and their sparsifiable weights, clone models.

Everything that visits a model's layers goes through here (masks, reports,
the wrappers' `gate_model` / `mask_model`, strip, the path recorder), so a
custom layer registered once in `tf_dessilbi.registry` is seen the same way
everywhere.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import keras

from tf_dessilbi import _compat
from tf_dessilbi import registry


def check_graph_model(model, what: str) -> None:
    """Raises unless ``model`` is a built Sequential or Functional model.

    Raises:
        TypeError: not a `keras.Model`, or a subclassed model (nothing to clone).
        ValueError: the model is not built.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}() needs a keras.Model. Received: model={model!r}")
    if not _compat.is_graph_model(model):
        raise TypeError(
            f"{what}() works on Sequential and Functional models; "
            f"{type(model).__name__} {model.name!r} is subclassed. Build it "
            f"functionally, or wrap its layers in tf_dessilbi.layers.SparseGate / "
            f"MaskedLayer inside the model."
        )
    if not model.built:
        raise ValueError(
            f"{what}() needs a built model; model {model.name!r} is not built "
            f"(give it an Input or call it on data first)."
        )


def layers(model) -> list:
    """Every layer tracked by ``model`` (nested models' too), without ``model``."""
    return _compat.flatten_layers(model, include_self=False, recursive=True)


def leaf_layers(model) -> Iterator[keras.layers.Layer]:
    """The layers `keras.models.clone_model(recursive=True)` hands to its clone function."""
    for layer in model.layers:
        if _compat.is_graph_model(layer):
            yield from leaf_layers(layer)
        else:
            yield layer


def find_weight(layer, weight_name: str) -> Tuple[str, keras.Variable]:
    """``(attribute, variable)`` of a layer's weight ``weight_name``.

    Looks for the variable in the attribute of that name, or ``_name`` behind
    a property (how the wrappers substitute a masked weight during a call).

    Raises:
        TypeError: the layer holds no such variable.
    """
    if "/" in weight_name:  # a sub-layer's variable, by its path ("value/kernel")
        for variable in layer.weights:
            if (getattr(variable, "path", None) or variable.name).endswith("/" + weight_name):
                return weight_name, variable
    own = vars(layer)
    for attr in (weight_name, "_" + weight_name):
        value = own.get(attr)
        if isinstance(value, keras.Variable):
            return attr, value
    raise TypeError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no variable in "
        f"attribute {weight_name!r} or {'_' + weight_name!r} after build(); "
        f"register it with the weight_name its call() reads."
    )


def sparsifiable(model) -> Iterator[Tuple[keras.layers.Layer, keras.Variable, registry.LayerSpec]]:
    """``(layer, weight, spec)`` for every built layer of the table with a sparsifiable weight.

    A wrapped layer (inside `SparseGate` / `MaskedLayer`) is yielded itself;
    the wrappers are not in the table.
    """
    seen = set()
    for layer in layers(model):
        spec = registry.layer_spec(layer)
        if spec is None or not spec.sparsifiable or not layer.built or id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer, find_weight(layer, spec.weight_name)[1], spec


def bias_of(layer) -> Optional[keras.Variable]:
    """The layer's ``bias`` variable, if it has one."""
    bias = getattr(layer, "bias", None)
    return bias if isinstance(bias, keras.Variable) else None


def plain_clone(layer):
    """A fresh layer of the same class and config, and a function copying the weights into it."""
    if not isinstance(layer, keras.layers.Layer):
        return layer, lambda c: None  # a stateless keras.ops operation (x + 3.0)
    clone = _compat.layer_from_own_config(layer)
    weights = layer.get_weights()
    return clone, lambda c: c.set_weights(weights)


def clone_with(model, make_clone: Callable) -> keras.Model:
    """Clones ``model`` with ``make_clone(layer) -> (clone, copy_weights)``; the clone is not compiled.

    ``copy_weights(clone)`` runs once the cloned model is built.
    """
    copies = []

    def clone_function(layer):
        clone, copy_weights = make_clone(layer)
        copies.append((clone, copy_weights))
        return clone

    cloned = _compat.clone_model_uncompiled(model, clone_function)
    for clone, copy_weights in copies:
        copy_weights(clone)
    return cloned


def call_with_weight(layer, attribute: str, value, variable, inputs, training=None):
    """Runs ``layer.call(inputs)`` with ``layer.<attribute>`` replaced by ``value``.

    The attribute is swapped for the call only (bypassing
    ``Layer.__setattr__`` so nothing is tracked) and always restored to
    ``variable``. This is how `SparseGate` and `MaskedLayer` reuse the wrapped
    layer's own forward pass on a masked weight.
    """
    kwargs = {}
    if _compat.call_has_training_arg(layer):
        kwargs["training"] = training
    object.__setattr__(layer, attribute, value)
    try:
        return layer.call(inputs, **kwargs)
    finally:
        object.__setattr__(layer, attribute, variable)


def dead_layers(model) -> list:
    """Names of the sparsifiable layers whose weight is all zero (their output ignores the input)."""
    import numpy as np

    return sorted({layer.name for layer, variable, _ in sparsifiable(model)
                   if not np.any(keras.ops.convert_to_numpy(variable))})


def non_finite_weights(model) -> list:
    """Paths of the model's weights that hold a NaN or an infinity."""
    import numpy as np

    return [getattr(w, "path", w.name) for w in model.weights
            if np.issubdtype(np.dtype(keras.backend.standardize_dtype(w.dtype)), np.floating)
            and not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))]


def output_is_constant(model, seed: int = 0) -> bool:
    """True when the model gives the same outputs for different random inputs (a dead network).

    An empty residual branch leaves the output depending on the input through
    the skip connection, so only a network cut everywhere counts.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = []
    for tensor in model.inputs:
        shape = (3,) + tuple(8 if d is None else int(d) for d in tensor.shape[1:])
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "int" in dtype:
            inputs.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(dtype))
    outputs = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    for out in (outputs if isinstance(outputs, (list, tuple)) else
                outputs.values() if isinstance(outputs, dict) else [outputs]):
        out = np.asarray(keras.ops.convert_to_numpy(out), np.float64)
        if not np.allclose(out, out[:1], rtol=1e-6, atol=1e-7 * (1.0 + np.max(np.abs(out)))):
            return False
    return True


def refuse_broken(model, *, allow_dead: bool, diverged: str, dead: str) -> None:
    """Refuses a model with non-finite weights, or (unless ``allow_dead``) a dead one.

    Dead: some layer keeps no weight and the outputs no longer depend on the
    inputs (an emptied residual branch is alive). The messages are the
    caller's: ``diverged`` is formatted with ``bad`` (the non-finite
    weights, joined), ``dead`` with ``layers`` (the empty layers, joined).

    Raises:
        ValueError: with the caller's message.
    """
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(diverged.format(bad=", ".join(bad)))
    empty = dead_layers(model)
    if empty and not allow_dead and output_is_constant(model):
        raise ValueError(dead.format(layers=", ".join(empty)))

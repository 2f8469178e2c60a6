"""Gate a whole model, find its gates, read and drive their masks.

`gate_model` wraps the supported layers of a Sequential or Functional model
(clone-based, the original is left untouched). Everything else here finds
gates by walking the model's tracked layers, so it works as well for
subclassed and nested models whose layers were wrapped in `SparseGate`
directly. `tf_dessilbi.strip` (export) turns a gated model into a plain one.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras

from tf_dessilbi import gates
from tf_dessilbi import registry
from tf_dessilbi.layers.sparse_gate import SparseGate


def _is_graph_model(model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def _check_graph_model(model, what: str):
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}() needs a keras.Model. Received: model={model!r}")
    if not _is_graph_model(model):
        raise TypeError(
            f"{what}() clones Sequential and Functional models; "
            f"{type(model).__name__} {model.name!r} is subclassed. Wrap its "
            f"layers in tf_dessilbi.layers.SparseGate inside the model instead "
            f"(gated_layers(), gate_masks() and the callbacks find them)."
        )
    if not model.built:
        raise ValueError(
            f"{what}() needs a built model; model {model.name!r} is not built "
            f"(give it an Input or call it on data first)."
        )


def _leaf_layers(model):
    """Layers `clone_model(recursive=True)` hands to its clone function."""
    for layer in model.layers:
        if _is_graph_model(layer):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _clone_with(model, make_clone):
    """Clones ``model`` with ``make_clone(layer) -> (clone, copy_weights)``.

    ``copy_weights(clone)`` runs once the clone is built.
    """
    copies = []

    def clone_function(layer):
        clone, copy_weights = make_clone(layer)
        copies.append((clone, copy_weights))
        return clone

    cloned = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for clone, copy_weights in copies:
        copy_weights(clone)
    return cloned


def _plain_clone(layer):
    clone = layer.__class__.from_config(layer.get_config())
    weights = layer.get_weights()
    return clone, lambda c: c.set_weights(weights)


def gate_model(
    model: keras.Model,
    layer_filter: Optional[Callable[[keras.layers.Layer], bool]] = None,
    **gate_kwargs,
) -> keras.Model:
    """A copy of ``model`` with its supported layers wrapped in `SparseGate`.

    Weights are copied; the copy is not compiled. Layers of nested
    Sequential/Functional models are wrapped too.

    Args:
        model: a built Sequential or Functional model.
        layer_filter: ``layer_filter(layer) -> bool`` choosing the layers to
            gate. Defaults to every layer `SparseGate` supports (Dense,
            Conv1D/2D/3D, DepthwiseConv1D/2D and registered layers).
        **gate_kwargs: `SparseGate` arguments (``granularity``,
            ``gate_init``, ``penalty``) for every gated layer.

    Returns:
        The gated model (same name, inputs and outputs).

    Raises:
        TypeError: a subclassed model, a non-callable filter, or a filter
            choosing a layer `SparseGate` cannot gate.
        ValueError: an unbuilt model, bad gate arguments, or no layer chosen.

    Example:

    ```python
    gated = tf_dessilbi.gate_model(model, granularity="weight", penalty=1e-8)
    gated.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    gated.fit(x, y, callbacks=[GateTemperature(200.0, epochs=3)], epochs=3)
    ```
    """
    _check_graph_model(model, "gate_model")
    if layer_filter is not None and not callable(layer_filter):
        raise TypeError(
            f"`layer_filter` must be callable(layer) -> bool. Received: "
            f"layer_filter={layer_filter!r}"
        )
    # Validate everything before cloning anything.
    chosen = set()
    for layer in _leaf_layers(model):
        if isinstance(layer, (keras.layers.InputLayer, SparseGate)):
            continue
        if layer_filter is None:
            wanted = registry.gate_spec(layer) is not None
        else:
            wanted = bool(layer_filter(layer))
        if wanted:
            SparseGate(layer, **gate_kwargs)  # raises on unsupported layers / bad kwargs
            chosen.add(id(layer))
    if not chosen:
        raise ValueError(
            f"gate_model() found no layer to gate in model {model.name!r}. "
            f"Supported: {', '.join(registry.supported_layers())}."
        )

    def make_clone(layer):
        if id(layer) not in chosen:
            return _plain_clone(layer)
        inner, copy_weights = _plain_clone(layer)
        return SparseGate(inner, **gate_kwargs), lambda g: copy_weights(g.layer)

    return _clone_with(model, make_clone)


def gated_layers(model: keras.layers.Layer) -> list:
    """Every `SparseGate` in ``model`` (walking its tracked layers, nested included)."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, SparseGate) and all(layer is not g for g in found):
            found.append(layer)
    return found


def _require_gates(model, what):
    found = gated_layers(model)
    if not found:
        raise ValueError(
            f"{what}(): model {model.name!r} has no SparseGate layers; gate it "
            f"with tf_dessilbi.gate_model() or wrap layers in SparseGate."
        )
    unbuilt = [g.name for g in found if not g.built]
    if unbuilt:
        raise ValueError(f"{what}(): gate layers {unbuilt} are not built yet.")
    return found


def gate_masks(model: keras.layers.Layer) -> dict:
    """Hard masks ``{inner layer name: bool array shaped like its kernel}``.

    True where the gate is open (s > 0): the weights the ticket keeps.
    """
    masks = {}
    for gate in _require_gates(model, "gate_masks"):
        name = gate.layer.name
        if name in masks:
            raise ValueError(
                f"gate_masks(): two gated layers are named {name!r}; give the "
                f"wrapped layers unique names."
            )
        masks[name] = gate.kept_mask()
    return masks


def set_ticket_mode(model: keras.layers.Layer, ticket: bool = True) -> None:
    """Switches every gate to the hard mask (``ticket=True``) or back to search."""
    for gate in _require_gates(model, "set_ticket_mode"):
        gate.ticket.assign(1.0 if ticket else 0.0)


def set_beta(model: keras.layers.Layer, beta: float) -> None:
    """Sets the temperature β of every gate."""
    for gate in _require_gates(model, "set_beta"):
        gate.beta.assign(float(beta))


def reset_gates(model: keras.layers.Layer) -> None:
    """The between-rounds reset: s ← min(β·s, s₀) and β ← 1 for every gate."""
    found = _require_gates(model, "reset_gates")
    new_scores = [gates.reset_scores(g.gate_scores, g.beta, g.gate_init) for g in found]
    for gate, scores in zip(found, new_scores):
        gate.gate_scores.assign(scores)
        gate.beta.assign(1.0)

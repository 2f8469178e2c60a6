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

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.gates import maths as gates
from tf_dessilbi.layers.sparse_gate import SparseGate


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
    walk.check_graph_model(model, "gate_model")
    if layer_filter is not None and not callable(layer_filter):
        raise TypeError(
            f"`layer_filter` must be callable(layer) -> bool. Received: "
            f"layer_filter={layer_filter!r}"
        )
    # Validate everything before cloning anything.
    chosen = set()
    for layer in walk.leaf_layers(model):
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Wrapper)):
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
            return walk.plain_clone(layer)
        inner, copy_weights = walk.plain_clone(layer)
        return SparseGate(inner, **gate_kwargs), lambda g: copy_weights(g.layer)

    return walk.clone_with(model, make_clone)


def gated_layers(model: keras.layers.Layer) -> list:
    """Every `SparseGate` in ``model`` (walking its tracked layers, nested included)."""
    return masks_lib.find_wrappers(model, SparseGate)


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

    True where the gate is open (s > 0): the weights the ticket keeps. The
    same masks as `tf_dessilbi.masks.GateMasks`, keyed by layer name.
    """
    found = _require_gates(model, "gate_masks")
    mask = masks_lib.GateMasks().mask(model)
    return {g.layer.name: mask.weights[masks_lib.weight_key(g.layer, g.weight_variable)] for g in found}


def set_ticket_mode(model: keras.layers.Layer, ticket: bool = True) -> None:
    """Switches every gate to the hard mask (``ticket=True``) or back to search."""
    ticket = _validate.boolean("ticket", ticket)
    for gate in _require_gates(model, "set_ticket_mode"):
        gate.ticket.assign(1.0 if ticket else 0.0)


def set_beta(model: keras.layers.Layer, beta: float) -> None:
    """Sets the temperature β of every gate (a finite number > 0).

    Raises:
        ValueError, TypeError: β is not a finite positive number.
    """
    beta = _validate.positive("beta", beta)
    for gate in _require_gates(model, "set_beta"):
        gate.beta.assign(beta)


def reset_gates(model: keras.layers.Layer) -> None:
    """The between-rounds reset: s ← min(β·s, s₀) and β ← 1 for every gate."""
    found = _require_gates(model, "reset_gates")
    new_scores = [gates.reset_scores(g.gate_scores, g.beta, g.gate_init) for g in found]
    for gate, scores in zip(found, new_scores):
        gate.gate_scores.assign(scores)
        gate.beta.assign(1.0)

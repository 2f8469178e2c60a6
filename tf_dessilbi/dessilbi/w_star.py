"""The sparse model of a DessiLBI run: W* = W on supp(Γ)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.masks import unwrap_optimizer


class WStar:
    """Handle returned by `apply_w_star`: restores the dense W on demand.

    Usable as a context manager: the dense weights come back on exit.
    """

    def __init__(self, saved):
        self._saved = saved
        self.restored = False

    def restore(self):
        """Puts back the dense W (and biases) saved by `apply_w_star`."""
        if self.restored:
            return
        for variable, value in self._saved:
            variable.assign(value)
        self.restored = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def following_batch_norms(model) -> dict:
    """``{layer: [BatchNormalization layers fed directly by its output]}`` of a graph model.

    Only BatchNormalization over the last axis whose one input is the
    layer's output (conv → BN, the residual networks' pattern) counts; an
    empty dict for subclassed models, whose graph is unknown.
    """
    from tf_dessilbi import _compat

    if not _compat.is_graph_model(model):
        return {}
    found = {}
    for node in _compat.graph_nodes(model):
        layer = _compat.node_operation(node)
        if isinstance(layer, keras.Model):
            for inner, norms in following_batch_norms(layer).items():
                found.setdefault(inner, []).extend(norms)
            continue
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        inputs = _compat.node_input_tensors(node)
        axis = layer.axis if isinstance(layer.axis, int) else None
        if len(inputs) != 1 or axis not in (-1, len(inputs[0].shape) - 1):
            continue
        producer = _compat.producing_operation(inputs[0])
        found.setdefault(producer, []).append(layer)
    return found


def w_star_updates(model: keras.Model, optimizer, prune_bias: bool = True) -> list:
    """``[(variable, old value, W* value)]`` for every coupled kernel (and biases).

    With ``prune_bias`` a unit outside the support also loses its bias and,
    where its output feeds a BatchNormalization directly, that channel's γ
    and β: the BN would otherwise turn the zero channel into the constant
    β − γ·m/√(v+ε), so the "removed" filter would still output something.
    Computed without assigning anything (all or nothing for the callers).
    """
    mask = masks_lib.OptimizerSupport(optimizer).mask(model)
    norms = following_batch_norms(model) if prune_bias else {}
    updates = []
    for layer, kernel, weight_mask in masks_lib.apply_to(mask, model):
        w = ops.convert_to_numpy(kernel)
        updates.append((kernel, w, np.where(weight_mask, w, 0).astype(w.dtype)))
        bias = walk.bias_of(layer)
        if prune_bias and bias is not None:
            kept = masks_lib.unit_mask_of(weight_mask, registry.layer_spec(layer).unit_axes)
            b = ops.convert_to_numpy(bias)
            if kept.size == b.size:
                updates.append((bias, b, np.where(kept, b, 0).astype(b.dtype)))
        if prune_bias and layer in norms:
            kept = masks_lib.unit_mask_of(weight_mask, registry.layer_spec(layer).unit_axes)
            for norm in norms[layer]:
                for variable in (norm.gamma, norm.beta):
                    if variable is None or int(np.prod(variable.shape)) != kept.size:
                        continue
                    v = ops.convert_to_numpy(variable)
                    updates.append((variable, v, np.where(kept, v, 0).astype(v.dtype)))
    return updates


def apply_w_star(model: keras.Model, optimizer, prune_bias: bool = True) -> WStar:
    """Sets every coupled kernel to W* = W ⊙ 1[Γ ≠ 0], the sparse model.

    Args:
        model: the model trained with `optimizer`.
        optimizer: a built `tf_dessilbi.DessiLBI` (or anything with
            ``support(variable)``).
        prune_bias: also zero the bias of every output unit (filter, neuron)
            whose weights are all outside the support, and the γ/β of the
            BatchNormalization channel it feeds, so a pruned unit outputs
            act(0) instead of act(bias) or a BN constant and can really be
            removed. (The authors' code keeps those.) Defaults to `True`.

    Returns:
        A `WStar` handle; ``handle.restore()`` (or leaving a ``with`` block)
        puts the dense W back.

    Raises:
        TypeError: ``optimizer`` has no support (not DessiLBI), or
            ``prune_bias`` is not a bool.
        ValueError: the optimizer is not built for this model's variables.
    """
    prune_bias = _validate.boolean("prune_bias", prune_bias)
    inner = unwrap_optimizer(optimizer)
    if hasattr(inner, "support") and not getattr(inner, "built", False):
        raise ValueError(
            "apply_w_star() needs an optimizer that has been built for the "
            "model (train at least one step first)."
        )
    updates = w_star_updates(model, inner, prune_bias)
    saved = []
    for variable, old, new in updates:
        variable.assign(new)
        saved.append((variable, old))
    return WStar(saved)

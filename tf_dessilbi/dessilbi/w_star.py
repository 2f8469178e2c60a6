"""The sparse model of a DessiLBI run: W* = W on supp(Γ)."""

from __future__ import annotations

import weakref

import keras
import numpy as np
from keras import ops

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.masks import unwrap_optimizer


_ACTIVE = []  # weak references to the `WStar` handles not restored yet, oldest first


class WStar:
    """Handle returned by `apply_w_star`: restores the dense W on demand.

    Usable as a context manager: the dense weights come back on exit.
    """

    def __init__(self, saved):
        self._saved = saved
        self.restored = False

    def restore(self):
        """Puts back the dense W (and biases) saved by `apply_w_star`.

        Order-proof for nested handles: restoring a handle also retires the
        handles taken after it on the same variables (they saved W*, not
        the dense W), so whichever order they are restored in, the model
        ends at the dense W the first handle saved.
        """
        if self.restored:
            return
        mine = {id(variable) for variable, _ in self._saved}
        live = [h for h in (ref() for ref in _ACTIVE) if h is not None and not h.restored]
        if self in live:
            for later in live[live.index(self) + 1:]:
                if mine & {id(variable) for variable, _ in later._saved}:
                    later.restored = True
        _ACTIVE[:] = [ref for ref in _ACTIVE if ref() is not None and ref() is not self
                      and not ref().restored]
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


def w_star_targets(model: keras.Model, optimizer, prune_bias: bool = True) -> list:
    """``(kernel, unit axes, unit variables)`` for every coupled kernel: what W* writes.

    The unit variables are the kernel's bias and, where its output feeds a
    BatchNormalization directly, that channel's γ and β (with
    ``prune_bias``; else none): a unit outside the support would otherwise
    still output act(bias) or the BN constant β − γ·m/√(v+ε).

    Raises:
        TypeError: ``optimizer`` has no support (not DessiLBI).
        ValueError: it is not built, or a layer's kernel is not one of its variables.
    """
    source = masks_lib.OptimizerSupport(optimizer)  # the package's checks and messages
    norms = following_batch_norms(model) if prune_bias else {}
    targets = []
    for layer, kernel, _, _ in source.coupled(model):
        units = [walk.bias_of(layer)] if prune_bias else []
        for norm in norms.get(layer, ()):
            units += [norm.gamma, norm.beta]
        targets.append((kernel, registry.layer_spec(layer).unit_axes,
                        [u for u in units if u is not None]))
    return targets


def w_star_values(targets, optimizer) -> list:
    """``[(variable, W* value)]`` for `w_star_targets`, as tensors (graph-safe: nothing assigned).

    W* = W ⊙ 1[Γ ≠ 0]; a unit variable keeps its entry iff the unit keeps
    at least one weight.
    """
    out = []
    for kernel, unit_axes, unit_variables in targets:
        support = optimizer.support(kernel)
        w = ops.convert_to_tensor(kernel)
        out.append((kernel, ops.where(support, w, ops.zeros_like(w))))
        if not unit_variables:
            continue
        ndim = len(kernel.shape)
        axes = {a % ndim for a in unit_axes}
        others = tuple(a for a in range(ndim) if a not in axes)
        kept = ops.reshape(ops.any(support, axis=others) if others else support, (-1,))
        for variable in unit_variables:
            if int(np.prod(variable.shape)) != int(kept.shape[0]):
                continue
            value = ops.reshape(ops.convert_to_tensor(variable), (-1,))
            out.append((variable, ops.reshape(ops.where(kept, value, ops.zeros_like(value)),
                                              variable.shape)))
    return out


def w_star_masks(model: keras.Model, optimizer, prune_bias: bool = True) -> list:
    """``[(variable, bool mask)]``: which entries W* keeps, for every variable `apply_w_star` writes.

    W* = W ⊙ mask: a kernel's mask is 1[Γ ≠ 0], a unit variable's (bias,
    BN γ/β with ``prune_bias``) whether its unit keeps a weight (as
    `w_star_values`). As NumPy, computed without assigning anything.
    """
    out = []
    for kernel, unit_axes, unit_variables in w_star_targets(model, optimizer, prune_bias):
        support = np.asarray(ops.convert_to_numpy(optimizer.support(kernel)), bool)
        out.append((kernel, support))
        ndim = support.ndim
        axes = {a % ndim for a in unit_axes}
        others = tuple(a for a in range(ndim) if a not in axes)
        kept = (support.any(axis=others) if others else support).reshape(-1)
        for variable in unit_variables:
            if int(np.prod(variable.shape)) == kept.size:
                out.append((variable, kept.reshape(tuple(variable.shape))))
    return out


def w_star_updates(model: keras.Model, optimizer, prune_bias: bool = True) -> list:
    """``[(variable, old value, W* value)]`` as NumPy, computed without assigning anything
    (all or nothing for the callers); see `w_star_targets` for what is written."""
    prune_bias = _validate.boolean("prune_bias", prune_bias)
    targets = w_star_targets(model, optimizer, prune_bias)
    return [(variable, ops.convert_to_numpy(variable), ops.convert_to_numpy(new))
            for variable, new in w_star_values(targets, optimizer)]


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
    handle = WStar(saved)
    _ACTIVE.append(weakref.ref(handle))
    return handle

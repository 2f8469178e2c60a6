"""The one mask update of the mask methods: prune to a density, or drop and grow.

A `MaskUpdater` is told, at a training step t, whether and how much to change
the masks of a model's `tf_dessilbi.layers.MaskedLayer` wrappers; it provides
the scores, this module does the update, in `keras.ops`:

* prune-only (GMP, SNIP, GraSP, IMP; ``grow_scores`` returns None): keep the
  ``round(d · n)`` active weights with the largest ``drop_scores`` (globally
  or per layer); a pruned weight never comes back;
* drop/grow (SET, RigL): in every layer drop the k = round(f_t · n_active)
  active weights with the smallest ``drop_scores``, then grow the k weights
  with the largest ``grow_scores`` among those inactive after the drop (a
  weight just dropped may be regrown, as in google-research/rigl), so the
  number of active weights is unchanged. Newly grown weights are set to 0
  (a dropped-and-regrown weight keeps its value: it never left), and the
  optimizer's slots (momentum, Adam's m and v) are zeroed outside the new
  mask and at the newly grown weights, so a grown weight starts as freshly
  initialized instead of with the decayed momentum it had before it was
  dropped (as google-research/rigl and the PyTorch RigL reset momentum).

Every check (keys, shapes, finite scores, counts) runs before the first
variable is written, so a failed update leaves the model as it was. The
updater binds to the first model it updates and refuses any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

import keras
import numpy as np
from absl import logging
from keras import ops

from tf_dessilbi import _compat, _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi.sparse import topk


@dataclasses.dataclass(frozen=True)
class Target:
    """One masked weight: its `Mask` key, the wrapper, the weight W and mask M variables."""

    key: str
    wrapper: keras.layers.Layer
    weight: keras.Variable
    mask: keras.Variable


def targets(model) -> list:
    """The `Target` of every `MaskedLayer` in ``model`` (nested included), in layer order.

    Raises:
        ValueError: the model has no `MaskedLayer` (wrap it with
            `tf_dessilbi.layers.mask_model` first) or one is not built.
    """
    from tf_dessilbi.layers.masked import MaskedLayer

    found = []
    for wrapper in masks_lib.find_wrappers(model, MaskedLayer):
        if not wrapper.built:
            raise ValueError(f"MaskedLayer {wrapper.name!r} is not built: build the model first.")
        key = masks_lib.weight_key(wrapper.layer, wrapper.weight_variable)
        found.append(Target(key, wrapper, wrapper.weight_variable, wrapper.weight_mask))
    if not found:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no MaskedLayer, so no sparsifiable "
            f"weight to update: wrap it with tf_dessilbi.layers.mask_model(model) (or "
            f"tf_dessilbi.sparse.prune_low_magnitude) first."
        )
    keys = [t.key for t in found]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Two masked weights share a key in {keys}: give the layers unique names.")
    return found


def snapshot(variable):
    """The variable's current value as a tensor (not a live reference to the variable)."""
    return ops.copy(ops.convert_to_tensor(variable))


def assign_masks(model, new_masks: Mapping, zero: Optional[Mapping] = None) -> None:
    """Writes masks (and zeroes weights where ``zero`` is True), all or nothing.

    Args:
        model: the masked model.
        new_masks: ``{key: bool tensor}``, a subset of the model's keys.
        zero: ``{key: bool tensor}``: weights set to 0 (newly grown ones).

    Raises:
        ValueError: an unknown key or a wrong shape (nothing is written).
    """
    by_key = {t.key: t for t in targets(model)}
    zero = dict(zero or {})
    for what, mapping in (("mask", new_masks), ("zeroing", zero)):
        for key, value in mapping.items():
            if key not in by_key:
                raise ValueError(
                    f"A {what} for {key!r} names no masked weight of model {model.name!r}; "
                    f"its masked weights are {sorted(by_key)[:12]}"
                )
            shape = tuple(by_key[key].weight.shape)
            if tuple(ops.shape(value)) != shape:
                raise ValueError(
                    f"The {what} for {key!r} has shape {tuple(ops.shape(value))}; the weight {shape}."
                )
    for key, value in new_masks.items():
        by_key[key].mask.assign(ops.cast(value, "bool"))
    for key, value in zero.items():
        weight = by_key[key].weight
        current = ops.convert_to_tensor(weight)
        weight.assign(ops.where(ops.cast(value, "bool"), ops.zeros_like(current), current))


def reset_slots(model, new_masks: Mapping, grown: Mapping) -> int:
    """Zeroes the optimizer slots of each masked weight outside ``new_masks`` and at ``grown``.

    A no-op (returns 0) while the model has no built optimizer.

    Returns:
        The number of slot variables written.
    """
    optimizer = masks_lib.unwrap_optimizer(getattr(model, "optimizer", None))
    by_key = {t.key: t for t in targets(model)}
    written = 0
    for key, new in new_masks.items():
        slots = _compat.slot_variables(optimizer, by_key[key].weight)
        if not slots:
            continue
        clear = ops.logical_not(ops.cast(new, "bool"))
        if key in grown:
            clear = ops.logical_or(clear, ops.cast(grown[key], "bool"))
        for slot in slots:
            current = ops.convert_to_tensor(slot)
            slot.assign(ops.where(clear, ops.zeros_like(current), current))
            written += 1
    return written


def drop_grow(masks: Mapping, drop_scores: Mapping, grow_scores: Mapping, counts: Mapping):
    """The drop/grow update on tensors: ``(new masks, newly grown)``.

    In each layer l: drop the ``counts[l]`` active weights of smallest drop
    score, grow as many of largest grow score among the inactive-after-drop
    weights. ``|new mask| = |mask|`` exactly.

    Raises:
        ValueError: a count above the number of active weights, or the
            errors of `topk.topk_masks`.
    """
    active = {k: ops.cast(m, "bool") for k, m in masks.items()}
    n_active = {k: int(ops.convert_to_numpy(ops.sum(ops.cast(m, "int32")))) for k, m in active.items()}
    if set(counts) != set(masks):
        raise ValueError(f"`counts` must have the keys of the masks {sorted(masks)[:8]}.")
    for key, k in counts.items():
        if k > n_active[key]:
            raise ValueError(f"Cannot drop {k} weights of {key!r}: only {n_active[key]} are active.")
    kept = topk.topk_masks(
        drop_scores, candidates=active,
        counts={key: n_active[key] - counts[key] for key in masks},
    )
    inactive = {k: ops.logical_not(m) for k, m in kept.items()}
    grown = topk.topk_masks(grow_scores, candidates=inactive, counts=dict(counts))
    new = {k: ops.logical_or(kept[k], grown[k]) for k in masks}
    newly = {k: ops.logical_and(grown[k], ops.logical_not(active[k])) for k in masks}
    return new, newly


def prune(masks: Mapping, scores: Mapping, density, scope: str = "layer") -> dict:
    """Prune-only update: the top-scored active weights at ``density`` (never grows).

    A layer (or, globally, the model) already at or below the density keeps its mask.
    """
    active = {k: ops.cast(m, "bool") for k, m in masks.items()}
    n_active = {k: int(ops.convert_to_numpy(ops.sum(ops.cast(m, "int32")))) for k, m in active.items()}
    sizes = {k: int(np.prod(ops.shape(m))) for k, m in masks.items()}
    if isinstance(density, Mapping) or scope == "layer":
        dens = density if isinstance(density, Mapping) else {k: density for k in masks}
        if set(dens) != set(masks):
            raise ValueError(f"Per-layer densities must have the keys {sorted(masks)[:8]}.")
        counts = {}
        for k in masks:
            d = topk._density(f"density[{k!r}]", dens[k])
            counts[k] = min(n_active[k], topk.kept_count(sizes[k], d))
        return topk.topk_masks(scores, candidates=active, counts=counts)
    d = topk._density("density", density)
    keep = min(sum(n_active.values()), topk.kept_count(sum(sizes.values()), d))
    return topk.topk_masks(scores, candidates=active, counts=keep)


class MaskUpdater:
    """Base of the mask methods: says when and how much, gives the scores.

    Subclasses set ``kind`` (``"prune"`` or ``"drop_grow"``) and implement
    `amount` (``step -> None`` when no update is due, else a density for
    ``"prune"`` (float or ``{key: d}``) or a drop fraction f_t for
    ``"drop_grow"``) and `drop_scores` (default |W|); drop/grow updaters
    also implement `grow_scores`. ``needs_gradients = True`` makes the
    driver pass ``{key: ∂L/∂(W⊙M)}`` (see `gradients`).

    Args:
        scope: ``"layer"`` (per-layer densities) or ``"global"`` (one top-k
            over every masked weight) for prune-only updates. Defaults to
            ``"layer"``.
        name: a label for logs.
    """

    kind = "prune"
    needs_gradients = False

    def __init__(self, scope: str = "layer", name: Optional[str] = None):
        _validate.one_of("scope", scope, topk.SCOPES)
        self.scope = scope
        self.name = name or type(self).__name__
        self._signature = None
        self.updates = 0

    # --------------------------------------------------------------- hooks
    def amount(self, step: int):
        raise NotImplementedError

    def drop_scores(self, targets_: list, gradients: Optional[Mapping]) -> dict:
        """|W| of every target (higher = keep)."""
        return {t.key: ops.abs(ops.convert_to_tensor(t.weight)) for t in targets_}

    def grow_scores(self, targets_: list, gradients: Optional[Mapping], step: int):
        """None: a prune-only updater."""
        return None

    def gradients(self, model) -> dict:
        """``{key: ∂L/∂(W⊙M)}`` on one batch (for ``needs_gradients`` updaters)."""
        raise NotImplementedError(f"{self.name} does not compute gradients.")

    def prepare(self, model) -> None:
        """Called by `UpdateMasks` when training begins, before any update (binds the model).

        Override for work needed once before training (e.g. scoring batches).
        """
        self.bind(model)

    # ------------------------------------------------------------- binding
    def bind(self, model) -> list:
        """Binds the updater to ``model`` (first call) and checks it is the same one after.

        Raises:
            ValueError: the updater was bound to a model with other masked weights.
        """
        found = targets(model)
        signature = tuple((t.key, tuple(t.weight.shape)) for t in found)
        if self._signature is None:
            self._signature = signature
        elif signature != self._signature:
            raise ValueError(
                f"{self.name} was set up for a model with masked weights "
                f"{[k for k, _ in self._signature][:6]}...; received model "
                f"{model.name!r} with {[k for k, _ in signature][:6]}...: use one "
                f"updater per model."
            )
        return found

    def get_state(self) -> dict:
        """The updater's state (bound weights, updates done)."""
        return {"signature": [[k, list(s)] for k, s in (self._signature or ())],
                "updates": self.updates}

    def set_state(self, state: Mapping, model=None) -> None:
        """Restores `get_state`; with ``model``, checks it has the recorded weights.

        Raises:
            ValueError: the state belongs to a model with other masked weights.
        """
        signature = tuple((k, tuple(s)) for k, s in state["signature"])
        if model is not None:
            found = tuple((t.key, tuple(t.weight.shape)) for t in targets(model))
            if signature and found != signature:
                raise ValueError(
                    f"This {self.name} state is from a model with masked weights "
                    f"{[k for k, _ in signature][:6]}; model {model.name!r} has "
                    f"{[k for k, _ in found][:6]}."
                )
        self._signature = signature or None
        self.updates = int(state.get("updates", 0))

    # -------------------------------------------------------------- update
    def update(self, model, step: int, gradients: Optional[Mapping] = None) -> bool:
        """Updates the masks if one is due at ``step``; True when it did."""
        found = self.bind(model)
        amount = self.amount(int(step))
        if amount is None:
            return False
        if self.needs_gradients and gradients is None:
            gradients = self.gradients(model)
        masks = {t.key: snapshot(t.mask) for t in found}
        drop = self.drop_scores(found, gradients)
        if self.kind == "prune":
            new = prune(masks, drop, amount, self.scope)
            assign_masks(model, new)
            newly = {}
        else:
            f = _validate.real("drop fraction", amount, minimum=0.0, maximum=1.0)
            counts = {
                k: int(np.floor(f * int(ops.convert_to_numpy(ops.sum(ops.cast(m, "int32")))) + 0.5))
                for k, m in masks.items()
            }
            grow = self.grow_scores(found, gradients, int(step))
            new, newly = drop_grow(masks, drop, grow, counts)
            assign_masks(model, new, zero=newly)
            reset_slots(model, new, newly)
        self.updates += 1
        kept = sum(int(ops.convert_to_numpy(ops.sum(ops.cast(m, "int32")))) for m in new.values())
        logging.info("%s at step %d: %s=%s, %d weights active.", self.name, step,
                     "density" if self.kind == "prune" else "drop fraction",
                     amount if not isinstance(amount, Mapping) else "per layer", kept)
        return True


class PruneOnce(MaskUpdater):
    """A one-shot prune-only updater: at ``at_step`` keep density 1 − s by ``drop_scores``.

    Subclasses (SNIP, GraSP, ...) override `drop_scores` with their
    saliencies; the default is |W| (one-shot magnitude pruning).

    Args:
        sparsity: s ∈ [0, 1) (a float; or ``{key: s_l}`` per layer).
        at_step: the step to prune at. Defaults to `0`.
        scope: ``"global"`` or ``"layer"``. Defaults to ``"global"``.
    """

    kind = "prune"

    def __init__(self, sparsity, at_step: int = 0, scope: str = "global", name: Optional[str] = None):
        if isinstance(sparsity, Mapping):
            self.density = {k: 1.0 - _validate.fraction(f"sparsity[{k!r}]", v) for k, v in sparsity.items()}
        else:
            self.density = 1.0 - _validate.fraction("sparsity", sparsity)
        self.at_step = _validate.integer("at_step", at_step, minimum=0)
        super().__init__(scope=scope, name=name)

    def amount(self, step: int):
        return self.density if int(step) == self.at_step else None

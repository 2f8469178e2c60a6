"""`shrink`: a sparse model with its removed filters and neurons physically gone."""

from __future__ import annotations

import contextlib
from typing import Iterable

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import walk
from tf_dessilbi.shrink import fold as fold_lib
from tf_dessilbi.dependency import graph as graph_lib
from tf_dessilbi.dependency import handlers as handlers_lib
from tf_dessilbi.shrink import rebuild as rebuild_lib
from tf_dessilbi.shrink import report as report_lib
from tf_dessilbi.shrink import units as units_lib


def shrink(
    model: keras.Model,
    source=None,
    *,
    optimizer=None,
    round_to: int = 1,
    keep: Iterable[str] = (),
    min_units: int = 1,
    fold_constants: bool = True,
    return_report: bool = False,
    allow_dead: bool = False,
):
    """A smaller plain Keras model: the sparse model without its removed units.

    The producer's output channels and every consumer's input channels of a
    removed unit are cut out (a Dense after a Flatten loses the H·W inputs of
    a removed channel; channels coupled by a residual Add go only when they go
    in every branch). A unit counts as removed when (see
    `tf_dessilbi.shrink.units`) its whole fan-in kernel column is zero under
    the mask (a filter / neuron outside the support, a gated-off filter, a
    column an elementwise mask emptied), or when none of its outputs reaches
    a kept unit through a nonzero weight.

    Exactness: let the *reference* be the sparse model with the removed units'
    kernel, bias and BatchNormalization γ/β zeroed. The result equals the
    reference (up to float32 rounding). Where a removed unit outputs a
    constant c and its consumer is linear without padding, c's contribution is
    folded into the consumer's bias (``fold_constants``), so there the result
    equals the sparse model itself; ``report.folded`` lists those units and
    ``report.zeroed`` the units where it equals the reference only.

    Args:
        model: a built Sequential or Functional model (nested ones included;
            `SparseGate` / `MaskedLayer` wrappers are stripped first). It is
            left unchanged.
        source: any mask source `tf_dessilbi.masks.resolve` takes: None (the
            masks the model carries, and ``optimizer``'s support), a
            `tf_dessilbi.masks.Mask`, a `MaskSource` (gates, fixed masks), a
            DessiLBI optimizer or ``{layer name: bool[units]}`` (True = keep).
            Defaults to `None`.
        optimizer: the DessiLBI optimizer that trained ``model``: its W* is
            applied (as `tf_dessilbi.strip` does) and supp(Γ) is the mask.
            Defaults to `None`.
        round_to: each producer keeps a multiple of this many units (the
            strongest removed units, by ‖W[…, j]‖₂, are kept back). Defaults to `1`.
        keep: names of layers (or `keras.ops` nodes) kept whole, weights,
            inputs and outputs, whatever they hold: layers shrink cannot
            reason about go here. The layers feeding the model's outputs
            keep their output units anyway. Defaults to `()`.
        min_units: a producer never keeps fewer units (an emptied layer keeps
            its strongest). Defaults to `1`.
        fold_constants: fold removed units' constant outputs into consumer
            biases. Defaults to `True`.
        return_report: also return a `ShrinkReport`. Defaults to `False`.
        allow_dead: shrink even when the mask empties layers so that the
            network's outputs no longer depend on its inputs (an all-False
            mask of a layer in the chain or of the logits, an empty supp Γ);
            by default that is refused. An emptied residual branch, whose
            skip connection still carries the input, is not dead. Defaults
            to `False`.

    Returns:
        The new model (Sequential for Sequential, Functional for Functional),
        or ``(model, ShrinkReport)`` with ``return_report=True``.

    Raises:
        TypeError: a wrong argument type, or a subclassed model.
        ValueError: a layer or op shrink cannot reason about (named, with its
            class and the way out: ``keep=`` or `tf_dessilbi.register_layer`),
            a mask for an unknown layer or of the wrong length, or a bad
            argument, raised before anything is built; a layer the mask
            empties (without ``allow_dead=True``); non-finite weights or Γ.
            Nothing is modified.

    Example:

    ```python
    small, report = tf_dessilbi.shrink(model, optimizer=model.optimizer,
                                       return_report=True)
    print(report)
    small.save("small.keras")
    ```
    """
    walk.check_graph_model(model, "shrink")
    round_to = _validate.positive_int("round_to", round_to)
    min_units = _validate.positive_int("min_units", min_units)
    fold_constants = _validate.boolean("fold_constants", fold_constants)
    return_report = _validate.boolean("return_report", return_report)
    allow_dead = _validate.boolean("allow_dead", allow_dead)
    if isinstance(keep, str):
        keep = (keep,)
    try:
        keep = tuple(keep)
    except TypeError:
        raise TypeError(f"`keep` must be layer names. Received: keep={keep!r}") from None
    if not all(isinstance(name, str) for name in keep):
        raise TypeError(f"`keep` must be layer names. Received: keep={keep!r}")

    mask = masks_lib.resolve(source, model, optimizer=optimizer)
    raw_norms = _raw_norms(model)
    with _masked(model, optimizer, mask) as working:
        walk.refuse_broken(
            working, allow_dead=allow_dead,
            diverged=f"shrink(): model {model.name!r} has non-finite weights ({{bad}}): the run "
                     f"diverged; nothing to shrink.",
            dead="shrink(): the mask keeps no weight of layer(s) {layers}, so the network's outputs "
                 "would not depend on its inputs. Train longer or lower the sparsity pressure; pass "
                 "allow_dead=True to shrink it anyway.")
        graph = graph_lib.Graph(working, keep)
        weights = {key: handlers_lib.weights_of(info.layer) for key, info in graph.infos.items()}

        extra_pinned = []
        for _ in range(20):
            decision = units_lib.decide(
                graph,
                weights,
                extra_pinned=extra_pinned,
                min_units=min_units,
                round_to=round_to,
                raw_norms=raw_norms,
            )
            plan = fold_lib.plan(graph, working, weights, decision, fold_constants)
            if not plan.pin:
                break
            extra_pinned.extend(plan.pin)
        else:  # pragma: no cover - each round pins at least one more class
            raise RuntimeError("shrink(): constant folding did not settle.")
        shrunk = rebuild_lib.Rebuilder(graph, decision, weights, plan.bias_delta).build(working)
        report = report_lib.build_report(graph, decision, plan, working, shrunk, extra_pinned)
    logging.info(
        "Shrank %r: parameters %d → %d, MACs %d → %d.",
        model.name,
        report.params_before,
        report.params_after,
        report.macs_before,
        report.macs_after,
    )
    return (shrunk, report) if return_report else shrunk


def _raw_norms(model) -> dict:
    """``{layer name: ‖W[…, j]‖₂}`` of the input model's producers, before any mask."""
    norms = {}
    for layer, _, spec in walk.sparsifiable(model):
        handler = spec.cut
        if hasattr(handler, "column_norms"):
            try:
                norms.setdefault(layer.name, handler.column_norms(handlers_lib.weights_of(layer)))
            except KeyError:
                continue
    return norms


@contextlib.contextmanager
def _masked(model, optimizer, mask):
    """The model to cut: the sparse weights with ``mask`` applied.

    A plain model is masked in place for the duration of the block (W* set
    first where ``optimizer`` is given, as `tf_dessilbi.apply_w_star` does)
    and restored on exit, even on an error: a copy of a large model costs
    more than the rest of `shrink`. A model with mask wrappers is first
    stripped to a plain copy (`tf_dessilbi.strip`).
    """
    from tf_dessilbi.dessilbi.w_star import apply_w_star
    from tf_dessilbi.export.strip import is_mask_wrapper, strip

    in_place = not any(is_mask_wrapper(layer) for layer in walk.layers(model))
    with contextlib.ExitStack() as stack:
        if not in_place:
            working = strip(model, optimizer)
        else:
            working = model
            if optimizer is not None:
                stack.enter_context(apply_w_star(model, optimizer))
        saved = []
        try:
            for _, variable, weight_mask in masks_lib.apply_to(mask, working):
                if np.all(weight_mask):  # nothing to zero: no write, nothing to restore
                    continue
                value = keras.ops.convert_to_numpy(variable)
                if in_place:
                    saved.append((variable, value))
                variable.assign(np.where(weight_mask, value, np.zeros_like(value)))
            yield working
        finally:
            for variable, value in reversed(saved):
                variable.assign(value)

"""The units of supp Γ in the group-coupled kernels: how many, their margins, and setting them.

A unit g (a conv filter, a dense neuron: the last axis of a kernel coupled
by ``"filter"``/``"neuron"``) is in supp Γ while its margin ‖V_g‖₂ / λ_g
exceeds 1 (Γ_g = κ·max(0, 1 − λ_g/‖V_g‖₂)·V_g). `WStarFinetune` counts these
units to decide when to start (`support_unit_fraction`,
`support_weight_fraction`) and, when it starts, cuts the support to ⌈ρ·N⌉
units by margin (`trim_units`) or sets each kernel's width (`set_layer_units`,
``layer_units`` = {pattern: k_l}, checked before training by
`check_layer_units`), and rounds the widths up to multiples of r (`round_units`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from keras import ops

from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import structures as structures_lib
from tf_dessilbi.dessilbi.structures import GROUP_STRUCTURES
from tf_dessilbi.masks import unit_mask_of, unit_norms, unwrap_optimizer
from tf_dessilbi.dependency.groups import round_up_units


def support_weight_fraction(optimizer) -> Optional[float]:
    """Σ |supp Γ| / Σ |W| over every coupled kernel (any structure); None if none is coupled."""
    optimizer = unwrap_optimizer(optimizer)
    kept = total = 0
    for variable, _ in optimizer.coupled_variables():
        support = ops.convert_to_numpy(optimizer.support(variable))
        kept, total = kept + int(support.sum()), total + int(support.size)
    return kept / total if total else None


def group_units(optimizer) -> list:
    """``[(variable, units in supp Γ)]`` over the group-coupled kernels (filters, neurons), in order."""
    return [(variable, unit_mask_of(ops.convert_to_numpy(optimizer.support(variable)), (-1,)))
            for variable, structure in optimizer.coupled_variables()
            if structure in GROUP_STRUCTURES]


def unit_margins(optimizer, variable) -> np.ndarray:
    """‖V_g‖₂ / λ_g per last-axis unit of a group-coupled kernel (> 1 ⇔ the unit is in supp Γ).

    λ_g = λ·c_l (the layer's threshold), or λ·c_g per unit with
    ``"unit_init_norm"``; float64.
    """
    norms = unit_norms(ops.convert_to_numpy(optimizer.v(variable)))
    return norms / np.asarray(ops.convert_to_numpy(optimizer.threshold(variable)), "float64")


def empty_coupled_layers(optimizer) -> list:
    """The coupled kernels (by variable path) whose supp Γ is empty, in the optimizer's order."""
    optimizer = unwrap_optimizer(optimizer)
    return [optimizer._variable_path(variable)
            for variable, _ in optimizer.coupled_variables()
            if not ops.convert_to_numpy(optimizer.support(variable)).any()]


def trim_units(optimizer, keep: int) -> dict:
    """Cuts supp Γ over the group-coupled kernels back to ``keep`` units (filters, neurons).

    The units in the support are ranked by their margin ‖V_g‖₂ / λ_g over
    the prox threshold (λ_g = λ·c_l, or λ·c_g with ``"unit_init_norm"``; the
    last to cross λ have the smallest), and the smallest are dropped
    (`DessiLBI.drop_units`: V_g ← 0) until ``keep`` remain, skipping the
    last unit of any layer. Returns ``{variable path:
    [dropped unit indices]}`` (empty when the support holds ≤ ``keep``).
    """
    optimizer = unwrap_optimizer(optimizer)
    candidates, left, kept = [], {}, 0  # candidates: (margin, layer order, unit, variable)
    for order, (variable, units) in enumerate(group_units(optimizer)):
        margins = unit_margins(optimizer, variable)
        left[order] = int(units.sum())
        kept += left[order]
        candidates += [(float(margins[u]), order, int(u), variable) for u in np.flatnonzero(units)]
    dropped = {}
    for _, order, unit, variable in sorted(candidates, key=lambda c: c[:3]):
        if kept <= keep:
            break
        if left[order] <= 1:
            continue  # never the last unit of a layer
        dropped.setdefault(order, (variable, []))[1].append(unit)
        left[order] -= 1
        kept -= 1
    for variable, units in dropped.values():
        optimizer.drop_units(variable, units)
    return {optimizer._variable_path(v): sorted(units) for v, units in dropped.values()}


def validate_layer_units(layer_units):
    """``layer_units`` checked: ``None`` or a non-empty {regex: int ≥ 1} (an insertion-ordered dict)."""
    if layer_units is None:
        return None
    if not isinstance(layer_units, dict) or not layer_units:
        raise TypeError("`layer_units` must be None or a non-empty dict {path pattern: units}. "
                        f"Received: layer_units={layer_units!r}")
    return {structures_lib.check_pattern("layer_units", pattern):
            _validate.integer(f"layer_units[{pattern!r}]", k, minimum=1)
            for pattern, k in layer_units.items()}


def parse_layer_units(spec: str) -> dict:
    """``"pattern=k,pattern=k"`` (a config's text) as `WStarFinetune`'s ``layer_units`` dict.

    Patterns are `re.search` regexes over variable paths (without ``,`` or
    ``=``); counts are integers ≥ 1. E.g. ``"conv1/=12,conv2/=16"`` →
    ``{"conv1/": 12, "conv2/": 16}``.

    Raises:
        ValueError: an item that is not ``pattern=k``, a pattern given twice,
            a bad regex, or a count that is not an integer ≥ 1.
        TypeError: ``spec`` is not a string.
    """
    if not isinstance(spec, str):
        raise TypeError(f"`layer_units` text must be a string 'pattern=k,...'. Received: {spec!r}")
    out = {}
    for item in spec.split(","):
        pattern, sep, count = item.strip().partition("=")
        if not sep or not pattern or not count.strip().isdigit():
            raise ValueError(f"`layer_units` items must be 'pattern=k' with k an integer >= 1, "
                             f"comma-separated. Received: {item.strip()!r} in {spec!r}")
        if pattern in out:
            raise ValueError(f"`layer_units` gives pattern {pattern!r} twice. Received: {spec!r}")
        out[pattern] = int(count)
    return validate_layer_units(out)


def _layer_unit_counts(layer_units, kernels) -> dict:
    """``{index into kernels: k}`` for ``layer_units`` ({regex: k}, first match wins), checked.

    ``kernels`` is a list of ``(path, units)``. Raises `ValueError` for a
    pattern that matches none of them or a count above a kernel's units.
    """
    counts, used = {}, set()
    for i, (path, units) in enumerate(kernels):
        pattern = structures_lib.first_match(path, layer_units)
        if pattern is None:
            continue
        k = layer_units[pattern]
        if k > units:
            raise ValueError(f"`layer_units` asks {k} units of {path!r} (pattern {pattern!r}), "
                             f"which has {units}. Received: layer_units={layer_units!r}")
        counts[i] = k
        used.add(pattern)
    unused = [p for p in layer_units if p not in used]
    if unused:
        raise ValueError(f"`layer_units` patterns {unused!r} match none of the kernels coupled by groups "
                         f"({', '.join(repr(p) for p, _ in kernels) or 'none'}). "
                         f"Received: layer_units={layer_units!r}")
    return counts


def refuse_joint(optimizer, argument: str = "layer_units") -> None:
    """Refuses per-kernel unit counts (``argument``) for a DessiLBI that couples units jointly."""
    if getattr(optimizer, "unit_groups", None) or getattr(optimizer, "_joint", None) is not None:
        raise ValueError(f"`{argument}` sets each kernel's units on its own, but this DessiLBI couples "
                         "units jointly (unit_groups): a unit enters with its whole group. Use "
                         "WStarFinetune(Fork(units=..., trim=True, dependency_groups=True)) instead.")


def set_layer_units(optimizer, layer_units: dict) -> dict:
    """Sets supp Γ of the group-coupled kernels ``layer_units`` names to exactly k_l units each.

    ``layer_units`` maps `re.search` patterns over variable paths to counts
    k_l (the first matching pattern wins, as in DessiLBI's ``structure``).
    In each matched kernel the k_l units of largest margin ‖V_g‖₂ / λ_g
    (ties: the lower index) form the support: those outside it enter
    (`DessiLBI.add_units`, as if they had just crossed λ_g), every other
    unit of the support leaves it (`DessiLBI.drop_units`: V_g ← 0).
    Unmatched kernels keep their support. Everything is checked before
    anything moves.

    Returns:
        ``{variable path: {"added": [units], "dropped": [units]}}`` for
        the matched kernels.

    Raises:
        ValueError: a pattern matching no group-coupled kernel, a count
            above a kernel's units, or an optimizer with ``unit_groups``
            (a unit enters with its whole group, so per-kernel counts do not
            hold: use `WStarFinetune(Fork(units=..., trim=True, dependency_groups=True))`).
    """
    optimizer = unwrap_optimizer(optimizer)
    refuse_joint(optimizer)
    groups = group_units(optimizer)
    counts = _layer_unit_counts(
        layer_units, [(optimizer._variable_path(v), int(units.size)) for v, units in groups])
    return _set_widths(optimizer, groups, counts)


def round_units(optimizer, round_to: int) -> dict:
    """Raises each group-coupled kernel's supp Γ to a multiple of ``round_to`` units.

    A kernel with k_l units in the support (0 < k_l, k_l mod r ≠ 0) keeps
    min(N_l, ⌈k_l / r⌉·r): the units of largest margin ‖V_g‖₂ / λ_g outside
    the support enter (`DessiLBI.add_units`, as if they had just crossed
    λ_g), so no unit leaves (those inside have margins > 1, those outside ≤ 1).
    Torch-Pruning's ``round_to`` for the fine-tune: widths that suit
    accelerators' tiles, trained rather than topped up with zeros at export
    (`tf_dessilbi.shrink`'s ``round_to``). An empty kernel stays empty.

    Returns:
        ``{variable path: {"added": [units], "dropped": []}}`` for the
        kernels it widened.

    Raises:
        ValueError: ``round_to`` < 1, or an optimizer with ``unit_groups``
            (a unit enters with its whole group).
        TypeError: ``round_to`` is not an integer.
    """
    round_to = _validate.integer("round_to", round_to, minimum=1)
    optimizer = unwrap_optimizer(optimizer)
    refuse_joint(optimizer, "round_to")
    groups = group_units(optimizer)
    counts = {}
    for i, (_, units) in enumerate(groups):
        k = int(units.sum())
        target = round_up_units(k, int(units.size), round_to)
        if target > k:
            counts[i] = target
    return _set_widths(optimizer, groups, counts)


def _set_widths(optimizer, groups, counts) -> dict:
    """Sets supp Γ of ``groups[i]`` to its ``counts[i]`` units of largest margin (ties: lower index)."""
    out = {}
    for i, k in counts.items():
        variable, units = groups[i]
        margins = unit_margins(optimizer, variable)
        order = np.argsort(-margins, kind="stable")
        keep = np.zeros(units.size, bool)
        keep[order[:k]] = True
        added = [int(u) for u in np.flatnonzero(keep & ~units)]
        dropped = [int(u) for u in np.flatnonzero(~keep & units)]
        if added:
            optimizer.add_units(variable, added)
        if dropped:
            optimizer.drop_units(variable, dropped)
        out[optimizer._variable_path(variable)] = {"added": added, "dropped": dropped}
    return out


def support_unit_fraction(optimizer) -> Optional[float]:
    """Σ units in supp Γ / Σ units over the group-coupled kernels (filters, neurons); None if none."""
    groups = group_units(unwrap_optimizer(optimizer))
    total = sum(int(units.size) for _, units in groups)
    return sum(int(units.sum()) for _, units in groups) / total if total else None


def check_layer_units(optimizer, model, layer_units: dict) -> None:
    """``layer_units`` against ``model`` before training (the optimizer's coupling if it is built).

    Raises the errors of `set_layer_units` without moving anything.
    """
    refuse_joint(optimizer)
    _layer_unit_counts(layer_units, group_kernels(optimizer, model))


def group_kernels(optimizer, model) -> list:
    """``[(variable path, units)]`` of the kernels coupled by groups, before or after the build.

    Built: the optimizer's coupling; not yet: the structures it will
    resolve for ``model``'s trainable variables.
    """
    optimizer = unwrap_optimizer(optimizer)
    if getattr(optimizer, "built", False):
        return [(optimizer._variable_path(v), int(units.size)) for v, units in group_units(optimizer)]
    variables = model.trainable_variables
    return [(optimizer._variable_path(v), int(v.shape[-1]))
            for v, structure in zip(variables, structures_lib.resolve_structures(
                variables, optimizer.structure))
            if structure in GROUP_STRUCTURES]

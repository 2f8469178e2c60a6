"""supp Γ on the dependency groups of physical removal, so that support and export agree.

DessiLBI's filter / neuron groups are per layer: Γ_l[..., j] is one group.
Physical removal (`tf_dessilbi.shrink`) takes a unit out only together with
every unit its channel is coupled to (`tf_dessilbi.shrink.unit_groups`: the
filters summed by one residual Add). A filter outside supp Γ whose residual
partners are in it stays in the exported model as zeros, so the support
overstates what the export removes (ResNet-20, λ 0.45: 392 of 784 filters in
supp Γ, 579 in the export).

`align_support` makes the two agree. For a dependency group G whose members
g = (layer l, unit j) are units of group-coupled kernels, the joint margin

    m_G = ‖V_G‖₂ / λ_G,   ‖V_G‖₂² = Σ_{g∈G} ‖V_g‖₂²,   λ_G² = Σ_{g∈G} λ_g²,

is the factor by which V_G clears the threshold of the group-lasso prox over
the concatenated group (λ_G² = Σ λ_g²: a threshold per unit of the group,
joined as the Euclidean norm is). For a group of one unit m_g = ‖V_g‖₂ / λ_g,
the margin `trim_units` ranks by. Then

* without ``keep_units``: G stays iff m_G > 1, i.e. prox_{λ_G}(V_G) ≠ 0;
* with ``keep_units`` = K: groups enter by decreasing m_G as long as they
  fit, i.e. while the units held stay ≤ K (a group that would overshoot K is
  passed over and smaller ones after it fill the rest), so a ``trim`` to K
  keeps exactly K units when the groups of one unit allow it;

and before either, the groups that must stay are taken: the best group (the
largest m_G) of every coupled layer, since a feed-forward stack with an empty
layer outputs a constant, and every group that cannot leave the model (a
pinned channel, or a member the optimizer does not couple by groups, which W*
never zeroes). Only these can take the support past K. Members of the groups
that stay enter supp Γ (`DessiLBI.add_units`: ‖V_g‖₂ just above λ_g) and the
others leave it (`DessiLBI.drop_units`: V_g ← 0). W* = W ⊙ 1[Γ ≠ 0] then
zeroes exactly the units `shrink` removes.

This aligns the support once, when it is called. `DessiLBI(unit_groups=
joint_unit_groups(model))` couples the groups during the whole path instead
(`joint_groups`: the prox of the joint group lasso, whose support is m_G > 1
at every step, so the rule above changes nothing there and only a K cuts).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from keras import ops

from tf_dessilbi import _validate
from tf_dessilbi.dessilbi.structures import GROUP_STRUCTURES
from tf_dessilbi.masks import OptimizerSupport, unit_mask_of, unit_norms, unwrap_optimizer
from tf_dessilbi.dependency import groups as groups_lib
from tf_dessilbi.dependency.groups import round_up_units


@dataclasses.dataclass
class Alignment:
    """What `align_support` changed.

    Attributes:
        dropped: ``{variable path: [units]}`` taken out of supp Γ.
        added: ``{variable path: [units]}`` put into it.
        groups_kept / groups_total: dependency groups with a group-coupled
            member that stay / that there are.
        units_kept: group-coupled units in supp Γ afterwards.
        keep_units: the K asked for (``None``: the m_G > 1 rule). More are
            kept only when the groups that must stay hold more.
    """

    dropped: dict
    added: dict
    groups_kept: int
    groups_total: int
    units_kept: int
    keep_units: Optional[int] = None


MARGINS = ("joint", "max")


def align_support(optimizer, model, keep_units: Optional[int] = None, groups=None,
                  margin: str = "joint") -> Alignment:
    """Sets supp Γ to whole dependency groups (see the module docstring).

    Args:
        optimizer: a built `DessiLBI` that trains ``model``.
        model: the Sequential / Functional model it trains.
        keep_units: K, the most group-coupled units the groups that stay
            hold (unless the groups that must stay hold more); ``None``
            keeps the groups with a margin > 1.
        groups: `tf_dessilbi.shrink.unit_groups` of ``model`` (computed when
            ``None``; pass them to use ``keep=`` layers).
        margin: how a group is ranked: ``"joint"``, m_G = ‖V_G‖₂/λ_G (the
            joint group lasso's), or ``"max"``, max_{g∈G} ‖V_g‖₂/λ_g (a
            group is as strong as its strongest member: the channel stays
            when one conv that writes it needs it, as the export of a
            per-unit support keeps it).

    Returns:
        An `Alignment`.

    Raises:
        ValueError: the optimizer is not built or couples no kernel by
            groups, ``keep_units`` is not a positive int, ``margin`` is not
            one of `MARGINS`, or the model has a
            layer the dependency graph cannot reason about. Nothing is changed.
    """
    optimizer = unwrap_optimizer(optimizer)
    if keep_units is not None:
        keep_units = _validate.positive_int("keep_units", keep_units)
    _validate.one_of("margin", margin, MARGINS)
    coupled, in_support, scored = _score_groups(optimizer, model, groups, margin, "align_support")
    order = sorted(range(len(scored)), key=lambda i: (-scored[i][0], i))
    stays = np.array([fixed for _, fixed, _, _ in scored], bool)
    for name in coupled:  # every coupled layer keeps its best group
        stays[next(i for i in order if any(n == name for n, _ in scored[i][2]))] = True
    if keep_units is None:
        stays |= np.array([score > 1.0 for score, _, _, _ in scored], bool)
    else:
        held = sum(len(scored[i][2]) for i in np.flatnonzero(stays))
        for i in order:
            if not stays[i] and held + len(scored[i][2]) <= keep_units:
                stays[i] = True
                held += len(scored[i][2])

    keep = {name: np.zeros(len(in_support[name]), bool) for name in coupled}
    for i in np.flatnonzero(stays):
        for name, unit in scored[i][2]:
            keep[name][unit] = True
    dropped, added = {}, {}
    for name, variable in coupled.items():
        path = optimizer._variable_path(variable)
        out = np.flatnonzero(in_support[name] & ~keep[name]).tolist()
        into = np.flatnonzero(~in_support[name] & keep[name]).tolist()
        if out:
            optimizer.drop_units(variable, out)
            dropped[path] = out
        if into:
            optimizer.add_units(variable, into)
            added[path] = into
    return Alignment(dropped, added, int(stays.sum()), len(scored),
                     int(sum(k.sum() for k in keep.values())), keep_units)


def round_groups(optimizer, model, round_to: int, groups=None, margin: str = "joint") -> dict:
    """Raises each channel space's kept dependency groups to a multiple of ``round_to``.

    A channel space is the set of dependency groups whose members sit in
    the same layers: one layer's units outside a residual stream, or one
    channel of every conv that writes a residual stream (ResNet-20's
    stage 1: the stem and each block's second conv). The exported width of
    each of those layers is k, the number of the space's groups the export
    keeps (a group that cannot leave, or has a member in supp Γ). Of N
    groups, min(N, ⌈k/r⌉·r) are kept (`dependency.groups.round_up_units`, the
    export's ``round_to``): the groups outside with the largest margin
    (``margin`` as in `align_support`; ties: the earlier group) enter whole,
    each group-coupled member going into supp Γ (`DessiLBI.add_units`). No
    unit leaves; a space with k = 0 stays empty.

    After `align_support`, supp Γ holds whole groups, so this is
    Torch-Pruning's ``round_to`` on the widths the export will have, trained
    rather than padded with zero units at export.

    Args:
        optimizer: a built `DessiLBI` that trains ``model``.
        model: the Sequential / Functional model it trains.
        round_to: r ≥ 1.
        groups: `tf_dessilbi.shrink.unit_groups` of ``model`` (computed when
            ``None``).
        margin: ``"joint"`` or ``"max"`` (see `align_support`).

    Returns:
        ``{variable path: [units]}`` put into supp Γ.

    Raises:
        ValueError: ``round_to`` < 1, ``margin`` not one of `MARGINS`, an
            unbuilt optimizer or one that couples no kernel by groups.
        TypeError: ``round_to`` is not an integer. Nothing is changed.
    """
    optimizer = unwrap_optimizer(optimizer)
    round_to = _validate.integer("round_to", round_to, minimum=1)
    _validate.one_of("margin", margin, MARGINS)
    coupled, in_support, scored = _score_groups(optimizer, model, groups, margin, "round_groups")
    spaces = {}
    for i, (_, _, _, group) in enumerate(scored):
        spaces.setdefault(frozenset(name for name, _ in group.members), []).append(i)
    added = {}
    for members in spaces.values():
        kept = [scored[i][1] or any(in_support[n][u] for n, u in scored[i][2]) for i in members]
        k = sum(kept)
        target = round_up_units(k, len(members), round_to)
        outside = sorted((i for i, held in zip(members, kept) if not held),
                         key=lambda i: (-scored[i][0], i))
        for i in outside[:target - k]:
            for name, unit in scored[i][2]:
                added.setdefault(name, []).append(unit)
    out = {}
    for name, units in added.items():
        variable, units = coupled[name], sorted(units)
        optimizer.add_units(variable, units)
        out[optimizer._variable_path(variable)] = units
    return out


def _score_groups(optimizer, model, groups, margin, caller):
    """The groups with a group-coupled member, scored by ``margin``.

    Returns ``(coupled, in_support, scored)``: ``{layer name: kernel}`` of
    the group-coupled kernels, ``{layer name: units in supp Γ}``, and
    ``[(margin, fixed, coupled members, group)]`` in ``groups``' order
    (fixed: the group cannot leave the model, or has a member the optimizer
    does not couple by groups).
    """
    coupled = {layer.name: variable
               for layer, variable, _, structure in OptimizerSupport(optimizer).coupled(model)
               if structure in GROUP_STRUCTURES}
    if not coupled:
        raise ValueError(f"{caller} needs a kernel coupled by groups ('filter'/'neuron' "
                         "structures); the optimizer couples none of the model's kernels so.")
    if groups is None:
        groups = groups_lib.unit_groups(model)
    sq_norm, sq_threshold, in_support = {}, {}, {}
    for name, variable in coupled.items():
        v = ops.convert_to_numpy(optimizer.v(variable))
        norms = unit_norms(v)
        threshold = np.broadcast_to(np.asarray(
            ops.convert_to_numpy(optimizer.threshold(variable)), np.float64), norms.shape)
        sq_norm[name], sq_threshold[name] = norms ** 2, threshold ** 2
        in_support[name] = unit_mask_of(ops.convert_to_numpy(optimizer.support(variable)), (-1,))
    scored = []
    for group in groups:
        mine = [(name, unit) for name, unit in group.members if name in coupled]
        if not mine:
            continue
        fixed = not group.removable or len(mine) < len(group.members)
        if margin == "joint":
            score = _ratio(sum(sq_norm[n][u] for n, u in mine), sum(sq_threshold[n][u] for n, u in mine))
        else:
            score = max(_ratio(sq_norm[n][u], sq_threshold[n][u]) for n, u in mine)
        scored.append((float(score), fixed, mine, group))
    return coupled, in_support, scored


def _ratio(v2, t2) -> float:
    """√(v2/t2): ‖V‖₂/λ from squares (∞ for λ = 0 < ‖V‖, 0 for V = 0)."""
    return np.inf if t2 == 0 and v2 > 0 else (float(np.sqrt(v2 / t2)) if t2 > 0 else 0.0)

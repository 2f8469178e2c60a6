"""Joint coupling: the units of one dependency group share one group of the group lasso.

DessiLBI's ``filter`` / ``neuron`` structures give each last-axis unit g =
(kernel l, unit j) its own group: Ω(Γ) = Σ_g λ_g ‖Γ_g‖₂. Physical removal
(`tf_dessilbi.shrink`) takes a unit out only together with every unit its
channel is coupled to (`tf_dessilbi.shrink.unit_groups`: the filters one
residual Add sums). With ``DessiLBI(unit_groups=...)`` those units are one
group G of Ω during the whole path,

    Ω(Γ) = Σ_G λ_G ‖Γ_G‖₂,   ‖Γ_G‖₂² = Σ_{g∈G} ‖Γ_g‖₂²,   λ_G² = Σ_{g∈G} λ_g²,

so  Γ_G = κ·prox_{λ_G‖·‖₂}(V_G) = κ·max(0, 1 − λ_G/‖V_G‖₂)·V_G : the members
enter and leave supp Γ together, when ‖V_G‖₂ crosses λ_G (λ_G² = Σ λ_g²
joins one threshold per member as the Euclidean norm joins their V; the
joint margin ‖V_G‖₂/λ_G is the one `group_support.align_support` ranks by).
Units in no listed group keep Γ_g = κ·max(0, 1 − λ_g/‖V_g‖₂)·V_g.

Per member, the joint prox is the per-unit group prox with the threshold

    t_g = λ_G·‖V_g‖₂ / ‖V_G‖₂      (t_g = λ_G when V_G = 0),

since then 1 − t_g/‖V_g‖₂ = 1 − λ_G/‖V_G‖₂ and ‖V_g‖₂ > t_g ⇔ ‖V_G‖₂ > λ_G:
that is how the optimizer applies it (`JointGroups.thresholds`). ‖V_G‖₂ and
λ_G are segment sums over the members' unit norms; in a training step they
are computed once from V_k of every member before any variable is updated,
so the step stays the Jacobi iteration of the paper on every backend.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Optional

import numpy as np
import keras
from keras import ops

from tf_dessilbi import walk
from tf_dessilbi.dessilbi.structures import GROUP_STRUCTURES


def joint_unit_groups(model, keep: Iterable[str] = ()) -> list:
    """The dependency groups of ``model`` with more than one unit, as ``unit_groups`` for `DessiLBI`.

    Each group is a list of ``[kernel path, unit]`` pairs: the producer
    units (conv filters, dense neurons) whose channels one residual Add (or
    another channel-joining merge) couples, from
    `tf_dessilbi.shrink.unit_groups`. Groups of one unit are left out (the
    per-unit prox already is theirs), as are groups whose channel may never
    leave the model (a model output, a layer in ``keep``).

    Args:
        model: a built Sequential or Functional model.
        keep: names of layers kept whole (as `shrink`'s ``keep``).

    Raises:
        TypeError, ValueError: as `tf_dessilbi.shrink.unit_groups`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"joint_unit_groups() needs a keras.Model. Received: model={model!r}")
    from tf_dessilbi.dependency import groups as groups_lib

    paths = {layer.name: variable.path for layer, variable, _ in walk.sparsifiable(model)}
    out = []
    for group in groups_lib.unit_groups(model, keep):
        if len(group) > 1 and group.removable:
            out.append([[paths[name], int(unit)] for name, unit in group.members])
    return out


def validate_unit_groups(unit_groups) -> Optional[tuple]:
    """Checks `DessiLBI`'s ``unit_groups`` argument (shape and types only; paths are checked at build).

    Returns:
        ``None``, or a tuple of groups, each a tuple of ``(path, unit)``.

    Raises:
        TypeError: not a list of lists of ``[str, int]`` pairs.
        ValueError: a group of fewer than two units, a negative unit, or a
            unit listed twice.
    """
    if unit_groups is None:
        return None
    if isinstance(unit_groups, (str, bytes)) or not isinstance(unit_groups, (list, tuple)):
        raise TypeError("`unit_groups` must be None or a list of groups, each a list of "
                        f"[variable path, unit] pairs. Received: unit_groups={unit_groups!r}")
    seen, out = set(), []
    for i, group in enumerate(unit_groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, (list, tuple)):
            raise TypeError(f"`unit_groups[{i}]` must be a list of [variable path, unit] pairs. "
                            f"Received: unit_groups[{i}]={group!r}")
        if len(group) < 2:
            raise ValueError(f"`unit_groups[{i}]` must hold at least 2 units (a unit alone is "
                             f"already its own group). Received: unit_groups[{i}]={group!r}")
        members = []
        for member in group:
            ok = (isinstance(member, (list, tuple)) and len(member) == 2 and isinstance(member[0], str)
                  and isinstance(member[1], numbers.Integral) and not isinstance(member[1], bool))
            if not ok:
                raise TypeError(f"Each member of `unit_groups[{i}]` must be a [variable path (str), "
                                f"unit (int)] pair. Received: {member!r}")
            path, unit = member[0], int(member[1])
            if unit < 0:
                raise ValueError(f"Units in `unit_groups` must be >= 0. Received: {member!r} "
                                 f"in unit_groups[{i}]")
            if (path, unit) in seen:
                raise ValueError(f"Unit {unit} of {path!r} is listed twice in `unit_groups` "
                                 f"(again in unit_groups[{i}]): a unit lies in one group.")
            seen.add((path, unit))
            members.append((path, unit))
        out.append(tuple(members))
    return tuple(out)


class JointGroups:
    """``unit_groups`` resolved against an optimizer's variables (see the module docstring).

    Attributes:
        indices: the indices of the variables with a unit in a joint group.
        num_segments: groups of Ω over those variables' units (a joint
            group, or a unit alone).
        groups: the joint groups kept, as tuples of ``(index, unit)``.
    """

    def __init__(self, unit_groups, paths, shapes, structures):
        """Resolves ``unit_groups`` (from `validate_unit_groups`).

        Members whose variable the optimizer does not couple by groups
        (uncoupled, or ``"elementwise"``) are left out, W* never removing
        them by unit; a group left with fewer than two members is dropped.

        Raises:
            ValueError: a path that is none of ``paths``, or a unit out of
                its variable's last-axis range.
        """
        by_path = {}
        for i, path in enumerate(paths):
            by_path.setdefault(path, i)
        groups = []
        for g, group in enumerate(unit_groups):
            members = []
            for path, unit in group:
                if path not in by_path:
                    known = ", ".join(repr(p) for p in list(by_path)[:6])
                    raise ValueError(f"`unit_groups[{g}]` names {path!r}, which is not a variable "
                                     f"this optimizer is built with (e.g. {known}).")
                index = by_path[path]
                units = int(shapes[index][-1]) if len(shapes[index]) else 1
                if not unit < units:
                    raise ValueError(f"`unit_groups[{g}]`: unit {unit} of {path!r} is out of range "
                                     f"[0, {units}).")
                if structures[index] in GROUP_STRUCTURES:
                    members.append((index, unit))
            if len(members) > 1:
                groups.append(tuple(members))
        self.groups = tuple(groups)
        self.indices = sorted({index for group in groups for index, _ in group})
        self._units = [int(shapes[i][-1]) for i in self.indices]
        ids = {i: np.full(int(shapes[i][-1]), -1, np.int64) for i in self.indices}
        for segment, group in enumerate(groups):
            for index, unit in group:
                ids[index][unit] = segment
        segment = len(groups)
        for i in self.indices:
            alone = ids[i] < 0
            ids[i][alone] = np.arange(segment, segment + alone.sum())
            segment += int(alone.sum())
        self.num_segments = segment
        self._ids = np.concatenate([ids[i] for i in self.indices]).astype(np.int32) if groups else None
        self._group_of = {(index, unit): group for group in groups for index, unit in group}

    def __bool__(self) -> bool:
        return bool(self.groups)

    def members_of(self, index: int, units) -> dict:
        """``{variable index: [units]}``: ``units`` of variable ``index`` and every unit grouped with them."""
        out = {}
        for unit in units:
            for i, u in self._group_of.get((index, unit), ((index, unit),)):
                if u not in out.setdefault(i, []):
                    out[i].append(u)
        return out

    def thresholds(self, vs, unit_thresholds) -> dict:
        """``{variable index: t}`` with t_g = λ_G·‖V_g‖₂/‖V_G‖₂ per last-axis unit (float32).

        Args:
            vs: V of each variable of ``indices`` (tensors, in that order).
            unit_thresholds: λ_g of each: a scalar or one per last-axis unit.
        """
        sq, lam_sq = [], []
        for v, threshold, units in zip(vs, unit_thresholds, self._units):
            v = ops.cast(v, "float32")
            axes = tuple(range(len(v.shape) - 1))
            sq.append(ops.reshape(ops.sum(ops.square(v), axis=axes), (units,)) if axes
                      else ops.square(v))
            lam_sq.append(ops.broadcast_to(
                ops.reshape(ops.square(ops.cast(threshold, "float32")), (-1,)), (units,)))
        sq, lam_sq = ops.concatenate(sq), ops.concatenate(lam_sq)
        ids = ops.convert_to_tensor(self._ids)
        group_sq = ops.take(ops.segment_sum(sq, ids, num_segments=self.num_segments), ids)
        group_lambda = ops.sqrt(ops.take(ops.segment_sum(lam_sq, ids, num_segments=self.num_segments), ids))
        positive = ops.greater(group_sq, 0.0)
        ratio = ops.sqrt(sq / ops.where(positive, group_sq, ops.ones_like(group_sq)))
        t = ops.where(positive, group_lambda * ratio, group_lambda)
        out, start = {}, 0
        for i, units in zip(self.indices, self._units):
            out[i] = t[start:start + units]
            start += units
        return out

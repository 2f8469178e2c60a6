"""Budgets: the fewest groups to remove so a model meets a MACs or parameter target.

A budget is a fraction of the *dense* model's cost, MACs or parameters, as
`ShrinkReport` counts them (`groups.CostModel`). Given importance scores
(lowest first out), `removal_order` sorts the groups:

* ``"global"``: by score over the whole model (normalized per family when
  the caller asks, see `importance.normalized`);
* ``"uniform"``: every family loses the same fraction of its groups (its
  lowest first), the per-layer allocation.

`plan` then finds, by bisection over the prefix length k of that order, the
smallest k whose removed set meets the target, with ``round_to`` and
``min_units`` enforced per family: a family keeps
``min(n, ⌈max(kept, min_units)/r⌉·r)`` groups, the best-scored of the groups
the prefix took back first. Both only keep more, so the cost is monotone in
k and bisection is exact.
"""

from __future__ import annotations

import numpy as np

from tf_dessilbi import _validate
from tf_dessilbi.dependency.groups import round_up_units

ALLOCATIONS = ("global", "uniform")


def target_of(cost_model, macs=None, params=None, reference=None) -> tuple:
    """``(kind, absolute target)`` from a fraction of ``reference`` (default: the cost model's dense cost).

    Args:
        macs, params: exactly one, a fraction in (0, 1].
        reference: ``(MACs, parameters)`` of the dense model.
    """
    if (macs is None) == (params is None):
        raise ValueError(f"Give exactly one budget, `macs` or `params` (a fraction of the dense "
                         f"model's). Received: macs={macs!r}, params={params!r}")
    kind, value = ("macs", macs) if macs is not None else ("params", params)
    value = _validate.real(kind, value, minimum=0.0, maximum=1.0, min_open=True)
    reference = reference or (cost_model.macs_dense, cost_model.params_dense)
    return kind, value * (reference[0] if kind == "macs" else reference[1])


def removal_order(scores, cost_model, allocation: str = "global") -> np.ndarray:
    """Group indices, first to remove first; groups scoring +inf are left out."""
    allocation = _validate.one_of("allocation", allocation, ALLOCATIONS)
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(cost_model.groups),):
        raise ValueError(f"`scores` must hold one score per group ({len(cost_model.groups)}). "
                         f"Received shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("`scores` holds NaN.")
    index = np.arange(len(scores))
    if allocation == "global":
        order = np.lexsort((index, scores))
    else:
        position = np.zeros(len(scores))
        for members in cost_model.families:
            members = np.asarray(members)
            ranked = members[np.lexsort((members, scores[members]))]
            position[ranked] = (np.arange(len(ranked)) + 1.0) / len(ranked)
        order = np.lexsort((index, scores, position))
    return order[np.isfinite(scores[order])]


def removed_at(cost_model, order, k: int, round_to: int = 1, min_units: int = 1) -> np.ndarray:
    """The groups removed by the first ``k`` of ``order`` after ``round_to`` / ``min_units``."""
    prefix = np.asarray(order[:k], np.int64)
    family = np.array([g.family for g in cost_model.groups], np.int64)
    out = []
    for f, members in enumerate(cost_model.families):
        taken = prefix[family[prefix] == f] if len(prefix) else prefix
        n = len(members)
        kept = n - len(taken)
        kept = round_up_units(max(kept, min(min_units, n)), n, round_to)
        out.extend(taken[: n - kept].tolist())  # the prefix's first (lowest) go
    return np.asarray(sorted(out), np.int64)


def plan(cost_model, order, kind: str, target: float, round_to: int = 1,
         min_units: int = 1) -> tuple:
    """``(removed group indices, (MACs, parameters))``: the fewest removals meeting ``target``.

    Raises:
        ValueError: even removing every group of ``order`` leaves the model
            over the target (the message gives the smallest reachable cost).
    """
    which = 0 if kind == "macs" else 1
    cost = lambda k: cost_model.cost(removed_at(cost_model, order, k, round_to, min_units))  # noqa: E731
    if cost(0)[which] <= target:
        return np.zeros(0, np.int64), cost(0)
    lo, hi = 0, len(order)
    smallest = cost(hi)
    if smallest[which] > target:
        dense = cost_model.macs_dense if which == 0 else cost_model.params_dense
        raise ValueError(
            f"The {kind} budget {target:,.0f} ({target / dense:.3f}× dense) cannot be met: "
            f"removing every removable group (round_to={round_to}, min_units={min_units}) leaves "
            f"{smallest[which]:,} ({smallest[which] / dense:.3f}×).")
    while hi - lo > 1:  # cost(lo) > target >= cost(hi)
        mid = (lo + hi) // 2
        if cost(mid)[which] <= target:
            hi = mid
        else:
            lo = mid
    removed = removed_at(cost_model, order, hi, round_to, min_units)
    return removed, cost_model.cost(removed)

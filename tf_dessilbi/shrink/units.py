"""Which units count as removed.

A class of coupled channels (`graph.Graph`) is removed when it is not
pinned and either

* every producer unit in it is *dead*: its whole fan-in kernel column is zero
  (after the mask: a structural group outside the support, a unit the
  mask removes, or an elementwise mask that emptied the column), so its output
  is the constant act(b) whatever the input; or
* it is *unconsumed*: every weight reading it into a kept unit of a later
  producer is zero, so its value never reaches the output (found by fixpoint:
  removing units of a consumer can leave its inputs unconsumed).

Then ``min_units`` (a producer whose every unit went keeps its ``min_units``
strongest, by kernel-column norm ‖W[…, j]‖₂) and ``round_to`` (a producer
keeps a multiple of k units, topping up with the strongest removed ones) add
units back; both only keep more, so the result stays exact. Units kept back
can consume classes taken as unconsumed; those come back too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_dessilbi.dependency.groups import round_up_units


@dataclasses.dataclass
class Decision:
    """The removal decision over the classes of a graph.

    Attributes:
        roots: class of every label.
        removed: ``bool[labels]`` indexed by class root (True = removed).
        dead: classes whose producer units are all dead.
        notes: ``{layer name: [str]}`` (min_units, round_to).
    """

    roots: np.ndarray
    removed: np.ndarray
    dead: np.ndarray
    notes: dict

    def kept(self, elems) -> np.ndarray:
        return ~self.removed[self.roots[np.asarray(elems, np.int64)]]


def decide(
    graph, weights, *, extra_pinned=(), min_units=1, round_to=1, raw_norms=None
) -> Decision:
    """Decides which classes go.

    Args:
        graph: a `graph.Graph`.
        weights: ``{id(layer): {weight name: array}}`` of the (masked) model.
        extra_pinned: more labels to keep (from constant folding).
        min_units: fewest units a producer keeps.
        round_to: producers keep a multiple of this many units.
        raw_norms: ``{layer name: column norms}`` of the weights before the
            mask (W rather than W*), to rank units whose masked norms tie (at 0).
    """
    raw_norms = raw_norms or {}
    roots = graph.uf.roots()
    size = len(roots)
    pinned = np.zeros(size, bool)
    pinned[roots[np.asarray(list(graph.pinned) + list(extra_pinned), np.int64)]] = True
    producers = graph.producers()
    has_producer = np.zeros(size, bool)
    live_member = np.zeros(size, bool)
    for info in producers:
        members = roots[info.out_elems]
        has_producer[members] = True
        zero = info.handler.zero_columns(weights[id(info.layer)])
        live_member[members[~zero]] = True
    dead = has_producer & ~live_member & ~pinned
    removable = has_producer & ~pinned
    removed = dead.copy()
    notes = {}
    removed = _add_unconsumed(graph, weights, roots, removed, removable)
    for _ in range(20):
        before = removed.copy()
        for info in producers:
            removed = _top_up(
                info, weights, roots, removed, min_units, round_to, notes,
                raw_norms.get(info.layer.name),
            )
        removed = _drop_consumed(graph, weights, roots, removed, dead)
        if np.array_equal(before, removed):
            break
    return Decision(roots, removed, dead, notes)


def _consumed(graph, weights, roots, removed) -> np.ndarray:
    """Classes read by a nonzero weight into a kept unit of some producer."""
    consumed = np.zeros(len(roots), bool)
    for info, tid in graph.edges:
        w = weights[id(info.layer)]
        kept_out = np.flatnonzero(~removed[roots[info.out_elems]])
        rows = info.handler.rows_nonzero(w, kept_out)
        consumed[roots[graph.labels[tid]][rows]] = True
    return consumed


def _add_unconsumed(graph, weights, roots, removed, removable) -> np.ndarray:
    while True:
        consumed = _consumed(graph, weights, roots, removed)
        new = removable & ~consumed & ~removed & _is_root(roots)
        if not new.any():
            return removed
        removed = removed | new


def _drop_consumed(graph, weights, roots, removed, dead) -> np.ndarray:
    """Brings back classes removed as unconsumed that a kept unit now reads."""
    while True:
        consumed = _consumed(graph, weights, roots, removed)
        back = removed & ~dead & consumed
        if not back.any():
            return removed
        removed = removed & ~back


def _is_root(roots) -> np.ndarray:
    return roots == np.arange(len(roots))


def _top_up(info, weights, roots, removed, min_units, round_to, notes, raw) -> np.ndarray:
    members = roots[info.out_elems]
    kept = ~removed[members]
    total = len(members)
    target = int(kept.sum())
    reasons = []
    if target < min(min_units, total):
        target = min(min_units, total)
        reasons.append(f"emptied; kept its {target} strongest unit(s) (min_units)")
    if round_to > 1 and target % round_to:
        rounded = round_up_units(target, total, round_to)
        if rounded != target:
            reasons.append(f"{target}→{rounded} units (round_to={round_to})")
            target = rounded
    if target <= kept.sum():
        return removed
    norms = info.handler.column_norms(weights[id(info.layer)])
    if raw is None or len(raw) != len(norms):
        raw = np.zeros_like(norms)
    removed = removed.copy()
    # strongest removed units first: by ‖W*[…, j]‖, ties by ‖W[…, j]‖, then index
    for j in np.lexsort((np.arange(len(norms)), -raw, -norms)):
        if (~removed[members]).sum() >= target:
            break
        if removed[members[j]]:
            removed[members[j]] = False
    notes.setdefault(info.layer.name, [])
    for reason in reasons:
        if reason not in notes[info.layer.name]:
            notes[info.layer.name].append(reason)
    return removed

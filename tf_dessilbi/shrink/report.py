"""`ShrinkReport`: what `shrink` removed, per layer and in total.

Parameters are counted from the layers' weights, multiply-accumulates (MACs)
from the weight and output shapes (one sample): kernel size × output
positions for Dense and convolutions (× input positions for transposed
ones), depthwise + pointwise for SeparableConv.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class ShrinkRow:
    """One layer: units (output channels) and cost before → after."""

    layer: str
    kind: str
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    note: str = ""


@dataclasses.dataclass
class ShrinkReport:
    """What `shrink` did.

    Attributes:
        rows: a `ShrinkRow` per layer with per-channel weights.
        params_before / params_after: whole-model parameter counts.
        removed: ``{layer: [unit indices removed]}`` (producers' output units,
            depthwise and normalization channels).
        folded: ``{layer: [units]}`` of removed units whose constant output was
            folded into a consumer's bias (the result equals the sparse model there).
        zeroed: ``{layer: [units]}`` of removed units whose output was not
            provably reproduced: the result equals the model with these units'
            kernel, bias and BN γ/β zeroed.
        pinned: ``{layer: [units]}`` kept whole because a nonzero constant
            of theirs could not be folded.
        kept: ``{layer: (input indices, output indices)}``: the old indices
            each cut layer keeps, ascending, so arrays shaped like its weights
            (optimizer slots, masks) can be cut as its weights were
            (`tf_dessilbi.shrink.carry`). Producers: kept input rows and
            output units; depthwise and normalization layers: the kept
            channels, twice.
    """

    rows: list
    params_before: int
    params_after: int
    removed: dict
    folded: dict
    zeroed: dict
    pinned: dict = dataclasses.field(default_factory=dict)
    kept: dict = dataclasses.field(default_factory=dict)

    @property
    def macs_before(self) -> int:
        return int(sum(r.macs_before for r in self.rows))

    @property
    def macs_after(self) -> int:
        return int(sum(r.macs_after for r in self.rows))

    def row(self, layer: str) -> Optional[ShrinkRow]:
        for r in self.rows:
            if r.layer == layer:
                return r
        return None

    def to_dict(self) -> dict:
        return {
            "layers": [dataclasses.asdict(r) for r in self.rows],
            "totals": {
                "params_before": self.params_before,
                "params_after": self.params_after,
                "params_ratio": _ratio(self.params_after, self.params_before),
                "macs_before": self.macs_before,
                "macs_after": self.macs_after,
                "macs_ratio": _ratio(self.macs_after, self.macs_before),
            },
            "removed": {k: list(map(int, v)) for k, v in self.removed.items()},
            "folded": {k: list(map(int, v)) for k, v in self.folded.items()},
            "zeroed": {k: list(map(int, v)) for k, v in self.zeroed.items()},
            "pinned": {k: list(map(int, v)) for k, v in self.pinned.items()},
        }

    def __str__(self) -> str:
        header = ("layer", "class", "units", "params", "MACs", "note")
        lines = [
            (
                r.layer,
                r.kind,
                f"{r.units_before} → {r.units_after}",
                f"{r.params_before:,} → {r.params_after:,}",
                f"{r.macs_before:,} → {r.macs_after:,}",
                r.note,
            )
            for r in self.rows
        ]
        lines.append(
            (
                "total",
                "",
                "",
                f"{self.params_before:,} → {self.params_after:,} "
                f"({_ratio(self.params_after, self.params_before):.2f}×)",
                f"{self.macs_before:,} → {self.macs_after:,} "
                f"({_ratio(self.macs_after, self.macs_before):.2f}×)",
                _summary(self),
            )
        )
        widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*row) for row in lines]
        return "\n".join(s.rstrip() for s in out)


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else 1.0


def _summary(report) -> str:
    count = lambda d: sum(len(v) for v in d.values())  # noqa: E731
    parts = []
    if report.folded:
        parts.append(f"{count(report.folded)} folded")
    if report.zeroed:
        parts.append(f"{count(report.zeroed)} zeroed")
    if report.pinned:
        parts.append(f"{count(report.pinned)} pinned")
    return ", ".join(parts)


def build_report(graph, decision, fold_plan, working, shrunk, extra_pinned) -> ShrinkReport:
    """The report of a shrink (see `tf_dessilbi.shrink.api`)."""
    from tf_dessilbi.dependency import attention as attention_lib
    from tf_dessilbi.dependency import handlers as handlers_lib

    new_layers = {}
    for layer in _leaves(shrunk):
        new_layers.setdefault(layer.name, layer)
    rows, removed, folded, zeroed, pinned, kept = [], {}, {}, {}, {}, {}
    pinned_roots = set(int(decision.roots[p]) for p in extra_pinned)
    for info in graph.infos.values():
        if info.role == "inner":
            gone = info.handler.cut_inner(info.layer.get_config(), handlers_lib.weights_of(info.layer))[2]
            if len(gone):
                removed[f"{info.layer.name}/feedforward"] = gone.tolist()
            continue
        if info.role not in ("producer", "depthwise", "channelwise") or info.part:
            continue
        layer = info.layer
        elems = info.out_elems if info.role == "producer" else info.in_elems
        classes = decision.roots[elems]
        gone = np.flatnonzero(decision.removed[classes])
        kept_in = np.flatnonzero(decision.kept(info.in_elems))
        kept[layer.name] = (kept_in, np.flatnonzero(decision.kept(info.out_elems))
                            if info.role == "producer" else kept_in)
        if len(gone):
            removed[layer.name] = gone.tolist()
        if isinstance(info.handler, attention_lib.HeadsInto):
            heads = np.flatnonzero(~decision.kept(info.in_elems))
            if len(heads):
                removed[f"{layer.name}/heads"] = heads.tolist()
        for target, roots, need_removed in (
            (folded, fold_plan.folded, True),
            (zeroed, fold_plan.zeroed, True),
            (pinned, pinned_roots, False),
        ):
            hits = [
                j for j, c in enumerate(classes.tolist())
                if c in roots and (decision.removed[c] or not need_removed)
            ]
            if hits:
                target[layer.name] = hits
        new = new_layers[layer.name]
        old_w = handlers_lib.weights_of(layer)
        new_w = handlers_lib.weights_of(new)
        macs_before = macs_after = 0
        if info.role != "channelwise":
            for ins, outs in info.calls:
                in_shape, out_shape = graph.shapes[ins[0]], graph.shapes[outs[0]]
                macs_before += info.handler.macs(old_w, in_shape, out_shape)
                new_in = in_shape[:-1] + (int(decision.kept(graph.labels[ins[0]]).sum()),)
                new_out = out_shape[:-1] + (int(decision.kept(graph.labels[outs[0]]).sum()),)
                macs_after += info.handler.macs(new_w, new_in, new_out)
        rows.append(
            ShrinkRow(
                layer=layer.name,
                kind=type(layer).__name__,
                units_before=len(elems),
                units_after=int((~decision.removed[classes]).sum()),
                params_before=int(layer.count_params()),
                params_after=int(new.count_params()),
                macs_before=int(macs_before),
                macs_after=int(macs_after),
                note="; ".join(decision.notes.get(layer.name, [])),
            )
        )
    return ShrinkReport(
        rows=rows,
        params_before=int(working.count_params()),
        params_after=int(shrunk.count_params()),
        removed=removed,
        folded=folded,
        zeroed=zeroed,
        pinned=pinned,
        kept=kept,
    )


def _leaves(model):
    from tf_dessilbi import walk

    return list(walk.layers(model))

"""How sparse a model is: per-layer units and weights kept, from any mask source."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tf_dessilbi import masks as masks_lib
from tf_dessilbi import walk
from tf_dessilbi.masks import unwrap_optimizer  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class SparsityRow:
    """One sparsified kernel: what is kept of its units and weights."""

    layer: str
    variable: str
    structure: str
    units_kept: int
    units_total: int
    weights_kept: int
    weights_total: int

    @property
    def empty(self) -> bool:
        """True when nothing of the layer is kept: it outputs a constant."""
        return self.weights_kept == 0

    @property
    def unit_fraction(self) -> float:
        return self.units_kept / max(self.units_total, 1)

    @property
    def weight_fraction(self) -> float:
        return self.weights_kept / max(self.weights_total, 1)


class SparsityReport:
    """Per-layer sparsity: a list of `SparsityRow` that prints as a table."""

    def __init__(self, rows):
        self.rows = list(rows)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    @property
    def weights_kept(self) -> int:
        return sum(r.weights_kept for r in self.rows)

    @property
    def weights_total(self) -> int:
        return sum(r.weights_total for r in self.rows)

    @property
    def weight_fraction(self) -> float:
        return self.weights_kept / max(self.weights_total, 1)

    @property
    def units_kept(self) -> int:
        return sum(r.units_kept for r in self.rows)

    @property
    def units_total(self) -> int:
        return sum(r.units_total for r in self.rows)

    def to_dict(self) -> dict:
        """Plain data (JSON-serializable)."""
        return {
            "layers": [dataclasses.asdict(r) for r in self.rows],
            "weights_kept": self.weights_kept,
            "weights_total": self.weights_total,
            "weight_fraction": self.weight_fraction,
            "units_kept": self.units_kept,
            "units_total": self.units_total,
            "empty_layers": self.empty_layers,
        }

    @property
    def empty_layers(self) -> list:
        """Layers whose every weight is removed (the model outputs a constant there)."""
        return sorted({r.layer for r in self.rows if r.empty})

    def __str__(self) -> str:
        header = ("layer", "structure", "units kept", "weights kept", "kept %")
        lines = [
            (
                r.layer,
                r.structure,
                f"{r.units_kept}/{r.units_total}",
                f"{r.weights_kept}/{r.weights_total}",
                f"{100 * r.weight_fraction:.2f}" + ("  EMPTY" if r.empty else ""),
            )
            for r in self.rows
        ]
        lines.append(
            (
                "total",
                "",
                f"{self.units_kept}/{self.units_total}",
                f"{self.weights_kept}/{self.weights_total}",
                f"{100 * self.weight_fraction:.2f}",
            )
        )
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        fmt = "  ".join(
            "{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths)
        )
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt.format(*header), rule] + [fmt.format(*l) for l in lines[:-1]] + [rule, fmt.format(*lines[-1])])

    __repr__ = __str__


def _row(layer, variable, structure, mask: np.ndarray, unit_axes) -> SparsityRow:
    units = masks_lib.unit_mask_of(mask, unit_axes)
    return SparsityRow(
        layer=layer.name,
        variable=variable.path,
        structure=structure,
        units_kept=int(units.sum()),
        units_total=int(units.size),
        weights_kept=int(mask.sum()),
        weights_total=int(mask.size),
    )


def sparsity_report(model: keras.Model, optimizer=None, source=None) -> SparsityReport:
    """Per-layer counts of units (filters/neurons) and weights kept.

    One row per masked weight and source: DessiLBI's supp(Γ) (structure
    ``"filter"``/``"neuron"``/``"elementwise"``), each `SparseGate`
    (``"gate:<granularity>"``, the hard mask s > 0), each `MaskedLayer`
    (``"fixed"``), and an explicit ``source`` (``"mask"``). A unit is kept
    when at least one of its weights is.

    Args:
        model: a Keras model.
        optimizer: the built `DessiLBI` that trained `model` (another
            optimizer has no support and adds no rows). Defaults to
            ``model.optimizer`` when that is a built DessiLBI.
        source: any other mask source (`tf_dessilbi.masks.resolve`).
            Defaults to None.

    Returns:
        A `SparsityReport` (``str(report)`` is a table; ``report.to_dict()``
        plain data).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"sparsity_report() needs a keras.Model. Received: model={model!r}")
    if optimizer is None:
        candidate = masks_lib.unwrap_optimizer(getattr(model, "optimizer", None))
        if hasattr(candidate, "support") and getattr(candidate, "built", False):
            optimizer = candidate
    elif not hasattr(masks_lib.unwrap_optimizer(optimizer), "support"):
        optimizer = None  # SGD, Adam, ...: no supp(Γ) to report
    sources = []
    if optimizer is not None:
        support = masks_lib.OptimizerSupport(optimizer)
        sources.append((support.mask(model), lambda k, v: support.optimizer.variable_structure(v)))
    gates = masks_lib.find_wrappers(model, masks_lib.GateMasks.wrapper_class())
    if gates:
        granularity = {masks_lib.weight_key(g.layer, g.weight_variable): g.granularity for g in gates}
        gate_mask = masks_lib.GateMasks().mask(model)
        sources.append((gate_mask, lambda k, v: f"gate:{granularity[k]}"))
    fixed = masks_lib.FixedMasks().mask(model)
    if fixed:
        sources.append((fixed, lambda k, v: "fixed"))
    if source is not None:
        sources.append((masks_lib.resolve(source, model), lambda k, v: "mask"))
    rows = []
    layers = list(walk.sparsifiable(model))
    for mask, structure_of in sources:
        for layer, variable, spec in layers:
            key = masks_lib.weight_key(layer, variable)
            if key not in mask.weights:
                continue
            structure = structure_of(key, variable)
            rows.append(_row(layer, variable, structure, mask.weights[key], spec.unit_axes))
    return SparsityReport(rows)

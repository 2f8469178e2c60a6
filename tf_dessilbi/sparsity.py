"""The sparse model of a DessiLBI run: W* = W on supp(Γ), and its report."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops



def _owned_variables(model):
    """Yields ``(layer, kernel, bias)`` for every layer owning a ``kernel``."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        own = {v.path.split("/")[-1]: v for v in layer._trainable_variables}
        kernel = own.get("kernel")
        if kernel is not None:
            yield layer, kernel, own.get("bias")


def unwrap_optimizer(optimizer):
    """The optimizer doing the updates (unwraps `LossScaleOptimizer`)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _unit_kept(mask: np.ndarray) -> np.ndarray:
    """Output units (last axis) with at least one weight kept."""
    return mask.reshape(-1, mask.shape[-1]).any(axis=0)


class WStar:
    """Handle returned by `apply_w_star`: restores the dense W on demand.

    Usable as a context manager: the dense weights come back on exit.
    """

    def __init__(self, saved):
        self._saved = saved
        self.restored = False

    def restore(self):
        """Puts back the dense W (and biases) saved by `apply_w_star`."""
        if self.restored:
            return
        for variable, value in self._saved:
            variable.assign(value)
        self.restored = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def apply_w_star(model: keras.Model, optimizer, prune_bias: bool = True) -> WStar:
    """Sets every coupled kernel to W* = W ⊙ 1[Γ ≠ 0], the sparse model.

    Args:
        model: the model trained with `optimizer`.
        optimizer: a built `tf_dessilbi.DessiLBI` (or anything with
            ``support(variable)``).
        prune_bias: also zero the bias of every output unit (filter, neuron)
            whose weights are all outside the support, so a pruned unit
            outputs act(0) instead of act(bias) and can really be removed.
            (The authors' code keeps those biases.) Defaults to `True`.

    Returns:
        A `WStar` handle; ``handle.restore()`` (or leaving a ``with`` block)
        puts the dense W back.

    Raises:
        ValueError: the optimizer is not built for this model's variables.
    """
    optimizer = unwrap_optimizer(optimizer)
    if not getattr(optimizer, "built", False):
        raise ValueError(
            "apply_w_star() needs an optimizer that has been built for the "
            "model (train at least one step first)."
        )
    # Compute everything before assigning anything: all or nothing.
    updates = []
    for layer, kernel, bias in _owned_variables(model):
        try:
            support = optimizer.support(kernel)
        except ValueError:
            raise ValueError(
                f"Layer {layer.name!r}: its kernel is not known to the "
                f"optimizer; was the model trained with it?"
            ) from None
        if support is None:
            continue
        mask = ops.convert_to_numpy(support)
        w = ops.convert_to_numpy(kernel)
        updates.append((kernel, w, np.where(mask, w, 0).astype(w.dtype)))
        if prune_bias and bias is not None:
            b = ops.convert_to_numpy(bias)
            updates.append((bias, b, np.where(_unit_kept(mask), b, 0).astype(b.dtype)))
    saved = []
    for variable, old, new in updates:
        variable.assign(new)
        saved.append((variable, old))
    return WStar(saved)


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
        }

    def __str__(self) -> str:
        header = ("layer", "structure", "units kept", "weights kept", "kept %")
        lines = [
            (
                r.layer,
                r.structure,
                f"{r.units_kept}/{r.units_total}",
                f"{r.weights_kept}/{r.weights_total}",
                f"{100 * r.weight_fraction:.2f}",
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


def _row(layer_name, variable, structure, mask: np.ndarray) -> SparsityRow:
    units = _unit_kept(mask)
    return SparsityRow(
        layer=layer_name,
        variable=variable.path,
        structure=structure,
        units_kept=int(units.sum()),
        units_total=int(units.size),
        weights_kept=int(mask.sum()),
        weights_total=int(mask.size),
    )


def sparsity_report(model: keras.Model, optimizer=None) -> SparsityReport:
    """Per-layer counts of units (filters/neurons) and weights kept.

    For a DessiLBI run the kept weights are the support of Γ; a unit is kept
    when at least one of its weights is (for group structures: the group is
    in the support). Every `SparseGate` adds a row with structure
    ``"gate:<granularity>"`` whose kept weights are those of the hard mask,
    s > 0.

    Args:
        model: a Keras model.
        optimizer: the built `DessiLBI` that trained `model`. Defaults to
            ``model.optimizer`` when that is a built DessiLBI.

    Returns:
        A `SparsityReport` (``str(report)`` is a table; ``report.to_dict()``
        plain data).
    """
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
    optimizer = unwrap_optimizer(optimizer)
    rows = []
    for layer, kernel, _ in _owned_variables(model):
        if optimizer is None or not hasattr(optimizer, "support"):
            continue
        if not getattr(optimizer, "built", False):
            raise ValueError(
                "sparsity_report() needs a built optimizer (train a step first)."
            )
        support = optimizer.support(kernel)
        if support is None:
            continue
        structure = optimizer.variable_structure(kernel)
        rows.append(_row(layer.name, kernel, structure, ops.convert_to_numpy(support)))
    from tf_dessilbi.gating import gated_layers  # Continuous Sparsification gates

    for gate in gated_layers(model):
        if gate.built:
            rows.append(
                _row(gate.layer.name, gate._kernel_variable,
                     f"gate:{gate.granularity}", gate.kept_mask())
            )
    return SparsityReport(rows)

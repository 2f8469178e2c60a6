"""`Fork`: when a DessiLBI run forks into the fine-tune of W*, and the support it keeps.

DessiLBI's sparse model is W* = W ⊙ 1[Γ ≠ 0] (Fu et al., ICML 2020). A
`Fork` says, as one validated value, at which step a run stops walking the
path and retrains W* on supp Γ (`WStarFinetune`), and what supp Γ is then:

* **when**: at the first step of epoch ``epoch``, or as soon as supp Γ holds
  a fraction ``units`` = ρ of the group units (conv filters, dense neurons),

      Σ_l |{u : Γ_l[..., u] ≠ 0}| / Σ_l n_l  ≥  ρ,

  or a fraction ``weights`` = ρ_w of the coupled weights (any structure),

      Σ_l |supp Γ_l| / Σ_l |W_l|  ≥  ρ_w,

  whichever comes first, the fractions checked every ``check_every`` steps;
* **how big**: with ``trim``, supp Γ is cut back to exactly ⌈ρ·N⌉ units
  (N = Σ_l n_l), those with the smallest margin ‖V_g‖₂ / λ_g leaving (several
  units can cross λ in the step that reaches ρ); then, with ``round_to`` = r,
  each group-coupled kernel's support is raised to min(N_l, ⌈k_l/r⌉·r)
  units, the largest margins outside it entering;
* **what shape**: with ``dependency_groups``, supp Γ is set to whole
  dependency groups of physical removal (the filters one residual Add sums
  stay or leave together, ranked by their joint margin ‖V_G‖₂ / λ_G), so the
  units W* zeroes are exactly those `tf_dessilbi.shrink` removes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras

from tf_dessilbi import _validate


@keras.saving.register_keras_serializable(package="tf_dessilbi")
@dataclasses.dataclass(frozen=True, repr=False)
class Fork:
    """When a DessiLBI run forks into the fine-tune of W* = W ⊙ 1[Γ ≠ 0], and what supp Γ keeps.

    At least one of ``epoch``, ``units`` and ``weights`` is given; the
    first one reached starts the fine-tune (see the module docstring for
    the fractions' formulas). Equal forks compare equal; a `Fork` is
    immutable.

    Example:

    ```python
    fork = tf_dessilbi.Fork(units=0.5, trim=True)  # half of the filters, exactly
    model.fit(x, y, epochs=10, callbacks=[WStarFinetune(fork)])
    ```

    Args:
        epoch: the 0-based epoch (as `fit` counts, ``initial_epoch``
            included) whose first step starts the fine-tune; with E epochs,
            ``E-1`` fine-tunes the last one. Defaults to `None` (not used).
        units: ρ ∈ (0, 1]: start as soon as supp Γ holds this fraction of
            the group units (filters, neurons). Defaults to `None`.
        weights: ρ_w ∈ (0, 1]: start as soon as supp Γ holds this fraction
            of the coupled weights. Defaults to `None`.
        trim: cut supp Γ back to exactly ⌈ρ·N⌉ units at the start (needs
            ``units``). Defaults to `False`.
        round_to: r ≥ 1: raise each group-coupled kernel's support (with
            ``dependency_groups``: each channel space's whole groups) to a
            multiple of r units at the start, after ``trim``. Defaults to
            `1` (off).
        dependency_groups: set supp Γ to whole dependency groups of
            physical removal at the start, so the support's units are the
            exported model's. Defaults to `False`.
        check_every: steps between two checks of ``units`` / ``weights``.
            Defaults to `10`.

    Raises:
        ValueError: a value out of range, none of ``epoch``, ``units`` and
            ``weights``, or ``trim`` without ``units``.
        TypeError: a value of the wrong kind (e.g. ``epoch=1.5``,
            ``trim="yes"``).
    """

    epoch: Optional[int] = None
    units: Optional[float] = None
    weights: Optional[float] = None
    trim: bool = False
    round_to: int = 1
    dependency_groups: bool = False
    check_every: int = 10

    def __post_init__(self):
        fields = {
            "epoch": None if self.epoch is None else _validate.integer("epoch", self.epoch, minimum=0),
            "units": None if self.units is None else _validate.real(
                "units", self.units, minimum=0.0, maximum=1.0, min_open=True),
            "weights": None if self.weights is None else _validate.real(
                "weights", self.weights, minimum=0.0, maximum=1.0, min_open=True),
            "trim": _validate.boolean("trim", self.trim),
            "round_to": _validate.integer("round_to", self.round_to, minimum=1),
            "dependency_groups": _validate.boolean("dependency_groups", self.dependency_groups),
            "check_every": _validate.positive_int("check_every", self.check_every),
        }
        for name, value in fields.items():  # canonical Python values (a NumPy 3 -> 3)
            object.__setattr__(self, name, value)
        if self.epoch is None and self.units is None and self.weights is None:
            raise ValueError("Fork needs `epoch`, `units` or `weights` (when to fork). "
                             "Received: epoch=None, units=None, weights=None")
        if self.trim and self.units is None:
            raise ValueError("Fork(trim=True) cuts supp Γ to a fraction `units` of the units; "
                             "received units=None. Allowed: trim=True with units in (0, 1].")

    def __repr__(self) -> str:
        """``Fork(units=0.5, trim=True)``: the fields that differ from their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        shown = [f"{name}={getattr(self, name)!r}" for name in defaults
                 if getattr(self, name) != defaults[name]]
        return f"Fork({', '.join(shown)})"

    def get_config(self) -> dict:
        """Every field, so ``Fork.from_config(fork.get_config()) == fork``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> "Fork":
        """The `Fork` of a `get_config` dict."""
        return cls(**config)

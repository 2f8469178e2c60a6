"""`WStarFinetune`: the last epochs of a DessiLBI run train W* on its support.

The paper's sparse model is W* = W ⊙ 1[Γ ≠ 0] (Fu et al., ICML 2020), and
the authors retrain it. Inside one training budget: from epoch ``start_epoch``
on, after every step the model is projected onto W*,

    W ← W ⊙ 1[Γ ≠ 0]   (with ``prune_bias``: the bias of every unit outside
                        the support and the γ/β of the BatchNormalization
                        channel it feeds are zeroed too, as `apply_w_star`),

so the remaining steps train exactly the weights W* keeps. The fine-tune
starts at epoch ``start_epoch``, or, with ``units_fraction`` = ρ, as soon as
the support holds a fraction ρ of the group units (conv filters, dense
neurons),

    Σ_l |{u : Γ_l[..., u] ≠ 0}| / Σ_l n_l  ≥  ρ   (checked every ``check_every`` steps),

or, with ``weights_fraction`` = ρ_w, as soon as it holds a fraction ρ_w of
the coupled weights (any structure; an elementwise run's density),

    Σ_l |supp Γ_l| / Σ_l |W_l|  ≥  ρ_w,

whichever comes first: the path is walked until the structure has the
wanted size, then that support is retrained. This ties the sparsity to ρ
instead of to λ and the learning-rate schedule (at a fixed λ the number of
filters at the end of a warm-up differs by 20 % between seeds).

Several units can cross λ in the step that reaches ρ. With ``trim`` the
support is then cut back to exactly ⌈ρ·N⌉ units (N = Σ_l n_l): the units
that entered last, those with the smallest margin ‖V_g‖₂ / λ_g (λ_g = λ·c_l,
the layer's threshold, or λ·c_g per unit with ``"unit_init_norm"``), leave
it (V_g ← 0), never the last unit of a layer.

With ``layer_units`` = {pattern: k_l} the widths are yours and the ranking
DessiLBI's: each matched kernel keeps exactly its k_l units of largest
margin ‖V_g‖₂ / λ_g, units still below λ_g entering if needed
(`set_layer_units`), e.g. to export a chosen architecture.

With ``dependency_groups`` the support is set to whole dependency groups
of physical removal when the fine-tune starts (`group_support.align_support`:
the filters one residual Add sums stay or leave together, ranked by their
joint margin ‖V_G‖₂ / λ_G; with ``trim``, groups enter by that margin while
they hold at most ⌈ρ·N⌉ units), so the units W* zeroes are exactly those
`shrink` removes, and the support's count is the exported network's.

A fraction does not start the fine-tune while supp Γ is empty in some
coupled layer (unless ``allow_empty_layers``): in a feed-forward stack W*
would output a constant, and fixing that support would spend the rest of
the budget on a dead network (`tf_dessilbi.procedures.early_tickets` and IMP
refuse such masks too). The path walks on until every coupled layer keeps a
unit; a ``start_epoch`` still starts it, with a warning naming the layers.

By default the coupling is switched off meanwhile (μ → `DECOUPLED_MU`): W
takes plain SGD steps and V, so supp Γ, stays fixed — the paper's retraining
of the sparse model, inside the budget. With the coupling kept, V still runs
on the support; off it W is 0 = Γ before each step, so V
(V ← V + (α/μ)(W − Γ)) does not move there and no unit enters. At the end
the dense W *is* W*: evaluating the model evaluates the sparse model, and
`shrink` removes what the support left out.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import keras
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import group_support
from tf_dessilbi.dessilbi.structures import GROUP_STRUCTURES
from tf_dessilbi.dessilbi import w_star as w_star_lib
from tf_dessilbi.dessilbi.support_units import (  # noqa: F401  (re-exported: finetune.trim_units, ...)
    check_layer_units, empty_coupled_layers, group_kernels, group_units, parse_layer_units,
    refuse_joint, round_units, set_layer_units, support_unit_fraction, support_weight_fraction,
    trim_units, validate_layer_units)
from tf_dessilbi.masks import unwrap_optimizer
from tf_dessilbi.dependency import groups as groups_lib


_NO_GROUPS = ("WStarFinetune(units_fraction=...), WStarFinetune(dependency_groups=True) and "
              "WStarFinetune(round_to>1) count filters and neurons, but the optimizer couples no "
              "kernel by groups: use a 'filter'/'neuron' structure, or start_epoch without "
              "dependency_groups and round_to.")
DECOUPLED_MU = 2.0 ** 40  # α/μ·(W − Γ) then moves V by ~1e-14: below float32 resolution


def is_decoupled(optimizer) -> bool:
    """Whether a `WStarFinetune` holds this optimizer's support fixed right now (μ = `DECOUPLED_MU`)."""
    return float(ops.convert_to_numpy(unwrap_optimizer(optimizer).mu)) == DECOUPLED_MU


class WStarFinetune(keras.callbacks.Callback):
    """From epoch ``start_epoch`` on, keeps the model at W* after every step.

    With ``decouple=True`` (the paper's retraining of the sparse model) the
    coupling is switched off for the fine-tune: μ is set to `DECOUPLED_MU`,
    so W takes plain (momentum) SGD steps on the loss, V and hence supp Γ
    stay where they were, and W* is retrained on that fixed support. With
    ``decouple=False`` the coupling and V keep running on the support (a
    unit can still leave it). μ is restored when training ends.

    Args:
        start_epoch: the 0-based epoch (as `fit` counts, ``initial_epoch``
            included) whose first step starts the fine-tune. With E epochs,
            ``start_epoch=E-1`` fine-tunes the last epoch. ``None``: only
            ``units_fraction`` starts it.
        decouple: switch the coupling off during the fine-tune. Defaults to
            `True`.
        prune_bias: also zero the biases / BN channels of units outside the
            support (see `tf_dessilbi.apply_w_star`). Defaults to `True`.
        units_fraction: ρ ∈ (0, 1]: start as soon as the support holds this
            fraction of the group units (at the first check at or after the
            step it is reached). ``None`` (default): not checked.
        weights_fraction: ρ_w ∈ (0, 1]: start as soon as the support holds
            this fraction of the coupled weights (same checks). ``None``
            (default): not checked.
        check_every: steps between two checks of the fractions. Defaults
            to `10`.
        trim: with ``units_fraction``, cut the support back to exactly
            ⌈ρ·N⌉ units when it starts (`trim_units`). Defaults to `False`
            (the support keeps every unit that crossed λ in that step).
        allow_empty_layers: let a fraction start the fine-tune while supp Γ
            is empty in a coupled layer (e.g. a residual branch that may
            go). Defaults to `False`: the start waits until every coupled
            layer keeps a unit.
        dependency_groups: when the fine-tune starts, set supp Γ to whole
            dependency groups of physical removal (`group_support.align_support`;
            with ``trim``, the groups with the largest joint margins that fit
            in ⌈ρ·N⌉ units, else those with margin > 1). Defaults to `False`.
        group_margin: how ``dependency_groups`` ranks a group: ``"joint"``
            (‖V_G‖₂/λ_G) or ``"max"`` (its strongest member's ‖V_g‖₂/λ_g);
            see `group_support.align_support`. Defaults to `"joint"`.
        layer_units: ``None``, or ``{pattern: k}``: when the fine-tune
            starts, the group-coupled kernels whose path a pattern matches
            (`re.search`, the first match wins) keep exactly k units, those
            of largest margin ‖V_g‖₂/λ_g, units below λ_g entering if needed
            (`set_layer_units`): DessiLBI's ranking, a width per layer you
            choose (e.g. ``{"conv1/": 12, "conv2/": 16}``). Not with ``trim``
            or ``dependency_groups``. Defaults to `None`.
        round_to: r ≥ 1: when the fine-tune starts (after ``trim``), each
            group-coupled kernel's support is raised to a multiple of r
            units, min(N_l, ⌈k_l/r⌉·r), the units of largest margin outside
            it entering (`round_units`; Torch-Pruning's ``round_to``, widths
            that suit accelerators' tiles, trained rather than padded with
            zeros at export). With ``dependency_groups`` the whole groups
            of each channel space are rounded after the alignment
            (`group_support.round_groups`), so each exported width is a
            multiple of r (or all the layer's units). The total can exceed
            ⌈ρ·N⌉ by up to r − 1 units per kernel (per channel space). Not
            with ``layer_units`` (choose multiples there). Defaults to `1`
            (off).

    Attributes:
        started_at_step: the optimizer step the fine-tune started at (``None``
            before it starts).
        deferred_for: the coupled kernels that were empty when a fraction
            was reached and the start waited (the last such check); ``[]``
            when it never waited.
        empty_at_start: the coupled kernels whose support was empty when
            the fine-tune started (``[]`` normally).
        trimmed: ``{variable path: [units]}`` that ``trim`` (or the
            alignment, or ``layer_units``) took out of the support at the
            start (``{}`` when none).
        added: ``{variable path: [units]}`` that ``layer_units`` put into
            the support at the start (``{}`` when none), ``round_to``'s
            included.
        aligned: the `group_support.Alignment` of ``dependency_groups``
            (``None`` without it, or before the start).

    Raises:
        ValueError, TypeError: a bad argument, none of ``start_epoch``,
            ``units_fraction`` and ``weights_fraction``; at train begin, an optimizer without a
            support (not DessiLBI), ``units_fraction`` or ``dependency_groups``
            with no group-coupled kernel, or ``dependency_groups`` on a model
            the dependency graph cannot reason about.
    """

    def __init__(self, start_epoch: Optional[int] = None, decouple: bool = True,
                 prune_bias: bool = True, units_fraction: Optional[float] = None,
                 check_every: int = 10, weights_fraction: Optional[float] = None,
                 allow_empty_layers: bool = False, trim: bool = False,
                 dependency_groups: bool = False, group_margin: str = "joint",
                 layer_units: Optional[dict] = None, round_to: int = 1):
        super().__init__()
        if start_epoch is None and units_fraction is None and weights_fraction is None:
            raise ValueError("WStarFinetune needs `start_epoch`, `units_fraction` or "
                             "`weights_fraction`. Received: start_epoch=None, "
                             "units_fraction=None, weights_fraction=None")
        self.start_epoch = (None if start_epoch is None
                            else _validate.integer("start_epoch", start_epoch, minimum=0))
        self.decouple = _validate.boolean("decouple", decouple)
        self.prune_bias = _validate.boolean("prune_bias", prune_bias)
        if units_fraction is not None:
            units_fraction = _validate.real("units_fraction", units_fraction, minimum=0.0,
                                            maximum=1.0, min_open=True)
        self.units_fraction = units_fraction
        if weights_fraction is not None:
            weights_fraction = _validate.real("weights_fraction", weights_fraction, minimum=0.0,
                                              maximum=1.0, min_open=True)
        self.weights_fraction = weights_fraction
        self.check_every = _validate.positive_int("check_every", check_every)
        self.allow_empty_layers = _validate.boolean("allow_empty_layers", allow_empty_layers)
        self.trim = _validate.boolean("trim", trim)
        self.dependency_groups = _validate.boolean("dependency_groups", dependency_groups)
        self.group_margin = _validate.one_of("group_margin", group_margin, group_support.MARGINS)
        if self.trim and units_fraction is None:
            raise ValueError("WStarFinetune(trim=True) cuts the support to a units_fraction; "
                             "received units_fraction=None.")
        self.layer_units = validate_layer_units(layer_units)
        if self.layer_units is not None and (self.trim or self.dependency_groups):
            raise ValueError("WStarFinetune(layer_units=...) sets each kernel's width itself: pass it "
                             f"without trim and dependency_groups. Received: trim={self.trim}, "
                             f"dependency_groups={self.dependency_groups}")
        self.round_to = _validate.integer("round_to", round_to, minimum=1)
        if self.round_to > 1 and self.layer_units is not None:
            raise ValueError("WStarFinetune(round_to=...) rounds the widths the path chose; with "
                             "layer_units choose multiples yourself. Received: "
                             f"round_to={self.round_to}, layer_units={self.layer_units!r}")
        self.added = {}
        self.active = False
        self.started_at_step = None
        self.deferred_for, self.empty_at_start, self.trimmed = [], [], {}
        self.aligned = None
        self._batches = 0
        self._groups = None
        self._projection = None
        self._mu = None
        self._decoupled = False

    def on_train_begin(self, logs=None):
        optimizer = unwrap_optimizer(self.model.optimizer)
        if not hasattr(optimizer, "support") or not hasattr(optimizer, "mu"):
            raise ValueError(
                "WStarFinetune needs a tf_dessilbi.DessiLBI optimizer. "
                f"Received: {type(optimizer).__name__}"
            )
        self._projection = None
        self._mu = float(ops.convert_to_numpy(optimizer.mu))  # μ₀, put back at the end
        self._decoupled = False
        self.active, self.started_at_step, self._batches = False, None, 0
        self.deferred_for, self.empty_at_start, self.trimmed = [], [], {}
        self.aligned, self.added = None, {}
        if self.layer_units is not None:
            check_layer_units(optimizer, self.model, self.layer_units)
        if self.round_to > 1:
            if not self.dependency_groups:
                refuse_joint(optimizer, "round_to")
            if not group_kernels(optimizer, self.model):
                raise ValueError(_NO_GROUPS)
        if self.units_fraction is not None or self.dependency_groups:
            if getattr(optimizer, "built", False):
                no_groups = support_unit_fraction(optimizer) is None
            else:  # fit builds it at the first step: check the structures now, not steps later
                structures = optimizer._resolve_structures(self.model.trainable_variables)
                no_groups = not any(s in GROUP_STRUCTURES for s in structures)
            if no_groups:
                raise ValueError(_NO_GROUPS)
        epochs = (self.params or {}).get("epochs")
        if (self.start_epoch is not None and epochs is not None and self.start_epoch >= epochs):
            message = (f"WStarFinetune(start_epoch={self.start_epoch}) never starts in a fit of "
                       f"epochs={epochs} (epochs are counted from 0: start_epoch <= {epochs - 1})")
            if self.units_fraction is None and self.weights_fraction is None:
                raise ValueError(message + ".")
            warnings.warn(message + "; only its units/weights fraction can start it.", stacklevel=2)
        self._groups = (groups_lib.unit_groups(self.model)
                        if self.dependency_groups else None)

    def _start(self):
        optimizer = unwrap_optimizer(self.model.optimizer)
        _compat.sync_jax_state(self.model)  # iterations as the trainer has them
        self.active = True
        if self.started_at_step is None:
            self.started_at_step = int(ops.convert_to_numpy(optimizer.iterations))
            if getattr(optimizer, "built", False):
                keep = None
                if self.trim:
                    total = sum(int(units.size) for _, units in group_units(optimizer))
                    keep = math.ceil(self.units_fraction * total - 1e-9)
                if self.dependency_groups:
                    self.aligned = group_support.align_support(optimizer, self.model, keep,
                                                               self._groups, self.group_margin)
                    self.trimmed = self.aligned.dropped
                elif keep is not None:
                    self.trimmed = trim_units(optimizer, keep)
                elif self.layer_units is not None:
                    changed = set_layer_units(optimizer, self.layer_units)
                    self.trimmed = {p: c["dropped"] for p, c in changed.items() if c["dropped"]}
                    self.added = {p: c["added"] for p, c in changed.items() if c["added"]}
                if self.round_to > 1 and self.dependency_groups:
                    self.added = group_support.round_groups(optimizer, self.model, self.round_to,
                                                            self._groups, self.group_margin)
                elif self.round_to > 1:
                    self.added = {p: c["added"] for p, c in
                                  round_units(optimizer, self.round_to).items() if c["added"]}
            self.empty_at_start = empty_coupled_layers(optimizer)
            if self.empty_at_start and not self.allow_empty_layers:
                warnings.warn(
                    f"WStarFinetune starts at step {self.started_at_step} with supp Γ empty in "
                    f"{', '.join(self.empty_at_start)}: W* keeps no unit there, so a "
                    "feed-forward model outputs a constant from now on. Start later, "
                    "lower λ, or pass allow_empty_layers=True for a layer that may go.",
                    stacklevel=2)
        self._project()
        if self.decouple and not self._decoupled:
            optimizer.mu.assign(DECOUPLED_MU)
            self._decoupled = True

    def _fraction_reached(self) -> bool:
        optimizer = unwrap_optimizer(self.model.optimizer)
        if (self.units_fraction is None and self.weights_fraction is None) \
                or not getattr(optimizer, "built", False):
            return False
        _compat.sync_jax_state(self.model)
        reached = (self.weights_fraction is not None
                   and (support_weight_fraction(optimizer) or 0.0) >= self.weights_fraction)
        if not reached and self.units_fraction is not None:
            fraction = support_unit_fraction(optimizer)
            if fraction is None:
                raise ValueError(_NO_GROUPS)
            reached = fraction >= self.units_fraction
        if not reached or self.allow_empty_layers:
            return reached
        empty = empty_coupled_layers(optimizer)
        if empty and not self.deferred_for:
            warnings.warn(
                f"WStarFinetune: supp Γ holds the fraction asked for at step "
                f"{int(ops.convert_to_numpy(optimizer.iterations))} but is empty in "
                f"{', '.join(empty)}; the fine-tune waits until every coupled layer keeps a unit.",
                stacklevel=2)
        if empty:
            self.deferred_for = empty
        return not empty

    def _project(self):
        optimizer = unwrap_optimizer(self.model.optimizer)
        if not getattr(optimizer, "built", False):
            return
        _compat.sync_jax_state(self.model)
        if self._projection is None:
            targets = w_star_lib.w_star_targets(self.model, optimizer, self.prune_bias)

            def projection():
                for variable, value in w_star_lib.w_star_values(targets, optimizer):
                    variable.assign(value)

            self._projection = projection
            if keras.backend.backend() == "tensorflow":  # one graph: ~2 ms, not ~12 ms eager
                import tensorflow as tf

                self._projection = tf.function(self._projection)
        self._projection()

    def on_epoch_begin(self, epoch, logs=None):
        if self.active or (self.start_epoch is not None and epoch >= self.start_epoch) \
                or self._fraction_reached():
            self._start()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.active:
            self._project()
        elif self._batches % self.check_every == 0 and self._fraction_reached():
            self._start()

    def on_train_end(self, logs=None):
        if self._decoupled:
            _compat.sync_jax_state(self.model)
            unwrap_optimizer(self.model.optimizer).mu.assign(self._mu)
            self._decoupled = False

    def get_config(self):
        return {"start_epoch": self.start_epoch, "decouple": self.decouple,
                "prune_bias": self.prune_bias, "units_fraction": self.units_fraction,
                "check_every": self.check_every, "weights_fraction": self.weights_fraction,
                "allow_empty_layers": self.allow_empty_layers, "trim": self.trim,
                "dependency_groups": self.dependency_groups, "group_margin": self.group_margin,
                "layer_units": None if self.layer_units is None else dict(self.layer_units),
                "round_to": self.round_to}

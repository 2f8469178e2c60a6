"""`WStarFinetune`: from the fork on, a DessiLBI run trains W* on its support.

The paper's sparse model is W* = W ⊙ 1[Γ ≠ 0] (Fu et al., ICML 2020), and
the authors retrain it. Inside one training budget: from the `Fork` on (an
epoch, or the step supp Γ holds a fraction ρ of the units or ρ_w of the
weights; see `tf_dessilbi.dessilbi.fork`), after every step the model is
projected onto W*,

    W ← W ⊙ 1[Γ ≠ 0]   (with ``prune_bias``: the bias of every unit outside
                        the support and the γ/β of the BatchNormalization
                        channel it feeds are zeroed too, as `apply_w_star`),

so the remaining steps train exactly the weights W* keeps. A fraction ties
the sparsity to ρ instead of to λ and the learning-rate schedule (at a
fixed λ the number of filters at the end of a warm-up differs by 20 %
between seeds).

When the fine-tune starts, the fork's ``trim`` cuts supp Γ back to exactly
⌈ρ·N⌉ units (N = Σ_l n_l): the units that entered last, those with the
smallest margin ‖V_g‖₂ / λ_g (λ_g = λ·c_l, the layer's threshold, or λ·c_g
per unit with ``"unit_init_norm"``), leave it (V_g ← 0), never the last
unit of a layer. Its ``dependency_groups`` sets the support to whole
dependency groups of physical removal (`group_support.align_support`: the
filters one residual Add sums stay or leave together, ranked by their joint
margin ‖V_G‖₂ / λ_G; with ``trim``, groups enter by that margin while they
hold at most ⌈ρ·N⌉ units), so the units W* zeroes are exactly those
`shrink` removes. Its ``round_to`` then raises each width to a multiple of r.

A fraction does not start the fine-tune while supp Γ is empty in some
coupled layer (unless ``allow_empty_layers``): in a feed-forward stack W*
would output a constant, and fixing that support would spend the rest of
the budget on a dead network (`tf_dessilbi.procedures.early_tickets` and IMP
refuse such masks too). The path walks on until every coupled layer keeps a
unit; a fork epoch still starts it, with a warning naming the layers.

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
import numbers
import warnings

import keras
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import group_support
from tf_dessilbi.dessilbi.fork import Fork
from tf_dessilbi.dessilbi.structures import GROUP_STRUCTURES
from tf_dessilbi.dessilbi import w_star as w_star_lib
from tf_dessilbi.dessilbi.support_units import (  # noqa: F401  (re-exported: finetune.trim_units, ...)
    check_layer_units, empty_coupled_layers, group_kernels, group_units, parse_layer_units,
    refuse_joint, round_units, set_layer_units, support_unit_fraction, support_weight_fraction,
    trim_units, validate_layer_units)
from tf_dessilbi.masks import unwrap_optimizer
from tf_dessilbi.dependency import groups as groups_lib


_NO_GROUPS = ("Fork(units=...), Fork(dependency_groups=True) and Fork(round_to>1) count filters "
              "and neurons, but the optimizer couples no kernel by groups: use a 'filter'/'neuron' "
              "structure, or a Fork(epoch=...) or Fork(weights=...) without dependency_groups and "
              "round_to.")
DECOUPLED_MU = 2.0 ** 40  # α/μ·(W − Γ) then moves V by ~1e-14: below float32 resolution


def is_decoupled(optimizer) -> bool:
    """Whether a `WStarFinetune` holds this optimizer's support fixed right now (μ = `DECOUPLED_MU`)."""
    return float(ops.convert_to_numpy(unwrap_optimizer(optimizer).mu)) == DECOUPLED_MU


# The old keyword arguments that moved into `Fork` (old name -> Fork field), kept for one release.
MOVED_TO_FORK = {"start_epoch": "epoch", "units_fraction": "units",
                 "weights_fraction": "weights", "check_every": "check_every", "trim": "trim",
                 "round_to": "round_to", "dependency_groups": "dependency_groups"}
# The options the parity study found to change nothing, kept for one release (name -> the finding).
DEPRECATED = {
    "layer_units": (
        "the parity study found that choosing the widths does not move W*: the best of eight "
        "56-filter allocations set as the support reached 92.79 ± 0.03 % against 92.82 ± 0.16 % "
        "for the path's own trimmed support (docs/research/reports/PARITY_E10_WIDTHS.md)"),
    "group_margin": (
        "the parity study found that ranking dependency groups by their strongest member does "
        "not move W*: 91.55 ± 0.16 % against 91.48 ± 0.21 % for the joint margin "
        "(docs/research/reports/PARITY_RESNET20_GROUPS.md)"),
}


def _fork_from(fork, deprecated: dict) -> Fork:
    """The `Fork` of ``WStarFinetune(fork, **deprecated)``, warning for each deprecated name."""
    moved = {name: deprecated.pop(name) for name in list(deprecated) if name in MOVED_TO_FORK}
    if isinstance(fork, dict):  # from_config
        fork = Fork.from_config(fork)
    if isinstance(fork, Fork):
        if moved:
            raise TypeError(f"WStarFinetune takes `fork` or the deprecated {sorted(moved)}, not "
                            f"both. Received: fork={fork!r}, "
                            + ", ".join(f"{k}={v!r}" for k, v in moved.items()))
        return fork
    if fork is not None and "start_epoch" in moved:
        raise TypeError("WStarFinetune got the epoch twice: positionally and as start_epoch=. "
                        f"Received: fork={fork!r}, start_epoch={moved['start_epoch']!r}")
    if fork is not None:
        if isinstance(fork, bool) or not isinstance(fork, numbers.Integral):
            raise TypeError("`fork` must be a tf_dessilbi.Fork or an int epoch (Fork(epoch=...)). "
                            f"Received: fork={fork!r} of type {type(fork).__name__}")
        moved["start_epoch"] = fork
    if not moved:
        raise ValueError("WStarFinetune needs `fork`: a tf_dessilbi.Fork (when to fork: an epoch, "
                         "a units or weights fraction) or an int epoch. Received: fork=None")
    built = Fork(**{MOVED_TO_FORK[name]: value for name, value in moved.items()})
    names = [name for name in moved if not (name == "start_epoch" and fork is not None)]
    if names:
        warnings.warn(f"{', '.join(n + '=' for n in names)} "
                      f"{'is' if len(names) == 1 else 'are'} deprecated; pass "
                      f"fork=tf_dessilbi.{built!r} (WStarFinetune(fork, *, decouple, prune_bias, "
                      "allow_empty_layers)).", DeprecationWarning, stacklevel=3)
    return built


class WStarFinetune(keras.callbacks.Callback):
    """From the `Fork` on, keeps the model at W* = W ⊙ 1[Γ ≠ 0] after every step.

    With ``decouple=True`` (the paper's retraining of the sparse model) the
    coupling is switched off for the fine-tune: μ is set to `DECOUPLED_MU`,
    so W takes plain (momentum) SGD steps on the loss, V and hence supp Γ
    stay where they were, and W* is retrained on that fixed support. With
    ``decouple=False`` the coupling and V keep running on the support (a
    unit can still leave it). μ is restored when training ends.

    ``WStarFinetune(3)`` is ``WStarFinetune(Fork(epoch=3))``. The keyword
    arguments of the previous release (``start_epoch``, ``units_fraction``,
    ``weights_fraction``, ``check_every``, ``trim``, ``round_to``,
    ``dependency_groups``) still work for one release: each is mapped onto a
    `Fork` (the same run, to the bit) with a `DeprecationWarning` naming the
    replacement. ``layer_units`` and ``group_margin``, which the parity study
    found not to move W*, still act for one release, with a
    `DeprecationWarning`, and will be removed.

    Args:
        fork: a `tf_dessilbi.Fork` (when the fine-tune starts, how big and
            what shape supp Γ is then), or an int epoch, short for
            ``Fork(epoch=...)``.
        decouple: switch the coupling off during the fine-tune. Defaults to
            `True`.
        prune_bias: also zero the biases / BN channels of units outside the
            support (see `tf_dessilbi.apply_w_star`). Defaults to `True`.
        allow_empty_layers: let a fraction start the fine-tune while supp Γ
            is empty in a coupled layer (e.g. a residual branch that may
            go). Defaults to `False`: the start waits until every coupled
            layer keeps a unit.
        **deprecated: the previous release's keyword arguments (see above).

    Attributes:
        fork: the `Fork`.
        started_at_step: the optimizer step the fine-tune started at (``None``
            before it starts).
        deferred_for: the coupled kernels that were empty when a fraction
            was reached and the start waited (the last such check); ``[]``
            when it never waited.
        empty_at_start: the coupled kernels whose support was empty when
            the fine-tune started (``[]`` normally).
        trimmed: ``{variable path: [units]}`` that ``trim`` (or the
            alignment) took out of the support at the start (``{}`` when none).
        added: ``{variable path: [units]}`` that ``round_to`` put into the
            support at the start (``{}`` when none).
        aligned: the `group_support.Alignment` of ``dependency_groups``
            (``None`` without it, or before the start).

    Raises:
        ValueError, TypeError: a bad argument (see `Fork`); at train begin,
            an optimizer without a support (not DessiLBI), ``units`` or
            ``dependency_groups`` with no group-coupled kernel, or
            ``dependency_groups`` on a model the dependency graph cannot
            reason about.
    """

    def __init__(self, fork=None, *, decouple: bool = True, prune_bias: bool = True,
                 allow_empty_layers: bool = False, **deprecated):
        super().__init__()
        unknown = sorted(set(deprecated) - set(MOVED_TO_FORK) - set(DEPRECATED))
        if unknown:
            raise TypeError(f"WStarFinetune() got unexpected keyword arguments {unknown}; it takes "
                            "fork, decouple, prune_bias and allow_empty_layers.")
        self.fork = _fork_from(fork, deprecated)
        self.decouple = _validate.boolean("decouple", decouple)
        self.prune_bias = _validate.boolean("prune_bias", prune_bias)
        self.allow_empty_layers = _validate.boolean("allow_empty_layers", allow_empty_layers)
        for name in deprecated:
            warnings.warn(f"WStarFinetune({name}=...) is deprecated and will be removed in the "
                          f"next release: {DEPRECATED[name]}.", DeprecationWarning, stacklevel=2)
        self.group_margin = _validate.one_of("group_margin", deprecated.get("group_margin", "joint"),
                                             group_support.MARGINS)
        self.layer_units = validate_layer_units(deprecated.get("layer_units"))
        if self.layer_units is not None and (self.trim or self.dependency_groups):
            raise ValueError("WStarFinetune(layer_units=...) sets each kernel's width itself: pass it "
                             f"without trim and dependency_groups. Received: trim={self.trim}, "
                             f"dependency_groups={self.dependency_groups}")
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

    # The fork's fields, read where they act (`fork` is the one place they are set).
    start_epoch = property(lambda self: self.fork.epoch, doc="`Fork.epoch`.")
    units_fraction = property(lambda self: self.fork.units, doc="`Fork.units`.")
    weights_fraction = property(lambda self: self.fork.weights, doc="`Fork.weights`.")
    check_every = property(lambda self: self.fork.check_every, doc="`Fork.check_every`.")
    trim = property(lambda self: self.fork.trim, doc="`Fork.trim`.")
    round_to = property(lambda self: self.fork.round_to, doc="`Fork.round_to`.")
    dependency_groups = property(lambda self: self.fork.dependency_groups,
                                 doc="`Fork.dependency_groups`.")

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
            message = (f"WStarFinetune({self.fork!r}) never starts in a fit of "
                       f"epochs={epochs} (epochs are counted from 0: epoch <= {epochs - 1})")
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
        config = {"fork": self.fork.get_config(), "decouple": self.decouple,
                  "prune_bias": self.prune_bias, "allow_empty_layers": self.allow_empty_layers}
        if self.group_margin != "joint":  # the deprecated options, only where they act
            config["group_margin"] = self.group_margin
        if self.layer_units is not None:
            config["layer_units"] = dict(self.layer_units)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

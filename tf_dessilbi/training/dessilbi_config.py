"""DessiLBI's config sections: ``config.dessilbi`` and ``config.fork``.

``config.optimizer`` holds what every optimizer shares (name, learning rate,
momentum, ...); DessiLBI's own hyperparameters are ``config.dessilbi`` and its
fine-tune of W* is ``config.fork``, read here into the `DessiLBI` arguments
(`dessilbi_kwargs`) and the `tf_dessilbi.Fork` (`build_fork`), each in this
one place.

The previous release kept them as flat ``config.optimizer.*`` fields. For
one release those names still work: `upgrade` (run by
`config_lib.validate`, so by every run) moves a value set under an old name
(`MOVED`) to its section with a `DeprecationWarning` and a logged warning
naming the new field; an old and a new name set to different values is a
`ConfigError`. The CLI rewrites ``--config.optimizer.<old>=`` overrides the
same way before the flags are parsed (`translate_argv`), so an old override
of a packaged config still wins over the config file's value. `upgrade_saved`
reads a workdir's ``config.json`` written by the previous release.

Three old fields have no new place (`DEPRECATED`): the parity study found
that they do not move W*, so they still act for one release, with a
deprecation warning, and will be removed.
"""

from __future__ import annotations

import copy
import warnings

import ml_collections
from absl import logging
from ml_collections import config_dict

from tf_dessilbi.training import config_checks as checks

STRUCTURES = ("auto", "elementwise", "filter", "filter_neuron")
LAMBDA_SCALINGS = ("fan_in", "none", "init_norm", "unit_init_norm")


def dessilbi_section() -> ml_collections.ConfigDict:
    """``config.dessilbi``: DessiLBI's hyperparameters (with ``optimizer.name="dessilbi"``)."""
    s = ml_collections.ConfigDict()
    s.kappa = 1.0  # κ
    s.mu = 100.0  # ν (the authors' "mu")
    s.lambda_ = 1.0  # λ
    s.structure = "auto"  # auto | elementwise | filter | filter_neuron
    s.lambda_scaling = "fan_in"  # fan_in | none | init_norm | unit_init_norm
    # Under a decaying lr, hold V's speed α/μ once α peaks (SteadyPathSpeed).
    s.steady_path = False
    return s


def fork_section() -> ml_collections.ConfigDict:
    """``config.fork``: when DessiLBI's run forks into the fine-tune of W*, and the support it keeps.

    Off by default (``last_epochs``, ``units`` and ``weights`` all 0); see `tf_dessilbi.Fork`.
    """
    s = ml_collections.ConfigDict()
    # When: the last N epochs train W* (Fork(epoch=num_epochs - N)), or from the step supp Γ
    # holds this fraction of the filters/neurons, or of the coupled weights; 0: off.
    s.last_epochs = 0
    s.units = 0.0
    s.weights = 0.0
    # How big: with units, cut supp Γ back to exactly ⌈ρ·N⌉ units at the start; then raise each
    # filter/neuron kernel's width to a multiple of round_to (1: off), largest ‖V_g‖/λ_g entering.
    s.trim = False
    s.round_to = 1
    # What shape: whole dependency groups of physical removal (the filters one residual Add
    # sums go together), so the support's units are the exported model's.
    s.dependency_groups = False
    # Let a fraction start it while supp Γ is empty in a coupled layer (a branch that may go).
    s.allow_empty = False
    # Train the fine-tune on the physically small model: from the first epoch end at or after
    # the fork the run goes on with the shrunk model, the optimizer state carried over (the same
    # weights as the masked fine-tune, fewer FLOPs; tf_dessilbi.training.small_run). Off by
    # itself for elementwise structures, MultiWorker and early tickets. False: the masked
    # fine-tune on the full-width model.
    s.shrink = True
    return s


# The previous release's flat names: config.optimizer.<old> -> config.<section>.<field>.
MOVED = {
    "kappa": "dessilbi.kappa",
    "mu": "dessilbi.mu",
    "lambda_": "dessilbi.lambda_",
    "structure": "dessilbi.structure",
    "lambda_scaling": "dessilbi.lambda_scaling",
    "steady_path": "dessilbi.steady_path",
    "finetune_epochs": "fork.last_epochs",
    "finetune_units": "fork.units",
    "finetune_weights": "fork.weights",
    "finetune_trim": "fork.trim",
    "finetune_round_to": "fork.round_to",
    "finetune_groups": "fork.dependency_groups",
    "finetune_allow_empty": "fork.allow_empty",
    "finetune_shrink": "fork.shrink",
}

# Old fields with no new place: (their default, why they go). They act for one release.
DEPRECATED = {
    "joint_groups": (False, (
        "coupling the dependency groups jointly along the whole path gave the same widths and "
        "91.37 ± 0.16 % against 91.48 ± 0.21 % (supp Γ fills within three steps of the end of "
        "the warm-up, before the joint prox acts; docs/research/reports/PARITY_RESNET20_GROUPS.md)")),
    "finetune_group_margin": ("joint", (
        "ranking the dependency groups by their strongest member gave 91.55 ± 0.16 % against "
        "91.48 ± 0.21 % (docs/research/reports/PARITY_RESNET20_GROUPS.md)")),
    "finetune_layer_units": ("", (
        "the best of eight 56-filter allocations set as the support gave 92.79 ± 0.03 % against "
        "92.82 ± 0.16 % for the path's own (docs/research/reports/PARITY_E10_WIDTHS.md)")),
}


def _defaults() -> dict:
    return {"dessilbi": dessilbi_section().to_dict(), "fork": fork_section().to_dict()}


def add_legacy_fields(optimizer: ml_collections.ConfigDict) -> None:
    """The old names in ``config.optimizer``: unset placeholders (moved) and the deprecated fields."""
    defaults = _defaults()
    for old, new in MOVED.items():
        section, field = new.split(".")
        optimizer[old] = config_dict.placeholder(type(defaults[section][field]))
    for old, (default, _) in DEPRECATED.items():
        optimizer[old] = default


def _deprecation(message: str) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    logging.warning("%s", message)


def upgrade(config: ml_collections.ConfigDict) -> None:
    """Moves the values set under the old ``config.optimizer.*`` names to their sections, in place.

    Raises:
        checks.ConfigError: an old and a new name set to different values.
    """
    o, defaults = config.optimizer, _defaults()
    present = [old for old in MOVED if old in o]
    for old in present:
        value = o[old]
        if value is None:
            continue
        section, field = MOVED[old].split(".")
        current = config[section][field]
        if current != defaults[section][field] and current != value:
            raise checks.ConfigError(
                f"config.optimizer.{old}={value!r} (deprecated) and config.{MOVED[old]}="
                f"{current!r} set the same field to different values: set only "
                f"config.{MOVED[old]}.")
        config[section][field] = value
        _deprecation(f"config.optimizer.{old} is deprecated; set config.{MOVED[old]} "
                     f"(now {value!r}).")
    if present:
        with config.unlocked():
            for old in present:
                del o[old]
    for old, (default, reason) in DEPRECATED.items():
        if old in o and o[old] != default:
            _deprecation(f"config.optimizer.{old} is deprecated and will be removed in the next "
                         f"release: the parity study found it does not move W* ({reason}).")


def upgrade_saved(saved: dict) -> dict:
    """A workdir's ``config.json`` (a dict) with the previous release's flat names in their sections."""
    saved = copy.deepcopy(saved)
    o = saved.get("optimizer", {})
    for old, new in MOVED.items():
        section, field = new.split(".")
        if old in o:
            value = o.pop(old)
            if value is not None:
                saved.setdefault(section, {}).setdefault(field, value)
    return saved


def translate_argv(argv: list) -> list:
    """``--config.optimizer.<old>=v`` rewritten to ``--config.<section>.<field>=v``, with a warning.

    Raises:
        checks.ConfigError: the old and the new flag both given, with different values.
    """
    given, out = {}, []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--config."):
            key = name[len("--config."):]
            old = key[len("optimizer."):] if key.startswith("optimizer.") else None
            if old in MOVED:
                key = MOVED[old]
                _deprecation(f"--config.optimizer.{old} is deprecated; pass --config.{key}.")
                arg = f"--config.{key}={value}"
            if key in given and given[key] != value:
                raise checks.ConfigError(
                    f"--config.{key} is given twice with different values ({given[key]!r}, "
                    f"{value!r}; once under its deprecated optimizer.* name): give it once.")
            given[key] = value
        out.append(arg)
    return out


def fork_on(config) -> bool:
    """Whether the run forks into a fine-tune of W* (``fork.last_epochs``, ``units`` or ``weights``)."""
    f = config.fork
    return bool(f.last_epochs or f.units or f.weights)


def build_fork(config):
    """The `tf_dessilbi.Fork` of ``config.fork`` (``None`` when it is off); the CLI checks every step."""
    from tf_dessilbi.dessilbi.fork import Fork

    if not fork_on(config):
        return None
    f = config.fork
    return Fork(epoch=config.num_epochs - f.last_epochs if f.last_epochs else None,
                units=f.units or None, weights=f.weights or None, trim=bool(f.trim),
                round_to=f.round_to, dependency_groups=bool(f.dependency_groups), check_every=1)


def finetune_kwargs(config) -> dict:
    """`WStarFinetune`'s other arguments from the config (the deprecated ones only when set)."""
    from tf_dessilbi.dessilbi import support_units

    o, kwargs = config.optimizer, {"allow_empty_layers": bool(config.fork.allow_empty)}
    if o.get("finetune_group_margin", "joint") != "joint":
        kwargs["group_margin"] = o.finetune_group_margin
    if o.get("finetune_layer_units", ""):
        kwargs["layer_units"] = support_units.parse_layer_units(o.finetune_layer_units)
    return kwargs


def dessilbi_kwargs(config) -> dict:
    """`DessiLBI`'s κ, ν, λ and λ scaling from ``config.dessilbi`` (the structure needs the model)."""
    d = config.dessilbi
    return {"kappa": d.kappa, "mu": d.mu, "lambda_": d.lambda_, "lambda_scaling": d.lambda_scaling}


def _either(names) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


_FORK_ON = "a fine-tune is on (fork.last_epochs, fork.units or fork.weights)"


def _check_start_widths(config, field, off, verb, conflicts, note=""):
    """A setting that acts on supp Γ's widths when the fine-tune starts (``optimizer.finetune_layer_units``,
    ``fork.round_to``): it needs a fork and filters/neurons, and none of ``conflicts``."""
    value = config[field.split(".")[0]][field.split(".")[1]]
    if not fork_on(config):
        checks.fail(field, value, f"{off} unless {_FORK_ON}: it {verb} the widths when the "
                                  "fine-tune starts")
    if config.dessilbi.structure == "elementwise":
        checks.fail(field, value,
                    f"{off} with dessilbi.structure='elementwise' (it {verb} filters and neurons)")
    on = [c for c in conflicts if config[c.split(".")[0]][c.split(".")[1]]]
    if on:
        checks.fail(field, value, f"{off} with {_either(conflicts)} (they set the support's units "
                                  f"themselves{note})")


def check(config) -> None:
    """Checks ``config.dessilbi``, ``config.fork`` and the deprecated ``config.optimizer`` fields.

    Raises:
        checks.ConfigError: naming the field, the value and what is allowed.
    """
    d, f, o = config.dessilbi, config.fork, config.optimizer
    checks.choice(config, "dessilbi.structure", STRUCTURES)
    checks.choice(config, "dessilbi.lambda_scaling", LAMBDA_SCALINGS)
    for field in ("dessilbi.steady_path", "fork.allow_empty", "fork.trim", "fork.dependency_groups",
                  "fork.shrink", "optimizer.joint_groups"):
        checks.choice(config, field, (True, False))
    checks.choice(config, "optimizer.finetune_group_margin", ("joint", "max"))
    checks.number(config, "fork.last_epochs", 0, integer=True)
    checks.number(config, "fork.round_to", 1, integer=True)
    for field in ("dessilbi.kappa", "dessilbi.mu"):
        checks.number(config, field, 0, low_open=True)
    checks.number(config, "dessilbi.lambda_", 0)
    checks.number(config, "fork.units", 0, 1)
    checks.number(config, "fork.weights", 0, 1)
    if o.name != "dessilbi":
        for field in ("dessilbi.steady_path", "fork.last_epochs", "fork.units", "fork.weights",
                      "fork.allow_empty", "fork.trim", "fork.dependency_groups",
                      "optimizer.joint_groups", "optimizer.finetune_layer_units"):
            section, name = field.split(".")
            if config[section][name]:
                checks.fail(field, config[section][name],
                            "off unless optimizer.name='dessilbi' (they drive DessiLBI's μ and Γ)")
    if f.units and d.structure == "elementwise":
        checks.fail("fork.units", f.units,
                    "0 with dessilbi.structure='elementwise' (it counts filters and neurons)")
    if f.trim and not f.units:
        checks.fail("fork.trim", f.trim, "False unless fork.units > 0 (it trims the support to "
                                         "that fraction)")
    if f.dependency_groups and d.structure == "elementwise":
        checks.fail("fork.dependency_groups", f.dependency_groups,
                    "False with dessilbi.structure='elementwise' (it groups filters and neurons)")
    if o.joint_groups and d.structure == "elementwise":
        checks.fail("optimizer.joint_groups", o.joint_groups,
                    "False with dessilbi.structure='elementwise' (it joins filters and neurons)")
    if o.finetune_layer_units:
        from tf_dessilbi.dessilbi import support_units

        try:
            support_units.parse_layer_units(o.finetune_layer_units)
        except (TypeError, ValueError) as err:
            checks.fail("optimizer.finetune_layer_units", o.finetune_layer_units,
                        f"'pattern=k,...' with k an integer >= 1 ({err})")
        _check_start_widths(config, "optimizer.finetune_layer_units", "''", "sets",
                            ("fork.trim", "fork.dependency_groups", "optimizer.joint_groups"))
    if f.round_to != 1:
        if o.name != "dessilbi":
            checks.fail("fork.round_to", f.round_to,
                        "1 unless optimizer.name='dessilbi' (it rounds the widths of supp Γ)")
        _check_start_widths(config, "fork.round_to", "1", "rounds",
                            ("optimizer.finetune_layer_units",), ": choose multiples there")
        if o.joint_groups and not f.dependency_groups:
            checks.fail("fork.round_to", f.round_to,
                        "1 with optimizer.joint_groups=True unless fork.dependency_groups=True "
                        "(jointly coupled units are rounded by whole groups)")
    if o.finetune_group_margin != "joint" and not f.dependency_groups:
        checks.fail("optimizer.finetune_group_margin", o.finetune_group_margin,
                    "'joint' unless fork.dependency_groups=True (it ranks the dependency groups)")
    if o.joint_groups and f.trim and not f.dependency_groups:
        checks.fail("fork.trim", f.trim,
                    "False with optimizer.joint_groups=True unless fork.dependency_groups=True "
                    "(jointly coupled units are trimmed by whole groups)")
    if f.dependency_groups and not fork_on(config):
        checks.fail("fork.dependency_groups", f.dependency_groups,
                    f"False unless {_FORK_ON}: it acts when the fine-tune starts")
    if f.last_epochs >= config.num_epochs:
        checks.fail("fork.last_epochs", f.last_epochs,
                    f"< num_epochs={config.num_epochs} (DessiLBI needs epochs to find the support)")

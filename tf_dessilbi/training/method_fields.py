"""The fields of the method sections (``config.sparse``, ``config.bilevel``) and their ranges.

`check_sections` (called by `config_lib.validate`) checks them, so a bad method setting fails up front
(one line naming ``config.sparse.<field>``, exit 2) instead of deep inside the
method, after the data has loaded, under an internal argument name. A field is
``(kind, *args)``:

* ``("number", low, high, low_open, high_closed, integer)``: a finite number,
  ``> low`` (``low_open``) or ``>= low``, ``< high`` (``<= high`` when
  ``high_closed``); ``None`` for no bound;
* ``("choice", values)``; ``("bool",)``;
* ``("fractions",)``: a tuple of numbers in (0, 1).

``SPARSE_FIELDS[method]`` lists every field that method reads from
``config.sparse`` (a config may leave any of them out: the method's default);
the methods in ``NO_SPARSE_FIELDS`` read none; a method registered elsewhere
keeps its section unchecked (its own hooks validate it). ``ORDERED`` pairs fields that must
increase (``(method, smaller, larger, strict)``).
"""

from __future__ import annotations

from tf_dessilbi.training import config_checks as checks

FRACTION = ("number", 0.0, 1.0, False, False, False)  # [0, 1)
OPEN_FRACTION = ("number", 0.0, 1.0, True, False, False)  # (0, 1)
UNIT_FRACTION = ("number", 0.0, 1.0, True, True, False)  # (0, 1]
POSITIVE = ("number", 0.0, None, True, False, False)
NON_NEGATIVE = ("number", 0.0, None, False, False, False)
POSITIVE_INT = ("number", 1, None, False, False, True)
NON_NEGATIVE_INT = ("number", 0, None, False, False, True)
BOOL = ("bool",)
SCOPE = ("choice", ("layer", "global"))

_DYNAMIC = {  # SET and RigL (tf_dessilbi.sparse.set_.make_updater / sparsify)
    "sparsity": FRACTION,
    "distribution": ("choice", ("erdos_renyi_kernel", "erdos_renyi", "uniform")),
    "first_layer_dense": BOOL,
    "delta_t": POSITIVE_INT,
    "drop_fraction": OPEN_FRACTION,
    "end_fraction": UNIT_FRACTION,
    "seed": NON_NEGATIVE_INT,
}

SPARSE_FIELDS = {
    "gmp": {
        "sparsity": FRACTION,
        "initial_sparsity": FRACTION,
        "begin_fraction": FRACTION,
        "end_fraction": UNIT_FRACTION,
        "frequency": POSITIVE_INT,
        "power": POSITIVE,
        "scope": SCOPE,
    },
    "set": _DYNAMIC,
    "rigl": _DYNAMIC,
    "snip": {"sparsity": FRACTION, "scope": SCOPE, "score_batches": POSITIVE_INT},
    "grasp": {
        "sparsity": FRACTION,
        "scope": SCOPE,
        "temperature": POSITIVE,
        "samples_per_class": POSITIVE_INT,
        "score_batch_size": NON_NEGATIVE_INT,
    },
    "imp": {
        "target_sparsity": OPEN_FRACTION,
        "rounds": NON_NEGATIVE_INT,
        "prune_fraction": OPEN_FRACTION,
        "scope": SCOPE,
        "rewind_epoch": NON_NEGATIVE_INT,
        "sanity_checks": BOOL,
        "tolerance": NON_NEGATIVE,
        "milestones": ("fractions",),
        "sanity_at": ("fractions",),
    },
    "greedy": {
        "num_candidates": POSITIVE_INT,
        "tolerance": NON_NEGATIVE,
        "unit_budget": UNIT_FRACTION,
        "fine_tune_epochs": NON_NEGATIVE_INT,
    },
}

# The package's methods that read no config.sparse field (a field there is a mistake).
NO_SPARSE_FIELDS = ("sgd", "dessilbi", "cs", "cs_search", "cs_bilevel")

# (method, smaller field, larger field, strictly): e.g. GMP prunes from begin to end.
ORDERED = (
    ("gmp", "begin_fraction", "end_fraction", True),
    ("gmp", "initial_sparsity", "sparsity", False),
)

BILEVEL_FIELDS = {  # tf_dessilbi.bilevel.cs.config_section
    "method": ("choice", ("mrbo", "vrbo", "stocbio")),
    "target_density": UNIT_FRACTION,
    "density_weight": POSITIVE,
    "outer_lr": POSITIVE,
    "max_outer_step": NON_NEGATIVE,
    "inner_lr": POSITIVE,
    "neumann_terms": POSITIVE_INT,
    "neumann_eta": NON_NEGATIVE,
    "warm_steps": NON_NEGATIVE_INT,
    "warm_lr": POSITIVE,
    "warm_momentum": FRACTION,
    "num_steps": NON_NEGATIVE_INT,
    "log_every": POSITIVE_INT,
}

# Methods that train with one optimizer only: (method, config.optimizer.name).
OPTIMIZER_OF = {"greedy": "sgd", "imp": "sgd"}


def _check_field(config, field, spec):
    """``config.<field>`` against a spec of this module."""
    value = config
    for part in field.split("."):
        value = value[part]
    kind = spec[0]
    if kind == "choice":
        checks.choice(config, field, spec[1])
    elif kind == "bool":
        checks.choice(config, field, (True, False))
    elif kind == "fractions":
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in value)
        if not ok:
            checks.fail(field, value, "a tuple of numbers in (0, 1)")
    else:
        _, low, high, low_open, high_closed, integer = spec
        if high is not None and high_closed:
            checks.number(config, field, low, low_open=low_open, integer=integer)
            if value > high:
                checks.fail(field, value, f"a number {'>' if low_open else '>='} {low} and <= {high}")
        else:
            checks.number(config, field, low, high, low_open=low_open, integer=integer)


def check_sections(config) -> None:
    """Checks ``config.sparse`` (the fields of the method that reads it) and ``config.bilevel``.

    Raises:
        checks.ConfigError: naming the field, the value and what is allowed.
    """
    from tf_dessilbi.training import methods

    name = methods.method_name(config)
    if name not in SPARSE_FIELDS and name not in NO_SPARSE_FIELDS:
        keys = []  # a method registered elsewhere: its section is its own
    else:
        keys = list(config.sparse.keys())
    fields = SPARSE_FIELDS.get(name, {})
    for key in keys:
        if key not in fields:
            allowed = (f"the fields of method {name!r}: {sorted(fields)}" if fields
                       else f"no config.sparse fields with method {name!r}")
            raise checks.ConfigError(f"Unknown config field config.sparse.{key}; known: {allowed}.")
        _check_field(config, f"sparse.{key}", fields[key])
    for method, low, high, strict in ORDERED:
        if method == name and low in config.sparse and high in config.sparse:
            a, b = config.sparse[low], config.sparse[high]
            if a > b or (strict and a == b):
                checks.fail(f"sparse.{low}", a,
                      f"{'<' if strict else '<='} config.sparse.{high}={b!r}")
    for key, spec in BILEVEL_FIELDS.items():
        _check_field(config, f"bilevel.{key}", spec)
    needed = OPTIMIZER_OF.get(name)
    if needed is not None and config.optimizer.name != needed:
        checks.fail("optimizer.name", config.optimizer.name,
              f"{needed!r} with method {name!r} (it trains with {needed.upper()})")

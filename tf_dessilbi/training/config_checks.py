"""The config's field checks: `ConfigError` and one-line errors naming the field.

Every check reads ``config.<field>`` (a dotted path) and raises `ConfigError`
with ``config.<field>=<value> is invalid: allowed <what>.``; `config_lib`,
`method_fields` and `input_pipeline` share them.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """An invalid training config (the message names the field)."""


def fail(field, value, allowed):
    """Raises the one-line error for ``config.<field>``."""
    raise ConfigError(f"config.{field}={value!r} is invalid: allowed {allowed}.")


def _value(config, field):
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def number(config, field, low=None, high=None, low_open=False, integer=False):
    """``config.<field>`` is a finite number (an integer) in [low, high) or (low, high)."""
    value = _value(config, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = ""
        if low is not None:
            bound += f" {'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f"{' and' if bound else ''} < {high}"
        fail(field, value, kind + bound)


def choice(config, field, choices):
    """``config.<field>`` is one of ``choices``."""
    value = _value(config, field)
    if value not in choices:
        fail(field, value, f"one of {choices}")

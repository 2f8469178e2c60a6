"""The package's argument validators (one set, used everywhere).

Each returns the value in canonical form (a Python float / int / bool) or
raises a `TypeError` (wrong kind) or `ValueError` (wrong value) whose message
names the argument, echoes the value and says what is allowed, in Keras'
style: ``"`kappa` must be > 0. Received: kappa=-1.0"``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import keras
import numpy as np


def real(
    name: str,
    value,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """A finite real number (Python or NumPy scalar) within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise TypeError(
                f"`{name}` must be a real number. Received: {name}={value!r} "
                f"of type {type(value).__name__}"
            )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value}")
    if minimum is not None and (value <= minimum if min_open else value < minimum):
        raise ValueError(
            f"`{name}` must be {'>' if min_open else '>='} {minimum:g}. Received: {name}={value}"
        )
    if maximum is not None and (value >= maximum if max_open else value > maximum):
        raise ValueError(
            f"`{name}` must be {'<' if max_open else '<='} {maximum:g}. Received: {name}={value}"
        )
    return value


def positive(name: str, value) -> float:
    """A finite number > 0."""
    return real(name, value, minimum=0.0, min_open=True)


def non_negative(name: str, value) -> float:
    """A finite number >= 0."""
    return real(name, value, minimum=0.0)


def fraction(name: str, value) -> float:
    """A number in [0, 1) (a sparsity, a momentum)."""
    return real(name, value, minimum=0.0, maximum=1.0, max_open=True)


def integer(name: str, value, *, minimum: Optional[int] = None) -> int:
    """An integer (Python or NumPy, not bool) >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r} of type {type(value).__name__}"
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value}")
    return value


def positive_int(name: str, value) -> int:
    """An integer >= 1."""
    return integer(name, value, minimum=1)


def boolean(name: str, value) -> bool:
    """A real bool (a string such as "no" is refused, not read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`{name}` must be True or False. Received: {name}={value!r} of type {type(value).__name__}"
        )
    return bool(value)


def one_of(name: str, value, choices):
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def model(value, what: str, *, built: bool = True):
    """A `keras.Model` (built, unless ``built=False``), for function ``what``."""
    if not isinstance(value, keras.Model):
        raise TypeError(f"{what}() needs a keras.Model. Received: model={value!r}")
    if built and not value.built:
        raise ValueError(
            f"{what}() needs a built model; model {value.name!r} is not built "
            f"(give it an Input or call it on data first)."
        )
    return value

"""Which weights DessiLBI couples to a structure parameter Γ, and how.

A *structure* names the sparsity pattern of Γ for one variable:

* ``"elementwise"``: lasso, Ω(Γ) = ‖Γ‖₁; each weight enters the support alone.
* ``"filter"``: group lasso with one group per convolution filter (the last
  axis of a Keras conv kernel ``(*kernel_size, in, out)``).
* ``"neuron"``: group lasso with one group per Dense output unit (the last
  axis of a Dense kernel ``(in, out)``).
* ``"head"``: group lasso with one group per attention head: axis -2 of a
  MultiHeadAttention projection kernel ``(d, H, d_h)`` (`structures_for`
  couples the value kernel: a head out of supp Γ then outputs nothing and
  `tf_dessilbi.shrink` removes it).
* ``None``: the variable is not coupled and takes plain (momentum) SGD steps.

``"auto"`` couples Conv1D/2D/3D kernels by filter and Dense kernels
elementwise, leaving biases, normalization, embedding, depthwise and
transposed-convolution variables uncoupled. It decides from the variable
itself (name ``kernel``, its rank, and its path), because an optimizer never
sees layers; `structures_for(model)` decides from the layer classes instead
and returns an explicit mapping that can be passed as ``structure=``.
``"elementwise"`` couples the same kernels as ``"auto"``, every one of them
elementwise (the lasso path of the paper's unstructured experiments).
``"filter"`` couples the conv kernels by filter and leaves the Dense kernels
uncoupled; ``"filter_neuron"`` couples conv kernels by filter and Dense
kernels by neuron, except the last Dense kernel (the logits: a class unit
cannot go), which stays elementwise. These are the names the CLI's
``config.optimizer.structure`` takes too.

In a ``{pattern: structure}`` mapping a pattern selects kernels: it matches a
variable that is not a ``kernel`` (``conv1/bias``, a BatchNorm's ``gamma``)
only when the pattern names that variable (``"conv1/bias"``), so
``{"conv": "filter"}`` couples the conv kernels and leaves their biases alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

import keras

ELEMENTWISE = "elementwise"
FILTER = "filter"
NEURON = "neuron"
HEAD = "head"
STRUCTURES = (ELEMENTWISE, FILTER, NEURON, HEAD)
GROUP_STRUCTURES = (FILTER, NEURON)
AUTO = "auto"
FILTER_NEURON = "filter_neuron"
PRESETS = (AUTO, ELEMENTWISE, FILTER, FILTER_NEURON)  # string values of ``structure=``

_EXCLUDED_BY_AUTO = ("depthwise", "transpose", "separable")


def auto_structure(path: str, shape) -> Optional[str]:
    """The structure ``"auto"`` assigns to a variable with this path and shape."""
    parts = path.lower().split("/")
    if parts[-1] != "kernel":
        return None
    if any(word in part for part in parts[:-1] for word in _EXCLUDED_BY_AUTO):
        return None
    rank = len(shape)
    if rank == 2:
        return ELEMENTWISE
    if rank in (3, 4, 5):
        return FILTER
    return None


def check_pattern(argument: str, pattern) -> str:
    """A key of ``argument``, a {regex: value} mapping over variable paths: a valid regex string.

    Raises:
        TypeError: ``pattern`` is not a string.
        ValueError: it is not a valid regular expression.
    """
    if not isinstance(pattern, str):
        raise TypeError(
            f"`{argument}` keys must be regex strings matched against "
            f"variable paths. Received key {pattern!r} of type "
            f"{type(pattern).__name__}"
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"`{argument}` key {pattern!r} is not a valid regular "
            f"expression: {e}"
        ) from None
    return pattern


def first_match(path: str, patterns, kernels_only: bool = False) -> Optional[str]:
    """The first of ``patterns`` (in order) that `re.search` finds in ``path``; None if none does.

    With ``kernels_only``, a pattern matches a variable whose name (the last
    part of its path) is not ``kernel`` only if the pattern contains that name.
    """
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if kernels_only and name != "kernel" and name not in pattern:
            continue
        if re.search(pattern, path):
            return pattern
    return None


def validate_structure(structure):
    """Checks a ``structure=`` argument; returns it in canonical form.

    Returns:
        ``"auto"``, or a tuple of ``(pattern, structure)`` pairs in the order
        given (the first pattern that matches a variable path wins).

    Raises:
        TypeError: `structure` is neither ``"auto"`` nor a mapping, or a
            pattern is not a string.
        ValueError: an unknown structure name or an invalid regex.
    """
    if isinstance(structure, str):
        if structure not in PRESETS:
            raise ValueError(
                f"`structure` must be one of {PRESETS} or a mapping from variable-path "
                f"regex patterns to one of {STRUCTURES + (None,)}. "
                f"Received: structure={structure!r}"
            )
        return structure
    if isinstance(structure, Mapping):
        items = list(structure.items())
    elif isinstance(structure, (list, tuple)) and all(
        isinstance(item, (list, tuple)) and len(item) == 2 for item in structure
    ):
        items = [tuple(item) for item in structure]  # from get_config()
    else:
        raise TypeError(
            "`structure` must be 'auto' or a mapping {pattern: structure}. "
            f"Received: structure={structure!r} of type {type(structure).__name__}"
        )
    if not items:
        raise ValueError(
            "`structure` mapping is empty: nothing would be coupled. "
            "Use a plain optimizer such as keras.optimizers.SGD instead. "
            f"Received: structure={structure!r}"
        )
    checked = []
    for pattern, value in items:
        check_pattern("structure", pattern)
        if value is not None and value not in STRUCTURES:
            raise ValueError(
                f"`structure[{pattern!r}]` must be one of "
                f"{STRUCTURES + (None,)}. Received: {value!r}"
            )
        checked.append((pattern, value))
    return tuple(checked)


def resolve_structures(variables, structure) -> list:
    """The structure of each variable, in order.

    Args:
        variables: model variables (anything with ``path`` and ``shape``).
        structure: the output of `validate_structure`.

    Returns:
        A list of structure names or ``None``, aligned with `variables`.

    Raises:
        ValueError: a pattern matches no variable (a typo would otherwise
            silently leave the layer dense), or a group structure is asked for
            a variable of rank < 2.
    """
    paths = [_path(v) for v in variables]
    if structure == AUTO:
        return [auto_structure(p, v.shape) for p, v in zip(paths, variables)]
    if structure in (ELEMENTWISE, FILTER, FILTER_NEURON):  # auto's choice of kernels, restructured
        autos = [auto_structure(p, v.shape) for p, v in zip(paths, variables)]
        dense = [i for i, a in enumerate(autos) if a == ELEMENTWISE]
        logits = dense[-1] if dense else None
        if structure == ELEMENTWISE:
            return [None if a is None else ELEMENTWISE for a in autos]
        if structure == FILTER:
            return [a if a == FILTER else None for a in autos]
        return [NEURON if a == ELEMENTWISE and i != logits else a for i, a in enumerate(autos)]
    used = set()
    result = []
    values = {}
    for pattern, value in structure:  # the first value of a pattern given twice, as before
        values.setdefault(pattern, value)
    for path, variable in zip(paths, variables):
        pattern = first_match(path, values, kernels_only=True)
        chosen = None if pattern is None else values[pattern]
        if pattern is not None:
            used.add(pattern)
        if chosen in GROUP_STRUCTURES and len(variable.shape) < 2:
            raise ValueError(
                f"Structure {chosen!r} groups a kernel by its last axis and "
                f"needs a variable of rank >= 2, but variable {path!r} has "
                f"shape {tuple(variable.shape)}. Use 'elementwise' or None."
            )
        if chosen == HEAD and len(variable.shape) != 3:
            raise ValueError(
                f"Structure 'head' groups an attention kernel (d, heads, d_head) by its "
                f"heads (axis -2), but variable {path!r} has shape {tuple(variable.shape)}."
            )
        result.append(chosen)
    unused = [p for p, _ in structure if p not in used]
    if unused:
        shown = ", ".join(repr(p) for p in paths[:12])
        raise ValueError(
            f"`structure` patterns {unused} match no trainable variable. "
            f"Variable paths are: {shown}{', ...' if len(paths) > 12 else ''}"
        )
    return result


def structures_for(model: keras.Model) -> dict:
    """An explicit ``{variable_path: structure}`` mapping from the layer table.

    Each layer of the table with a ``structure`` (`tf_dessilbi.registry`:
    Conv1D/2D/3D kernels → ``"filter"``, Dense kernels → ``"elementwise"``,
    and registered custom layers) couples its sparsifiable weight; everything
    else is left out (uncoupled). Unlike ``"auto"`` this does not depend on
    layer names, so renamed layers are handled correctly.

    Args:
        model: a built Keras model.

    Returns:
        A dict usable as ``DessiLBI(structure=...)``; its keys are escaped
        exact-match regexes.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"structures_for() needs a keras.Model. Received: model={model!r}")
    if not model.built:
        raise ValueError(
            f"structures_for() needs a built model; build or call "
            f"{model.name!r} first."
        )
    from tf_dessilbi import walk

    return {
        "^" + re.escape(_path(variable)) + "$": spec.structure
        for _, variable, spec in walk.sparsifiable(model)
        if spec.structure is not None and variable.trainable
    }


NAMED = PRESETS  # names of `named_structure`


def named_structure(name: str, model: keras.Model):
    """The ``structure=`` argument a structure name stands for (configs, benchmarks).

    * ``"auto"``, ``"elementwise"``: the presets themselves;
    * ``"filter"``: conv filters as groups, every other kernel uncoupled (the
      dense layers take plain SGD steps);
    * ``"filter_neuron"``: conv filters and hidden dense neurons as groups;
      the last kernel (the logits) stays elementwise, as dropping a class
      unit drops a class.

    Raises:
        ValueError: an unknown name.
    """
    if name not in NAMED:
        raise ValueError(f"`structure` must be one of {NAMED}. Received: structure={name!r}")
    if name in (AUTO, ELEMENTWISE):
        return name
    mapping = structures_for(model)  # conv → filter, dense → elementwise
    if name == "filter":
        return {k: (v if v == "filter" else None) for k, v in mapping.items()}
    last = list(mapping)[-1]
    return {k: ("neuron" if v == "elementwise" and k != last else v) for k, v in mapping.items()}


def _path(variable) -> str:
    return getattr(variable, "path", None) or variable.name

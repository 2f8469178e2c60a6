"""Per-layer densities for a global target: uniform, Erdős–Rényi, ERK.

Pure functions of the weight shapes, computed as google-research/rigl's
``sparse_utils.get_sparsities_erdos_renyi`` does. For a target density d
(sparsity s = 1 − d) and layers l with n_l weights:

::

    raw_l = (Σ_i dims_i) / (Π_i dims_i)           ERK: every dim of the kernel
    raw_l = (n_in + n_out) / (n_in · n_out)       ER: the last two dims only
    ε     = (Σ_{l sparse} (n_l − ⌊s n_l⌋) − Σ_{l dense} ⌊s n_l⌋) / Σ_{l sparse} raw_l n_l
    d_l   = ε · raw_l

A layer whose ε · raw_l > 1 (those with the largest raw_l first) is made
dense (d_l = 1) and ε recomputed, until every d_l ≤ 1, so the total number of
kept weights stays d · Σ n_l. Layers in ``dense`` (e.g. the first layer) are
set to density 1 and left out of the count, as rigl's ``custom_sparsity_map``
is: they add their weights to the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tf_dessilbi import _validate

METHODS = ("uniform", "erdos_renyi", "erdos_renyi_kernel")


def _shapes(shapes) -> dict:
    if not isinstance(shapes, Mapping):
        raise TypeError(f"`shapes` must be a mapping {{key: weight shape}}. Received: {shapes!r}")
    if not shapes:
        raise ValueError("`shapes` is empty: the model has no sparsifiable weight.")
    out = {}
    for key, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"The weight {key!r} has shape {shape}: nothing to sparsify.")
        out[key] = shape
    return out


def _dense_keys(dense, shapes) -> set:
    dense = set(dense or ())
    unknown = dense - set(shapes)
    if unknown:
        raise ValueError(f"`dense` names no weight: {sorted(unknown)}. Weights: {sorted(shapes)[:12]}")
    if dense == set(shapes):
        raise ValueError("`dense` holds every layer: no layer is left to sparsify.")
    return dense


def uniform(shapes: Mapping, density: float, dense: Sequence = ()) -> dict:
    """d_l = d for every layer (1 for those in ``dense``)."""
    shapes = _shapes(shapes)
    d = _validate.real("density", density, minimum=0.0, maximum=1.0, min_open=True)
    dense = _dense_keys(dense, shapes)
    return {k: 1.0 if k in dense else d for k in shapes}


def erdos_renyi(shapes: Mapping, density: float, dense: Sequence = (), *, kernel: bool = True,
                power_scale: float = 1.0) -> dict:
    """ERK (``kernel=True``) or ER (``kernel=False``) densities, as google-research/rigl.

    Args:
        shapes: ``{key: weight shape}``; ER needs ≥ 2 dims.
        density: the target d ∈ (0, 1].
        dense: keys kept dense and left out of the count (rigl's custom map).
        kernel: include every kernel dim (ERK) or only (n_in, n_out) (ER).
        power_scale: rigl's ``erk_power_scale`` (raw^power). Defaults to `1`.

    Returns:
        ``{key: d_l}``, d_l ∈ (0, 1].

    Raises:
        ValueError: a bad density or shape, or an unreachable target (a
            layer would keep no weight).
    """
    shapes = _shapes(shapes)
    d = _validate.real("density", density, minimum=0.0, maximum=1.0, min_open=True)
    power = _validate.positive("power_scale", power_scale)
    dense_given = _dense_keys(dense, shapes)
    sparsity = 1.0 - d
    raw = {}
    for key, shape in shapes.items():
        if kernel:
            raw[key] = (sum(shape) / math.prod(shape)) ** power
        else:
            if len(shape) < 2:
                raise ValueError(f"Erdős–Rényi needs (n_in, n_out) dims; {key!r} has shape {shape}.")
            n_in, n_out = shape[-2:]
            raw[key] = (n_in + n_out) / (n_in * n_out)
    made_dense = set()
    while True:
        rhs, divisor = 0.0, 0.0
        for key, shape in shapes.items():
            n = math.prod(shape)
            zeros = math.floor(sparsity * n)
            if key in made_dense:
                rhs -= zeros
            elif key in dense_given:
                continue
            else:
                rhs += n - zeros
                divisor += raw[key] * n
        sparse_keys = [k for k in shapes if k not in made_dense and k not in dense_given]
        if not sparse_keys or divisor <= 0 or rhs <= 0:
            raise ValueError(
                f"No Erdős–Rényi allocation reaches density {d:g}: the dense layers "
                f"{sorted(made_dense | dense_given)} already exceed the budget."
            )
        eps = rhs / divisor
        max_raw = max(raw[k] for k in sparse_keys)
        if max_raw * eps > 1.0:
            made_dense.update(k for k in sparse_keys if raw[k] == max_raw)
            continue
        break
    result = {}
    for key, shape in shapes.items():
        result[key] = 1.0 if key in made_dense or key in dense_given else eps * raw[key]
        if round(result[key] * math.prod(shape)) < 1:
            raise ValueError(
                f"Density {d:g} is unreachable with Erdős–Rényi: layer {key!r} (shape "
                f"{shape}) would keep {result[key] * math.prod(shape):.3g} < 1 weights."
            )
    return result


def densities(method: str, shapes: Mapping, density: float, *, dense: Sequence = (),
              first_layer_dense: bool = False, power_scale: float = 1.0) -> dict:
    """Per-layer densities by name: ``"uniform"``, ``"erdos_renyi"``, ``"erdos_renyi_kernel"``.

    Args:
        method: one of `METHODS` (``"erk"`` and ``"er"`` are accepted too).
        shapes: ``{key: weight shape}`` in model order.
        density: the target density d = 1 − sparsity.
        dense: keys kept dense.
        first_layer_dense: keep the first key dense (RigL's option).
        power_scale: ERK's power.
    """
    method = {"erk": "erdos_renyi_kernel", "er": "erdos_renyi"}.get(method, method)
    _validate.one_of("method", method, METHODS)
    shapes = _shapes(shapes)
    dense = list(dense) + ([next(iter(shapes))] if _validate.boolean(
        "first_layer_dense", first_layer_dense) else [])
    if method == "uniform":
        return uniform(shapes, density, dense)
    return erdos_renyi(shapes, density, dense, kernel=method == "erdos_renyi_kernel",
                       power_scale=power_scale)


def model_shapes(model) -> dict:
    """``{key: shape}`` of the model's masked weights (`MaskedLayer`s), in model order."""
    from tf_dessilbi.sparse import updater

    return {t.key: tuple(t.weight.shape) for t in updater.targets(model)}

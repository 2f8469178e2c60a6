"""Optimizer state onto a shrunk model: keep training where the big model stopped.

`shrink` cuts each layer's weights along the units it keeps; an optimizer's
per-variable state (SGD's momentum buffer b, Adam's m and v, DessiLBI's
momentum and V) is shaped like those weights and is cut the same way here,
with the same handlers (`tf_dessilbi.dependency.handlers`) and the kept indices
`ShrinkReport.kept` records. Everything else is copied: the step count
``iterations`` (so a learning-rate schedule continues at its position), a
learning rate a callback changed, DessiLBI's κ, μ, λ and its per-layer
threshold scales λ·c_l (measured on the big model: the small model's
fan-in is not what the path used).

For an elementwise optimizer (SGD, Nesterov, Adam, DessiLBI on its
support), a kept weight's update reads only its own gradient and its own
slots, so training the small model with the carried state is the masked
full-width run restricted to the kept weights, provided every removed unit
outputs exactly 0 there (see `tf_dessilbi.procedures.shrink_switch`).

Not carried: a global gradient norm (``global_clipnorm``) sums over weights
the small model no longer has; DessiLBI's group norms ‖V_g‖₂ lose the rows
of removed input channels (see `carry_optimizer`).
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from tf_dessilbi import _compat
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.dependency import handlers as handlers_lib
from tf_dessilbi.shrink.report import ShrinkReport


def _owners(model) -> dict:
    """``{variable path: (layer, weight name)}`` of the leaf layers' weights."""
    owners = {}
    for layer in walk.layers(model):
        if isinstance(layer, keras.Model):
            continue
        for variable in layer.weights:
            owners[variable.path] = (layer, variable.name.split("/")[-1])
    return owners


def cut_like_weights(model: keras.Model, report: ShrinkReport, arrays: dict) -> dict:
    """Arrays shaped like ``model``'s weights, cut as `shrink` cut those weights.

    Args:
        model: the model `shrink` was called on (its layer names are the
            shrunk model's).
        report: the `ShrinkReport` of that call.
        arrays: ``{variable path: array shaped like that variable}`` (any
            weight of a leaf layer: kernels, biases, BN statistics, ...).

    Returns:
        ``{variable path: cut array}``: shaped like the shrunk model's
        variable of the same path (arrays of uncut layers are returned as
        they are).

    Raises:
        TypeError: ``report`` is not a `ShrinkReport`.
        ValueError: a path that is no variable of ``model``, or
            an array of the wrong shape.
    """
    if not isinstance(report, ShrinkReport):
        raise TypeError(f"`report` must be a ShrinkReport. Received: report={report!r}")
    owners = _owners(model)
    by_layer = {}
    for path, array in arrays.items():
        if path not in owners:
            raise ValueError(f"{path!r} is not a variable of model {model.name!r}. "
                             f"Its variables: {sorted(owners)}")
        layer, name = owners[path]
        array = np.asarray(array)
        expected = tuple(layer.weights[[w.path for w in layer.weights].index(path)].shape)
        if array.shape != expected:
            raise ValueError(f"The array for {path!r} has shape {array.shape}; the variable "
                             f"has shape {expected}.")
        by_layer.setdefault(id(layer), (layer, {}))[1][name] = (path, array)
    out = {}
    for layer, named in by_layer.values():
        if layer.name not in report.kept:
            out.update({path: array for path, array in named.values()})
            continue
        keep_in, keep_out = report.kept[layer.name]
        handler = registry.layer_spec(layer).cut
        # the handlers cut whole weight dicts: the weights given no array are zeros
        dtype = next(iter(named.values()))[1].dtype
        full = {w.name.split("/")[-1]: np.zeros(tuple(w.shape), dtype) for w in layer.weights}
        full.update({name: array for name, (_, array) in named.items()})
        if isinstance(handler, handlers_lib.ProducerHandler):
            _, cut = handler.cut(layer.get_config(), full, keep_in, keep_out)
        else:
            _, cut = handler.cut(layer.get_config(), full, keep_in)
        out.update({path: cut[name] for name, (path, _) in named.items()})
    return out


def _slot_kind(slot, variable) -> str:
    return slot.name[len(variable.path.replace("/", "_")) + 1:]


def carry_optimizer(model: keras.Model, small: keras.Model, report: ShrinkReport,
                    optimizer=None) -> keras.optimizers.Optimizer:
    """A new optimizer for ``small`` holding ``optimizer``'s state for the units it kept.

    The new optimizer has ``optimizer``'s class and configuration and is
    built on ``small.trainable_variables``; then

    * every slot shaped like its variable (momentum, Adam's m and v,
      DessiLBI's momentum and V, EMA averages, ...) is the old slot cut as
      `shrink` cut the variable (`cut_like_weights`): b_small = b[kept];
    * every other optimizer variable (``iterations``, the learning rate,
      DessiLBI's κ, μ, λ and ``"init_norm"`` scales) is copied by name,
      a per-unit DessiLBI scale (``"unit_init_norm"``) cut to the kept units;
    * DessiLBI's ``"fan_in"`` threshold scales are the big model's
      (λ/√fan_in of the layer the path ran on), its ``unit_groups``
      renumbered to the kept units (a group losing a member is dropped).

    A slot of a variable the old model did not have (a bias `shrink`
    created to fold a constant into) starts at zero.

    With DessiLBI's coupling on, V of a group-coupled consumer loses the rows
    that read removed channels, so ‖V_g‖₂ and Γ_g there are not the big
    model's: the carried path is exact for the W update to O(α/μ) and its
    support can lose a unit whose margin the removed rows made; with the
    coupling off (μ = `tf_dessilbi.dessilbi.finetune.DECOUPLED_MU`) that
    term is below float32 resolution.

    Args:
        model: the model `shrink` was called on.
        small: the shrunk model.
        report: the `ShrinkReport` of that call (``return_report=True``).
        optimizer: the built optimizer that trained ``model``. Defaults to
            ``model.optimizer``.

    Returns:
        The new, built optimizer (not compiled into ``small``: pass it to
        ``small.compile``). ``model``, ``optimizer`` and ``small`` are left
        unchanged.

    Raises:
        TypeError: ``report`` is not a `ShrinkReport`, or a wrapped
            optimizer (``LossScaleOptimizer``).
        ValueError: the optimizer is not built, or a variable of ``small``
            whose state cannot be found or cut.

    Example:

    ```python
    small, report = tf_dessilbi.shrink(model, return_report=True)
    small.compile(optimizer=carry_optimizer(model, small, report), loss=model.loss)
    ```
    """
    walk.check_graph_model(model, "carry_optimizer")
    walk.check_graph_model(small, "carry_optimizer")
    if not isinstance(report, ShrinkReport):
        raise TypeError(f"`report` must be a ShrinkReport. Received: report={report!r}")
    optimizer = model.optimizer if optimizer is None else optimizer
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a Keras optimizer. Received: optimizer={optimizer!r}")
    if hasattr(optimizer, "inner_optimizer"):
        raise TypeError("carry_optimizer() carries a plain optimizer's state; received a "
                        f"{type(optimizer).__name__}. Carry its inner_optimizer and wrap again.")
    if not optimizer.built:
        raise ValueError("carry_optimizer() needs a built optimizer (train a step first). "
                         f"Received: {type(optimizer).__name__} {optimizer.name!r}, not built.")
    old_vars = {v.path: v for v in model.trainable_variables}
    config = optimizer.get_config()
    kept_units = _kept_units(model, report)
    if config.get("unit_groups"):
        config["unit_groups"] = _renumber_groups(config["unit_groups"], kept_units) or None
    new = type(optimizer).from_config(config)
    new.build(small.trainable_variables)

    # slots: cut per kind
    slot_values, slot_targets = {}, []
    for variable in small.trainable_variables:
        new_slots = _compat.slot_variables(new, variable)
        old = old_vars.get(variable.path)
        if old is None:
            continue  # a bias shrink created: its slots start at zero
        old_slots = {_slot_kind(s, old): s for s in _compat.slot_variables(optimizer, old)}
        for slot in new_slots:
            kind = _slot_kind(slot, variable)
            if kind not in old_slots:
                raise ValueError(f"carry_optimizer(): no {kind!r} slot of {old.path!r} in "
                                 f"{type(optimizer).__name__} {optimizer.name!r}.")
            slot_values.setdefault(kind, {})[old.path] = keras.ops.convert_to_numpy(old_slots[kind])
            slot_targets.append((slot, kind, old.path))
    cut = {kind: cut_like_weights(model, report, values) for kind, values in slot_values.items()}
    if "dessilbi_v" in cut:
        _keep_group_norms(optimizer, model, kept_units, slot_values["dessilbi_v"],
                          cut["dessilbi_v"])
    assignments = [(slot, cut[kind][path]) for slot, kind, path in slot_targets]

    # every other variable: by name
    slots = {id(s) for s, _ in assignments}
    slots |= {id(s) for v in small.trainable_variables for s in _compat.slot_variables(new, v)}
    old_by_name = {}
    for v in optimizer.variables:
        old_by_name.setdefault(v.name, v)
    scales = _threshold_scales(optimizer, new, model, small, kept_units)
    slots |= {id(variable) for variable, _ in scales}
    assignments += scales
    for variable in new.variables:
        if (id(variable) in slots or variable.name not in old_by_name
                or variable.name.startswith("lambda_scale_")):  # by variable, above
            continue
        assignments.append((variable, keras.ops.convert_to_numpy(old_by_name[variable.name])))
    for variable, value in assignments:
        if tuple(np.shape(value)) != tuple(variable.shape):
            raise ValueError(f"carry_optimizer(): {variable.path!r} has shape "
                             f"{tuple(variable.shape)}; the carried value {np.shape(value)}.")
    for variable, value in assignments:
        variable.assign(value)
    return new


_GROUPED = ("filter", "neuron")  # DessiLBI's group structures: one group per last-axis unit


def _keep_group_norms(optimizer, model, kept_units, old_vs: dict, new_vs: dict) -> None:
    """Rescales each group-coupled unit's cut V_g to its old norm ‖V_g‖₂ (in place).

    A consumer's unit loses the rows of V that read removed channels; without
    this its margin ‖V_g‖₂/λ_g would drop and a unit could leave supp Γ on
    the small model. Rescaled, every unit's margin, its joint-group
    threshold and so supp Γ are the big model's; Γ_g keeps the cut V_g's
    direction.
    """
    variables = {v.path: v for v in model.trainable_variables}
    for path, old in old_vs.items():
        if path not in kept_units or optimizer.variable_structure(variables[path]) not in _GROUPED:
            continue
        new = new_vs[path]
        old_norms = np.linalg.norm(old.reshape(-1, old.shape[-1]).astype(np.float64), axis=0)
        new_norms = np.linalg.norm(new.reshape(-1, new.shape[-1]).astype(np.float64), axis=0)
        scale = old_norms[kept_units[path]] / np.where(new_norms > 0, new_norms, 1.0)
        new_vs[path] = (new * np.where(new_norms > 0, scale, 1.0)).astype(new.dtype)


def _kept_units(model, report) -> dict:
    """``{variable path: kept output units}`` of the cut producers' kernels."""
    out = {}
    for path, (layer, _) in _owners(model).items():
        if layer.name in report.kept:
            out[path] = np.asarray(report.kept[layer.name][1], np.int64)
    return out


def _renumber_groups(groups, kept_units) -> list:
    renumbered = []
    for group in groups:
        members = []
        for path, unit in group:
            kept = kept_units.get(path)
            if kept is None:
                members.append([path, int(unit)])
            elif int(unit) in kept:
                members.append([path, int(np.searchsorted(kept, int(unit)))])
        if len(members) == len(group) and len(members) > 1:
            renumbered.append(members)
    return renumbered


def _threshold_scales(old, new, model, small, kept_units) -> list:
    """DessiLBI's threshold scales c_l stay the big model's (by variable, not by name).

    A ``"fan_in"`` scale (a float from the kernel's shape) is set on ``new``
    at once; a measured one (``"init_norm"``: a scalar variable,
    ``"unit_init_norm"``: one per unit, cut to the kept units) is returned
    as ``[(new variable, value)]`` for the caller to assign.
    """
    old_scales: Optional[list] = getattr(old, "_threshold_scales", None)
    new_scales: Optional[list] = getattr(new, "_threshold_scales", None)
    if old_scales is None or new_scales is None:
        return []
    index = {v.path: i for i, v in enumerate(model.trainable_variables)}
    out = []
    for j, variable in enumerate(small.trainable_variables):
        i = index.get(variable.path)
        if i is None or old_scales[i] is None or new_scales[j] is None:
            continue
        if isinstance(old_scales[i], float):
            new_scales[j] = old_scales[i]
            continue
        value = keras.ops.convert_to_numpy(old_scales[i])
        if value.shape != tuple(new_scales[j].shape):
            value = value[kept_units[variable.path]]
        out.append((new_scales[j], value))
    return out

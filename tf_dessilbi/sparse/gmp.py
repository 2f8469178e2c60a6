"""Gradual magnitude pruning (Zhu & Gupta 2017) with a TF-MOT-shaped API.

Every ``frequency`` steps between ``begin_step`` and ``end_step`` each layer
keeps its ``round((1 − s_t) · n)`` active weights of largest |W|, with the
sparsity of `tf_dessilbi.sparse.PolynomialDecay` (power 3)::

    s_t = s_f + (s_i − s_f) (1 − (t − t₀)/(nΔt))³

Pruned weights never return. The TF-MOT workflow maps one to one::

    model = tf_dessilbi.sparse.prune_low_magnitude(model, PolynomialDecay(0, 0.9, 0, 4000))
    model.compile(...)
    model.fit(..., callbacks=[tf_dessilbi.sparse.UpdatePruningStep()])
    plain = tf_dessilbi.strip(model)        # the plain layers, kernels W ⊙ M
"""

from __future__ import annotations

from typing import Optional

import keras

from tf_dessilbi.sparse import callback as callback_lib
from tf_dessilbi.sparse import schedules
from tf_dessilbi.sparse import updater as updater_lib


class MagnitudePruning(updater_lib.MaskUpdater):
    """The GMP updater: prune-only, drop scores |W|, sparsity from a pruning schedule.

    Args:
        pruning_schedule: a `ConstantSparsity` / `PolynomialDecay` (anything
            with ``schedule(step) -> (should_prune, sparsity)``).
        scope: ``"layer"`` (TF-MOT: every layer at s_t) or ``"global"`` (one
            threshold over all masked weights). Defaults to ``"layer"``.
    """

    kind = "prune"

    def __init__(self, pruning_schedule, scope: str = "layer", name: Optional[str] = None):
        if not callable(pruning_schedule):
            raise TypeError(
                "`pruning_schedule` must be a tf_dessilbi.sparse.ConstantSparsity or "
                f"PolynomialDecay. Received: pruning_schedule={pruning_schedule!r}"
            )
        super().__init__(scope=scope, name=name or "GMP")
        self.pruning_schedule = pruning_schedule

    def amount(self, step: int):
        should, sparsity = self.pruning_schedule(step)
        return 1.0 - float(sparsity) if should else None

    def get_config(self) -> dict:
        return {"pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "scope": self.scope, "name": self.name}


def _layer_filter(layer_names):
    if layer_names is None:
        return None
    names = set(layer_names)
    return lambda layer: layer.name in names


def prune_low_magnitude(
    to_prune: keras.Model,
    pruning_schedule=None,
    *,
    layer_names=None,
    scope: str = "layer",
) -> keras.Model:
    """A copy of ``to_prune`` whose sparsifiable layers are pruned by magnitude during fit.

    Like ``tfmot.sparsity.keras.prune_low_magnitude``: wraps the layers in
    `tf_dessilbi.layers.MaskedLayer`; train with `UpdatePruningStep` in the
    callbacks; `tf_dessilbi.strip` gives the plain model.

    Args:
        to_prune: a built Sequential or Functional model (left untouched), or
            one already wrapped by `tf_dessilbi.layers.mask_model` (used as is).
        pruning_schedule: defaults to ``ConstantSparsity(0.5, begin_step=0,
            frequency=100)`` (TF-MOT's default).
        layer_names: prune only these layers. Defaults to every supported layer.
        scope: ``"layer"`` or ``"global"``. Defaults to ``"layer"``.

    Returns:
        The masked model (not compiled); its updater is attached to it, so
        ``UpdatePruningStep()`` needs no argument.

    Raises:
        TypeError: a subclassed model, a named layer with no sparsifiable
            weight, or a bad schedule.
        ValueError: an unbuilt model or unknown layer names.
    """
    pruning_schedule = pruning_schedule or schedules.ConstantSparsity(0.5, 0, -1, 100)
    updater = MagnitudePruning(pruning_schedule, scope=scope)
    model = sparse_copy(to_prune, layer_names)
    updater.bind(model)
    callback_lib.attach(model, [updater])
    return model


def sparse_copy(model: keras.Model, layer_names=None) -> keras.Model:
    """``model`` wrapped by `mask_model` (a model with `MaskedLayer`s is returned as is).

    Raises:
        ValueError: unknown ``layer_names``.
        TypeError: a named layer that has no sparsifiable weight.
    """
    from tf_dessilbi.layers import mask_model
    from tf_dessilbi.layers.masked import MaskedLayer
    from tf_dessilbi import walk

    walk.check_graph_model(model, "prune_low_magnitude")
    if any(isinstance(layer, MaskedLayer) for layer in walk.layers(model)):
        if layer_names is not None:
            raise ValueError("`layer_names` cannot be used on a model that is already masked.")
        return model
    if layer_names is not None:
        if isinstance(layer_names, str):
            layer_names = [layer_names]
        known = {layer.name for layer in walk.layers(model)}
        unknown = sorted(set(layer_names) - known)
        if unknown:
            raise ValueError(f"`layer_names` {unknown} name no layer of model {model.name!r}.")
    return mask_model(model, layer_filter=_layer_filter(layer_names))


class UpdatePruningStep(callback_lib.UpdateMasks):
    """TF-MOT's ``UpdatePruningStep``: drives the updaters attached to the model.

    Args:
        updaters: optional explicit updaters. Defaults to those attached by
            `prune_low_magnitude`.
    """


def strip_pruning(model: keras.Model) -> keras.Model:
    """TF-MOT's ``strip_pruning``: `tf_dessilbi.strip` (plain layers, kernels W ⊙ M)."""
    from tf_dessilbi.export.strip import strip

    return strip(model)


# -- CLI hooks (methods.md) ------------------------------------------------------------
def _section(config):
    return config.get("sparse", None) or {}


def prepare(config, model, data, steps_per_epoch: int) -> keras.Model:
    """Wraps the model for GMP: s_i → s_f over [begin, end] epochs, every ``frequency`` steps."""
    sp = _section(config)
    total = int(config.num_epochs) * int(steps_per_epoch)
    begin = int(round(float(sp.get("begin_fraction", 0.0)) * total))
    end = max(begin + 1, int(round(float(sp.get("end_fraction", 0.75)) * total)))
    schedule = schedules.PolynomialDecay(
        float(sp.get("initial_sparsity", 0.0)), float(sp.get("sparsity", 0.9)),
        begin_step=begin, end_step=end, power=float(sp.get("power", 3.0)),
        frequency=int(sp.get("frequency", 100)),
    )
    return prune_low_magnitude(model, schedule, scope=str(sp.get("scope", "layer")))


def callbacks(config, model, steps_per_epoch: int) -> list:
    """``[UpdatePruningStep()]``."""
    return [UpdatePruningStep()]

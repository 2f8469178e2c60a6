"""Fixed-mask pruning in TF-MOT: the masks of a sparse model, kept while fine-tuning."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _compat
from tf_dessilbi import masks as masks_lib
from tf_dessilbi.tfmot._lazy import modules


def sparse_masks(model: keras.Model, optimizer=None) -> dict:
    """``{layer name: bool kernel mask}`` of the sparse layers of `model`.

    The `tf_dessilbi.masks` of the model keyed by layer name (the name the
    layer has after `tf_dessilbi.strip` and `to_tf_keras`): DessiLBI's
    supp(Γ) (pass the `optimizer`), `SparseGate` hard masks 1[s > 0] and
    `MaskedLayer` fixed masks; a kernel with several gives the intersection.

    Args:
        model: a Keras 3 model.
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`, or
            `None`. Defaults to `None`.

    Returns:
        A dict of bool NumPy arrays shaped like the kernels.
    """
    if optimizer is not None and not getattr(masks_lib.unwrap_optimizer(optimizer), "built", False):
        raise ValueError(
            "sparse_masks() needs an optimizer that has been built for "
            "the model (train at least one step first)."
        )
    mask = masks_lib.resolve(None, model, optimizer=optimizer)
    return {key.split("/")[0]: value for key, value in mask.weights.items()}


class TFMOTMasks:
    """The masks of a tf_keras model pruned by TF-MOT (its pruning wrappers), as a `MaskSource`.

    Keyed like every `tf_dessilbi.masks.Mask` (``"<layer>/kernel"``), by the
    wrapped layer's name, so the masks apply to the Keras 3 model of the
    same architecture.
    """

    def __init__(self, tf_keras_model):
        self.tf_keras_model = tf_keras_model

    def mask(self, model=None) -> masks_lib.Mask:
        weights = {}
        for layer in self.tf_keras_model.layers:
            for weight, mask_variable, _ in getattr(layer, "pruning_vars", ()):
                name = weight.name.split("/")[-1].split(":")[0]
                weights[f"{layer.layer.name}/{name}"] = np.asarray(mask_variable.numpy()) != 0
        return masks_lib.Mask(weights)


@functools.lru_cache(maxsize=None)
def fixed_mask_class():
    tf_keras, tfmot = modules()
    import tensorflow as tf

    @tf_keras.utils.register_keras_serializable(package="tf_dessilbi")
    class FixedMask(tfmot.sparsity.keras.PruningSchedule):
        """A pruning schedule that never updates the masks.

        The masks of the pruning wrappers stay as they were set (by
        `to_pruned`): fine-tuning keeps the same weights at zero.
        """

        def __call__(self, step):
            return tf.constant(False), tf.constant(0.0, dtype=tf.float32)

        def get_config(self):
            return {"class_name": "tf_dessilbi>FixedMask", "config": {}}

    FixedMask.__qualname__ = "FixedMask"
    FixedMask.__module__ = "tf_dessilbi.tfmot"
    return FixedMask


def _prunable_weights(layer, tfmot):
    """The prunable weights of a tf_keras layer, without modifying it."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prune_registry,
    )

    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return None
    return [getattr(layer, name) for name in _compat.tfmot_weight_names(registry, layer)]


def _checked_masks(model, masks, tfmot) -> dict:
    """Validates `masks` against `model`; returns ``{name: (layer, mask)}``."""
    if not isinstance(masks, Mapping):
        raise TypeError(
            "`masks` must be a mapping {layer name: bool array}. Received: "
            f"masks of type {type(masks).__name__}"
        )
    layers = {layer.name: layer for layer in model.layers}
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(
            f"`masks` names layers that model {model.name!r} does not have "
            f"(at its top level): {unknown}. Its layers are: {sorted(layers)}"
        )
    checked = {}
    for name, mask in masks.items():
        layer = layers[name]
        weights = _prunable_weights(layer, tfmot)
        if not weights:
            raise ValueError(
                f"`masks[{name!r}]`: layer {name!r} ({type(layer).__name__}) "
                f"cannot be pruned by TF-MOT (no prunable weights)."
            )
        if len(weights) != 1:
            raise ValueError(
                f"`masks[{name!r}]`: layer {name!r} has {len(weights)} "
                f"prunable weights; a mask fixes exactly one."
            )
        mask = np.asarray(mask)
        expected = tuple(weights[0].shape)
        if mask.shape != expected:
            raise ValueError(
                f"`masks[{name!r}]` has shape {mask.shape}, but the prunable "
                f"weight {weights[0].name!r} of layer {name!r} has shape "
                f"{expected}."
            )
        if mask.dtype != bool:
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError(
                    f"`masks[{name!r}]` must be boolean or 0/1. Received "
                    f"values {np.unique(mask)[:5]}..."
                )
            mask = mask.astype(bool)
        checked[name] = (layer, mask)
    return checked


def to_pruned(tf_keras_model, masks: Mapping):
    """A copy of a tf_keras model with the masked layers in TF-MOT pruning wrappers.

    Each layer named in `masks` is wrapped in ``prune_low_magnitude`` with the
    `FixedMask` schedule, its wrapper mask set to the given mask and its
    kernel multiplied by it. The masks never change, so fine-tuning with
    ``tfmot.sparsity.keras.UpdatePruningStep`` keeps the masked weights at
    exactly zero, ``tfmot.sparsity.keras.strip_pruning`` returns the plain
    model, and prune-preserving QAT keeps the same zeros. `tf_keras_model` is
    not modified (the result holds copies of its weights).

    Args:
        tf_keras_model: a Sequential or Functional tf_keras model (e.g. from
            `to_tf_keras`).
        masks: ``{layer name: bool array}``, one mask per top-level layer,
            shaped like its prunable weight (the kernel); e.g. from
            `sparse_masks`.

    Returns:
        A new tf_keras model.

    Raises:
        TypeError: `tf_keras_model` is not a tf_keras model, or `masks` is
            not a mapping.
        ValueError: an unknown layer name, a layer TF-MOT cannot prune, or a
            mask of the wrong shape or values (all checked before anything
            is built).
    """
    tf_keras, tfmot = modules()
    if not isinstance(tf_keras_model, tf_keras.Model):
        raise TypeError(
            "`tf_keras_model` must be a tf_keras.Model (see to_tf_keras() to "
            f"carry a Keras 3 model). Received: {type(tf_keras_model).__module__}."
            f"{type(tf_keras_model).__name__}"
        )
    if not (
        isinstance(tf_keras_model, tf_keras.Sequential)
        or getattr(tf_keras_model, "_is_graph_network", False)
    ):
        raise ValueError(
            "`tf_keras_model` must be a Sequential or Functional tf_keras "
            f"model; {tf_keras_model.name!r} is subclassed."
        )
    checked = _checked_masks(tf_keras_model, masks, tfmot)
    schedule_cls = fixed_mask_class()
    clones = {}

    def clone_function(layer):
        copy = layer.__class__.from_config(layer.get_config())
        new = copy
        if layer.name in checked:
            new = tfmot.sparsity.keras.prune_low_magnitude(
                copy, pruning_schedule=schedule_cls()
            )
        clones[layer.name] = (layer, new)
        return new

    pruned = tf_keras.models.clone_model(
        tf_keras_model, clone_function=clone_function
    )
    for name, (layer, new) in clones.items():
        new.set_weights(layer.get_weights())
        if name in checked:
            mask = checked[name][1]
            for weight, mask_variable, _ in new.pruning_vars:
                mask_variable.assign(mask.astype(mask_variable.dtype.as_numpy_dtype))
                weight.assign(weight * mask_variable)
    logging.info(
        "to_pruned: %d of %d layers wrapped with fixed masks.",
        len(checked),
        len(tf_keras_model.layers),
    )
    return pruned

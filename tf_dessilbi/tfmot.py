"""Bridge to the TensorFlow Model Optimization Toolkit (TF-MOT, tf_keras).

TF-MOT only accepts tf_keras (Keras 2) models. This module carries a sparse
Keras 3 model over, with its weights and masks, and gives TF-MOT what it
needs to keep the sparsity while fine-tuning or quantizing:

* `to_tf_keras(model, optimizer=None)`: the stripped model (see
  `tf_dessilbi.strip`) rebuilt as an equivalent tf_keras model;
* `sparse_masks(model, optimizer=None)`: ``{layer name: bool mask}`` from
  the support of Γ (DessiLBI) and from `SparseGate` hard masks;
* `to_pruned(tf_keras_model, masks)`: the masked layers wrapped in TF-MOT's
  pruning wrappers with the masks fixed (`FixedMask` never changes them), so
  fine-tuning with ``UpdatePruningStep`` keeps pruned weights at zero,
  ``tfmot.sparsity.keras.strip_pruning`` strips the wrappers, and
  prune-preserving QAT
  (``tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme``)
  applies to the result;
* `DessiLBI`: the optimizer for ``tf_keras`` ``model.compile``, sharing the
  update maths (`tf_dessilbi.slbi`) with the Keras 3 `tf_dessilbi.DessiLBI`.

tf_keras and TF-MOT are imported on first use, never at package import.
Importing TF-MOT sets ``TF_USE_LEGACY_KERAS=1`` in the process environment
(which would switch ``tf.keras`` and child processes to Keras 2); this module
restores the variable to its previous value right after the import, so Keras 3
keeps working as before in the same process.

Example:

```python
from tf_dessilbi import tfmot as bridge
import tensorflow_model_optimization as tfmot

tfk_model = bridge.to_tf_keras(model, optimizer)
pruned = bridge.to_pruned(tfk_model, bridge.sparse_masks(model, optimizer))
pruned.compile(...)
pruned.fit(x, y, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
stripped = tfmot.sparsity.keras.strip_pruning(pruned)
```
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping

import keras
import numpy as np
from absl import logging

from tf_dessilbi import export as export_lib
from tf_dessilbi import slbi
from tf_dessilbi import structures as structures_lib
from tf_dessilbi.sparsity import _owned_variables
from tf_dessilbi.sparsity import unwrap_optimizer

# Keras 3 layer classes carried to tf_keras (same class name in both).
CARRIED_LAYERS = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "BatchNormalization",
    "LayerNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Flatten",
    "Reshape",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "ZeroPadding2D",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
)

# Base-layer keyword arguments every tf_keras layer accepts.
_BASE_KWARGS = frozenset(
    {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size"}
)


# -- lazy imports -------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _modules():
    """``(tf_keras, tfmot)``, imported once without leaking TF_USE_LEGACY_KERAS."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "The TF-MOT bridge needs the TensorFlow Keras backend; "
            f"KERAS_BACKEND is {keras.backend.backend()!r}."
        )
    import tensorflow as tf

    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve the lazy `tf.keras` alias (to Keras 3, unless the user asked for
    # legacy Keras) before TF-MOT flips the variable: it stays as it is.
    getattr(tf.keras, "version", None)
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous
    logging.info("TF-MOT bridge: loaded tf_keras %s", tf_keras.__version__)
    return tf_keras, tfmot


def __getattr__(name):
    # `tf_dessilbi.tfmot.DessiLBI` / `.FixedMask` subclass tf_keras / TF-MOT
    # classes, so they are created on first access.
    if name == "DessiLBI":
        return _dessilbi_class()
    if name == "FixedMask":
        return _fixed_mask_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- masks --------------------------------------------------------------------
def sparse_masks(model: keras.Model, optimizer=None) -> dict:
    """``{layer name: bool kernel mask}`` of the sparse layers of `model`.

    DessiLBI: the support of Γ of every coupled kernel (pass the
    `optimizer`). `SparseGate` layers: their hard mask 1[s > 0], keyed by the
    inner layer's name (the name the layer has after `tf_dessilbi.strip`
    and `to_tf_keras`). A kernel with both gives the intersection.

    Args:
        model: a Keras 3 model.
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`, or
            `None` for gate masks only. Defaults to `None`.

    Returns:
        A dict of bool NumPy arrays shaped like the kernels.
    """
    masks = {}
    if optimizer is not None:
        optimizer = unwrap_optimizer(optimizer)
        if not getattr(optimizer, "built", False):
            raise ValueError(
                "sparse_masks() needs an optimizer that has been built for "
                "the model (train at least one step first)."
            )
        for layer, kernel, _ in _owned_variables(model):
            support = optimizer.support(kernel)
            if support is not None:
                masks[layer.name] = np.asarray(keras.ops.convert_to_numpy(support))
    if any(
        export_lib._is_sparse_gate(layer)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    ):
        from tf_dessilbi.gating import gate_masks

        for name, kept in gate_masks(model).items():
            kept = np.asarray(kept, dtype=bool)
            masks[name] = masks[name] & kept if name in masks else kept
    return masks


# -- Keras 3 → tf_keras --------------------------------------------------------
def _carried_class(layer, tf_keras):
    name = type(layer).__name__
    if name in CARRIED_LAYERS and type(layer) is getattr(keras.layers, name, None):
        return getattr(tf_keras.layers, name)
    raise ValueError(
        f"The TF-MOT bridge cannot carry layer {layer.name!r} of type "
        f"{type(layer).__module__}.{name} to tf_keras. Supported layers: "
        f"{', '.join(CARRIED_LAYERS)}, InputLayer, and nested Sequential / "
        f"Functional models of them."
    )


def _filtered(cls, config: dict, what: str) -> dict:
    """`config` without Keras 3 options `cls` lacks; non-default ones raise."""
    accepted = set(_BASE_KWARGS)
    for klass in cls.__mro__:  # kwargs passed on to a base class count too
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(klass.__init__).parameters)
    result = {}
    for key, value in config.items():
        if key in accepted:
            result[key] = value
        elif value not in (None, False, 0, {}, [], ()):
            raise ValueError(
                f"{what} sets {key}={value!r}, which tf_keras' {cls.__name__} "
                f"does not have; the TF-MOT bridge cannot carry it."
            )
    return result


_OBJECT_MODULES = {
    "_initializer": "initializers",
    "_regularizer": "regularizers",
    "_constraint": "constraints",
}


def _tf_keras_object_config(key, value, what, tf_keras):
    """Keras 3's ``{module, class_name, config, ...}`` → tf_keras' form."""
    if not (isinstance(value, dict) and "class_name" in value):
        return value
    suffix = next((s for s in _OBJECT_MODULES if key.endswith(s)), None)
    cls = None
    if suffix is not None:
        cls = getattr(getattr(tf_keras, _OBJECT_MODULES[suffix]), value["class_name"], None)
    if cls is None or value.get("registered_name") not in (None, value["class_name"]):
        raise ValueError(
            f"{what}: the TF-MOT bridge cannot carry {key}={value!r} "
            f"(only built-in initializers, regularizers and constraints)."
        )
    config = _filtered(cls, value.get("config") or {}, f"{what}, {key}")
    return {"class_name": value["class_name"], "config": config}


def _tf_keras_layer(layer, tf_keras):
    cls = _carried_class(layer, tf_keras)
    what = f"Layer {layer.name!r} ({type(layer).__name__})"
    config = dict(layer.get_config())
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    config = _filtered(cls, config, what)
    config = {
        key: _tf_keras_object_config(key, value, what, tf_keras)
        for key, value in config.items()
    }
    return cls.from_config(config)


# tf_keras weight name -> the Keras 3 name of the same weight.
_WEIGHT_ALIASES = {"depthwise_kernel": "kernel"}


def _copy_weights(source, target):
    """Copies `source`'s (Keras 3) weights into `target` (tf_keras), by name."""
    names = [w.name.split("/")[-1].split(":")[0] for w in source.weights]
    target_names = [
        _WEIGHT_ALIASES.get(name, name)
        for name in (w.name.split("/")[-1].split(":")[0] for w in target.weights)
    ]
    if names != target_names:
        raise ValueError(
            f"Layer {source.name!r}: Keras 3 weights {names} do not match the "
            f"tf_keras weights {target_names}."
        )
    target.set_weights([keras.ops.convert_to_numpy(w) for w in source.weights])


def _tf_keras_input(tensor, tf_keras):
    return tf_keras.Input(
        batch_shape=tuple(tensor.shape),
        dtype=tensor.dtype,
        name=tensor.name,
        sparse=bool(getattr(tensor, "sparse", False)),
    )


def _convert(model, tf_keras):
    """Rebuilds a Keras 3 Sequential/Functional model in tf_keras."""
    converted = {}  # id(Keras 3 layer) -> (layer, tf_keras layer)

    def convert_op(operation):
        key = id(operation)
        if key not in converted:
            if isinstance(operation, keras.Model):
                export_lib._check_graph_model(operation)
                new = _convert(operation, tf_keras)
            elif isinstance(operation, keras.layers.Layer):
                new = _tf_keras_layer(operation, tf_keras)
            else:
                raise ValueError(
                    f"The TF-MOT bridge cannot carry the operation "
                    f"{operation.name!r} ({type(operation).__name__}) of "
                    f"model {model.name!r}: only layers can be carried. Use "
                    f"a layer (e.g. keras.layers.Add) instead of keras.ops."
                )
            converted[key] = (operation, new)
        return converted[key][1]

    if isinstance(model, keras.Sequential):
        inputs = [_tf_keras_input(model.inputs[0], tf_keras)]
        layers = [convert_op(layer) for layer in model.layers]
        result = tf_keras.Sequential(inputs + layers, name=model.name)
    else:
        inputs = [_tf_keras_input(t, tf_keras) for t in model.inputs]
        outputs = model._run_through_graph(inputs, operation_fn=convert_op)
        result = tf_keras.Model(
            keras.tree.pack_sequence_as(model._inputs_struct, inputs),
            outputs,
            name=model.name,
        )
    for source, target in converted.values():
        if not isinstance(source, keras.Model):
            _copy_weights(source, target)
    return result


def to_tf_keras(model: keras.Model, optimizer=None, prune_bias: bool = True):
    """The stripped `model` as an equivalent tf_keras model, for TF-MOT.

    The model is first stripped (`tf_dessilbi.strip`: W* with a DessiLBI
    `optimizer`, `SparseGate` layers unwrapped with their hard masks folded
    in), then rebuilt layer by layer in tf_keras with the same names,
    configurations and weights. Use `sparse_masks` for the masks.

    Args:
        model: a built Sequential or Functional Keras 3 model of the layers
            in `CARRIED_LAYERS` (plus `SparseGate` wrappers around them, and
            nested Sequential/Functional models).
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`, or
            `None`. Defaults to `None`.
        prune_bias: see `tf_dessilbi.strip`. Defaults to `True`.

    Returns:
        A `tf_keras.Model` (Sequential or Functional).

    Raises:
        ValueError: a layer or layer option that tf_keras cannot carry, or a
            model that `tf_dessilbi.strip` rejects.
    """
    tf_keras, _ = _modules()
    stripped = export_lib.strip(model, optimizer, prune_bias=prune_bias)
    return _convert(stripped, tf_keras)


# -- fixed-mask pruning ---------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _fixed_mask_class():
    tf_keras, tfmot = _modules()
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
    FixedMask.__module__ = __name__
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
    return [getattr(layer, name) for name in registry._weight_names(layer)]


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
    tf_keras, tfmot = _modules()
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
    schedule_cls = _fixed_mask_class()
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


# -- tf_keras DessiLBI -----------------------------------------------------------
class _PathShape:
    """What structure resolution reads of a tf_keras variable: path, shape."""

    def __init__(self, variable):
        name = variable.name
        self.path = name[: -len(":0")] if name.endswith(":0") else name
        self.shape = tuple(variable.shape)


@functools.lru_cache(maxsize=None)
def _dessilbi_class():
    tf_keras, _ = _modules()
    import tensorflow as tf

    from tf_dessilbi.dessilbi import HyperparameterVariables
    from tf_dessilbi.dessilbi import validate_hyperparameters

    @tf_keras.utils.register_keras_serializable(package="tf_dessilbi")
    class DessiLBI(HyperparameterVariables, tf_keras.optimizers.Optimizer):
        """DessiLBI for tf_keras models (TF-MOT), same maths as `tf_dessilbi.DessiLBI`.

        The update rule is `tf_dessilbi.slbi` (shared with the Keras 3
        optimizer)::

            W ← W − κ·α·(d + (W − Γ)/μ)
            V ← V + (α/μ)·(W_old − Γ)
            Γ ← κ · prox_{λΩ}(V)

        Structures are resolved from variable names without the ``:0``
        suffix (``"auto"``: conv kernels by filter, dense kernels
        elementwise), so a mapping from `tf_dessilbi.structures_for` on the
        Keras 3 model applies to the model carried by `to_tf_keras`.

        Args:
            learning_rate: step α (float or tf_keras schedule). Defaults to `0.1`.
            kappa: κ > 0. Defaults to `1.0`.
            mu: μ > 0 (ν in the paper). Defaults to `100.0`.
            lambda_: λ ≥ 0. Defaults to `1.0`.
            momentum: float in [0, 1). Defaults to `0.9`.
            nesterov: Nesterov momentum. Defaults to `False`.
            structure: ``"auto"`` or ``{regex: structure}``. Defaults to `"auto"`.
            lambda_scaling: ``"fan_in"`` or ``"none"``. Defaults to `"fan_in"`.
            **kwargs: tf_keras optimizer arguments (``clipnorm``,
                ``jit_compile``, ``name``, ...).

        References:
            - Fu et al. "DessiLBI: Exploring Structural Sparsity of Deep
              Networks via Differential Inclusion Paths". ICML 2020.
        """

        def __init__(
            self,
            learning_rate=0.1,
            kappa=1.0,
            mu=100.0,
            lambda_=1.0,
            momentum=0.9,
            nesterov=False,
            structure="auto",
            lambda_scaling="fan_in",
            weight_decay=None,
            clipnorm=None,
            clipvalue=None,
            global_clipnorm=None,
            use_ema=False,
            ema_momentum=0.99,
            ema_overwrite_frequency=None,
            jit_compile=True,
            name="dessilbi",
            **kwargs,
        ):
            (kappa, mu, lambda_, momentum, nesterov, lambda_scaling,
             structure) = validate_hyperparameters(
                kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure)
            super().__init__(
                name=name,
                weight_decay=weight_decay,
                clipnorm=clipnorm,
                clipvalue=clipvalue,
                global_clipnorm=global_clipnorm,
                use_ema=use_ema,
                ema_momentum=ema_momentum,
                ema_overwrite_frequency=ema_overwrite_frequency,
                jit_compile=jit_compile,
                **kwargs,
            )
            self._learning_rate = self._build_learning_rate(learning_rate)
            self.momentum = momentum
            self.nesterov = nesterov
            self.lambda_scaling = lambda_scaling
            self._structure = structure
            with tf.init_scope():
                self._kappa = self._hyper_variable(kappa, "kappa")
                self._mu = self._hyper_variable(mu, "mu")
                self._lambda = self._hyper_variable(lambda_, "lambda")

        @staticmethod
        def _hyper_variable(value, name):
            return tf.Variable(
                value,
                name=name,
                dtype=tf.float32,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        def build(self, var_list):
            """Momentum buffers, and V and Γ for the coupled variables."""
            super().build(var_list)
            if getattr(self, "_built", False):
                return
            resolved = structures_lib.resolve_structures(
                [_PathShape(v) for v in var_list], self._structure
            )
            self._structures = list(resolved)
            self._threshold_scales = [
                None
                if s is None
                else slbi.threshold_scale(v.shape, s, self.lambda_scaling)
                for v, s in zip(var_list, resolved)
            ]
            self._momentums = []
            if self.momentum != 0.0:
                self._momentums = [
                    self.add_variable_from_reference(v, "momentum")
                    for v in var_list
                ]
            self._vs, self._gammas = [], []
            for variable, s in zip(var_list, resolved):
                if s is None:
                    self._vs.append(None)
                    self._gammas.append(None)
                else:
                    self._vs.append(
                        self.add_variable_from_reference(variable, "dessilbi_v")
                    )
                    self._gammas.append(
                        self.add_variable_from_reference(variable, "dessilbi_gamma")
                    )
            self._built = True

        def update_step(self, gradient, variable):
            """One DessiLBI step for `variable` (maths in `tf_dessilbi.slbi`)."""
            index = self._index_dict[self._var_key(variable)]
            dtype = variable.dtype
            if isinstance(gradient, tf.IndexedSlices):
                gradient = tf.convert_to_tensor(gradient)
            gradient = tf.cast(gradient, dtype)
            lr = tf.cast(self.learning_rate, dtype)
            kappa = tf.cast(self._kappa, dtype)
            buffer = self._momentums[index] if self._momentums else None
            structure = self._structures[index]
            v, gamma = self._vs[index], self._gammas[index]
            w_new, buffer_new, v_new, gamma_new = slbi.step(
                gradient,
                tf.convert_to_tensor(variable),
                None if buffer is None else tf.convert_to_tensor(buffer),
                None if v is None else tf.convert_to_tensor(v),
                None if gamma is None else tf.convert_to_tensor(gamma),
                lr=lr,
                kappa=kappa,
                mu=tf.cast(self._mu, dtype),
                threshold=(
                    None if structure is None
                    else tf.cast(self._lambda, dtype) * self._threshold_scales[index]
                ),
                momentum=tf.cast(self.momentum, dtype),
                nesterov=self.nesterov,
                structure=structure,
            )
            variable.assign(w_new)
            if buffer is not None:
                buffer.assign(buffer_new)
            if structure is not None:
                v.assign(v_new)
                gamma.assign(gamma_new)

        # -- accessors (same names as the Keras 3 optimizer) -----------------
        def _index(self, variable):
            if not getattr(self, "_built", False):
                raise ValueError(
                    "The optimizer is not built yet: train a step, or call "
                    "`optimizer.build(model.trainable_variables)` first."
                )
            key = self._var_key(variable)
            if key not in self._index_dict:
                raise ValueError(
                    f"Variable {variable.name!r} is not one of the variables "
                    f"this optimizer was built with."
                )
            return self._index_dict[key]

        def variable_structure(self, variable):
            """The structure of a model variable, or ``None`` if uncoupled."""
            return self._structures[self._index(variable)]

        def gamma(self, variable):
            """Γ of a model variable (a tensor), or ``None`` if uncoupled."""
            slot = self._gammas[self._index(variable)]
            return None if slot is None else tf.convert_to_tensor(slot)

        def v(self, variable):
            """The auxiliary V of a model variable, or ``None`` if uncoupled."""
            slot = self._vs[self._index(variable)]
            return None if slot is None else tf.convert_to_tensor(slot)

        def support(self, variable):
            """Boolean mask ``Γ ≠ 0``, or ``None`` if uncoupled."""
            gamma = self.gamma(variable)
            return None if gamma is None else tf.not_equal(gamma, 0)

        def get_config(self):
            config = super().get_config()
            structure = self._structure
            if structure != structures_lib.AUTO:
                structure = [list(item) for item in structure]
            config.update(
                {
                    "learning_rate": self._serialize_hyperparameter(
                        self._learning_rate
                    ),
                    "kappa": float(self._kappa.numpy()),
                    "mu": float(self._mu.numpy()),
                    "lambda_": float(self._lambda.numpy()),
                    "momentum": self.momentum,
                    "nesterov": self.nesterov,
                    "structure": structure,
                    "lambda_scaling": self.lambda_scaling,
                }
            )
            return config

    DessiLBI.__qualname__ = "DessiLBI"
    DessiLBI.__module__ = __name__
    return DessiLBI

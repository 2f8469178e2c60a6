"""Keras 3 → tf_keras: carry a (stripped) sparse model over to TF-MOT's Keras."""

from __future__ import annotations

import inspect

import keras

from tf_dessilbi import _compat
from tf_dessilbi import export as export_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.tfmot._lazy import modules

# Keras 3 layer classes carried to tf_keras (same class name in both): the
# built-in classes of the layer table (tf_dessilbi.registry) but the input.
CARRIED_LAYERS = tuple(
    name for name in registry.known_layers() if name != "InputLayer" and hasattr(keras.layers, name)
)

# Base-layer keyword arguments every tf_keras layer accepts.
_BASE_KWARGS = frozenset(
    {"name", "trainable", "dtype", "input_shape", "batch_input_shape", "batch_size"}
)


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
                walk.check_graph_model(operation, "to_tf_keras")
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
        outputs = _compat.run_through_graph(model, inputs, convert_op)
        result = tf_keras.Model(
            _compat.pack_inputs(model, inputs),
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
    tf_keras, _ = modules()
    stripped = export_lib.strip(model, optimizer, prune_bias=prune_bias)
    return _convert(stripped, tf_keras)

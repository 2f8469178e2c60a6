"""Every use of a private Keras / TF-MOT API, in one module.

Each function here is pinned by ``tests/test_compat.py``: when a Keras or
TF-MOT release moves the private API, that test fails with a message naming
the installed version and the function, instead of a bare AttributeError
somewhere in the package.
"""

from __future__ import annotations

import keras


def functional_class():
    """Keras' `Functional` model class (Sequential is a subclass)."""
    from keras.src.models.functional import Functional

    return Functional


def is_graph_model(model) -> bool:
    """True for Sequential and Functional models (cloneable, with a graph)."""
    return isinstance(model, (keras.Sequential, functional_class()))


def flatten_layers(layer, include_self: bool = False, recursive: bool = True):
    """All layers tracked by ``layer`` (nested ones included), depth first."""
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def producing_operation(tensor):
    """The operation (layer) whose output a symbolic Keras tensor is."""
    return tensor._keras_history.operation


def run_through_graph(model, inputs, operation_fn):
    """Calls a Functional model's graph with each operation replaced by ``operation_fn(op)``."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def call_has_training_arg(layer) -> bool:
    return bool(getattr(layer, "_call_has_training_arg", False))


def tfmot_weight_names(prune_registry, layer) -> list:
    """Names of the weights TF-MOT's `PruneRegistry` prunes in ``layer``."""
    return list(prune_registry._weight_names(layer))


def relabel_tracked_list(owner, children: dict, name: str, index_of) -> dict:
    """Renumbers the TensorFlow checkpoint children of ``owner``'s tracked list ``name``.

    ``children[name]`` (a tracked list) becomes a tracked dict whose keys are
    ``str(index_of(i))``, so the checkpoint paths ``<name>/<index>`` of the
    items can stay stable when the list changes layout. The dict is cached on
    ``owner`` (TensorFlow's graph view needs the same object on every call).
    """
    import tensorflow as tf

    if name not in children:
        return children
    items = list(children[name])
    key = tuple(id(item) for item in items)
    cached = owner.__dict__.get("_compat_relabelled")
    if cached is None or cached[0] != key:
        wrapped = tf.__internal__.tracking.wrap({str(index_of(i)): item for i, item in enumerate(items)})
        cached = (key, wrapped)
        object.__setattr__(owner, "_compat_relabelled", cached)
    children[name] = cached[1]
    return children


# -- the Functional graph, for tf_dessilbi.shrink ------------------------------
def functional_graph(model):
    """The Functional graph of a Sequential or Functional model (Sequential keeps one inside)."""
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                f"Sequential model {model.name!r} has no graph yet: give it an Input first."
            )
        return graph
    return model


def graph_nodes(model) -> list:
    """The call nodes of a graph model in topological order (input nodes left out)."""
    graph = functional_graph(model)
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def node_operation(node):
    return node.operation


def node_input_tensors(node) -> list:
    return list(node.input_tensors)


def node_output_tensors(node) -> list:
    return list(node.outputs)


def node_call_arguments(node, tensor_dict):
    """``(args, kwargs)`` of a node's call with its tensors replaced via ``tensor_dict[id(t)]``."""
    return node.arguments.fill_in(tensor_dict)


def pack_outputs(model, flat):
    """``flat`` in the structure of a graph model's outputs."""
    graph = functional_graph(model)
    return keras.tree.pack_sequence_as(graph._outputs_struct, list(flat))


def pack_inputs(model, flat):
    """``flat`` in the structure of a graph model's inputs."""
    graph = functional_graph(model)
    return keras.tree.pack_sequence_as(graph._inputs_struct, list(flat))


def sync_jax_state(model) -> None:
    """On JAX, `fit` keeps variable values outside the variables during an
    epoch; syncing writes them back, and the trainer re-reads the variables
    (so a callback's assignment takes effect at the next step). A no-op on
    the other backends."""
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def eager_numpy(variable):
    """A variable's value as NumPy, also while a `tf.function` is being traced
    (read in `tf.init_scope`, where it exists eagerly)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            return keras.ops.convert_to_numpy(variable)
    return keras.ops.convert_to_numpy(variable)


def slot_variables(optimizer, variable) -> list:
    """The optimizer's per-variable slots of ``variable`` (SGD's momentum,
    Adam's m and v, ...); ``[]`` when the optimizer is not built or does
    not train ``variable``.

    Keras 3 keeps a slot list per kind, indexed like the optimizer's
    trainable variables, and names each slot after its variable's path; a
    slot is taken only when both its index and its name match.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    index_of = getattr(optimizer, "_trainable_variables_indices", None)
    if optimizer is None or not getattr(optimizer, "built", False) or not index_of:
        return []
    key = optimizer._var_key(variable)
    if key not in index_of:
        return []
    index, count = index_of[key], len(optimizer._trainable_variables)
    prefix = variable.path.replace("/", "_") + "_"
    found = []
    for name, value in vars(optimizer).items():
        if name == "_trainable_variables" or not isinstance(value, (list, tuple)) or len(value) != count:
            continue
        slot = value[index]
        if (isinstance(slot, keras.Variable) and slot is not variable
                and slot.name.startswith(prefix) and tuple(slot.shape) == tuple(variable.shape)
                and all(slot is not f for f in found)):
            found.append(slot)
    return found


def optimizer_tracks(optimizer, variable) -> bool:
    """True when a built Keras 3 optimizer trains ``variable`` (its variable-key index)."""
    return optimizer._var_key(variable) in optimizer._trainable_variables_indices


def tf_keras_variable_index(optimizer, variable):
    """The index of ``variable`` among a built tf_keras (Keras 2) optimizer's variables, or None."""
    return optimizer._index_dict.get(optimizer._var_key(variable))


def initial_epoch(model) -> int:
    """The epoch `keras.callbacks.BackupAndRestore` resumes ``model`` at (0 when it restored nothing)."""
    return int(getattr(model, "_initial_epoch", 0) or 0)


def node_constants(node) -> list:
    """The non-tensor values a node's call was given (``3.0`` in ``x + 3.0``), flattened."""
    return [
        value
        for value in keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
        if not isinstance(value, keras.KerasTensor)
    ]


def keras_op_name(operation):
    """The class name of a `keras.ops` operation recorded in a graph (``"Add"``), else None."""
    cls = type(operation)
    if isinstance(operation, keras.layers.Layer) or not cls.__module__.startswith("keras.src.ops"):
        return None
    return cls.__name__


def application_layer_classes() -> dict:
    """The private layer classes `keras.applications` build with: ``{name: class}``."""
    found = {}
    for module_name, names in (
        ("keras.src.applications.convnext", ("LayerScale",)),
        ("keras.src.applications.inception_resnet_v2", ("CustomScaleLayer",)),
    ):
        try:
            module = __import__(module_name, fromlist=list(names))
        except ImportError:  # pragma: no cover - another Keras layout
            continue
        for name in names:
            if hasattr(module, name):
                found[name] = getattr(module, name)
    return found


def layer_from_own_config(layer):
    """A new layer of the same class from ``layer.get_config()``.

    A `Lambda` layer's config holds its function as code, which Keras' safe
    mode refuses to load from a file; this config was just taken from a layer
    alive in this process, so it is loaded with safe mode off.
    """
    if isinstance(layer, keras.layers.Lambda):
        from keras.src.saving import serialization_lib

        with serialization_lib.SafeModeScope(False):
            return layer.__class__.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def node_arguments(node):
    """``(args, kwargs)`` a node's operation was called with (symbolic tensors in place)."""
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def clone_model_uncompiled(model, clone_function):
    """``keras.models.clone_model(model, clone_function, recursive=True)``, not compiled.

    Keras compiles a clone of a compiled model from ``get_compile_config()``,
    which deserializes the optimizer, its learning-rate schedule and the loss:
    a custom, unregistered schedule or loss makes the clone fail, and the
    fresh optimizer would be built for the clone's full-size variables anyway.
    The package's clones (masked copies, gated copies, shrunk and stripped
    models) are returned uncompiled; `tf_dessilbi.carry_optimizer` carries
    the optimizer state where that is wanted. ``model.compiled`` (a plain
    attribute of Keras 3's ``Trainer``) is hidden for the call and restored.
    """
    compiled = getattr(model, "compiled", False)
    try:
        if compiled:
            model.compiled = False
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    finally:
        if compiled:
            model.compiled = True

"""Pins every private Keras / TF-MOT API the package reaches (all in `_compat`).

When a release moves one, the failing test names the installed version and
the function, so the fix is obvious.
"""

import keras
import numpy as np
import pytest

from tf_dessilbi import _compat


def _model():
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden), name="m")


def _pinned(what, check):
    try:
        check()
    except Exception as e:  # noqa: BLE001 - the point is the message
        pytest.fail(f"Keras {keras.version()}: the private API behind _compat.{what} moved: {e!r}")


def test_functional_class_and_graph_models():
    def check():
        assert isinstance(_model(), _compat.functional_class())
        assert _compat.is_graph_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        assert _compat.is_graph_model(_model())

        class Sub(keras.Model):
            def call(self, x):
                return x

        assert not _compat.is_graph_model(Sub())

    _pinned("functional_class", check)


def test_flatten_layers_and_own_variables():
    def check():
        outer = keras.Sequential([keras.Input((4,)), _model()])
        names = [layer.name for layer in _compat.flatten_layers(outer)]
        assert {"m", "h", "out"} <= set(names)
        h = outer.layers[0].get_layer("h")
        assert [v.name for v in _compat.own_trainable_variables(h)] == ["kernel", "bias"]

    _pinned("flatten_layers", check)


def test_keras_history_and_run_through_graph():
    def check():
        model = _model()
        assert _compat.producing_operation(model.outputs[0]).name == "out"
        operation, node, index = _compat.keras_history(model.outputs[0])
        assert operation.name == "out" and node == 0 and index == 0
        seen = []
        _compat.run_through_graph(model, [keras.Input((4,))], lambda op: seen.append(op.name) or op)
        assert seen == ["h", "out"]

    _pinned("run_through_graph", check)


def test_call_has_training_arg():
    def check():
        assert _compat.call_has_training_arg(keras.layers.Dropout(0.5)) is True
        assert _compat.call_has_training_arg(keras.layers.Flatten()) is False

    _pinned("call_has_training_arg", check)


def test_backup_and_restore_without_save(tmp_path):
    def check():
        cls = _compat.backup_and_restore_without_save()
        callback = cls(str(tmp_path / "b"))
        model = _model()
        model.compile("sgd", "mse")
        model.fit(np.zeros((4, 4)), np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[callback])
        assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())

    _pinned("backup_and_restore_without_save", check)


def test_tfmot_prune_registry_weight_names():
    from tf_dessilbi.tfmot._lazy import modules

    tf_keras, _ = modules()
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    def check():
        layer = tf_keras.layers.Dense(3)
        layer.build((None, 4))
        assert _compat.tfmot_weight_names(prune_registry.PruneRegistry, layer) == ["kernel"]

    _pinned("tfmot_weight_names", check)


def test_functional_graph_nodes_for_shrink():
    def check():
        model = _model()
        nodes = _compat.graph_nodes(model)
        assert [_compat.node_operation(n).name for n in nodes] == ["h", "out"]
        first = nodes[0]
        (tensor,) = _compat.node_input_tensors(first)
        assert tensor is model.inputs[0]
        (out,) = _compat.node_output_tensors(first)
        args, kwargs = _compat.node_call_arguments(first, {id(tensor): "X"})
        assert args == ("X",) and kwargs == {}
        seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        assert isinstance(_compat.functional_graph(seq), _compat.functional_class())
        assert [_compat.node_operation(n).name for n in _compat.graph_nodes(seq)] == ["d"]
        assert _compat.pack_outputs(model, ["y"]) == "y" and _compat.pack_inputs(model, ["x"]) == "x"
        assert out is not None

    _pinned("graph_nodes", check)


def test_graph_ops_and_application_layers_for_shrink():
    def check():
        x = keras.Input((4, 4, 3))
        y = keras.layers.ReLU(name="r")(x + 3.0)
        model = keras.Model(x, y)
        nodes = _compat.graph_nodes(model)
        add = _compat.node_operation(nodes[0])
        assert _compat.keras_op_name(add) == "Add"
        assert _compat.keras_op_name(_compat.node_operation(nodes[1])) is None
        assert _compat.node_constants(nodes[0]) == [3.0]
        args, kwargs = _compat.node_arguments(nodes[0])
        assert args[0] is x and kwargs == {}
        classes = _compat.application_layer_classes()
        assert set(classes) == {"LayerScale", "CustomScaleLayer"}
        assert all(issubclass(c, keras.layers.Layer) for c in classes.values())

    _pinned("keras_op_name / node_constants / node_arguments / application_layer_classes", check)


def test_layer_from_own_config_clones_a_lambda():
    def check():
        layer = keras.layers.Lambda(lambda t: t * 2.0, name="double")
        clone = _compat.layer_from_own_config(layer)
        assert clone.name == "double"
        np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(np.ones((1, 2), "float32"))), [[2.0, 2.0]])

    _pinned("layer_from_own_config", check)

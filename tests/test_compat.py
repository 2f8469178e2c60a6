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


def test_flatten_layers():
    def check():
        outer = keras.Sequential([keras.Input((4,)), _model()])
        names = [layer.name for layer in _compat.flatten_layers(outer)]
        assert {"m", "h", "out"} <= set(names)

    _pinned("flatten_layers", check)


def test_keras_history_and_run_through_graph():
    def check():
        model = _model()
        assert _compat.producing_operation(model.outputs[0]).name == "out"
        seen = []
        _compat.run_through_graph(model, [keras.Input((4,))], lambda op: seen.append(op.name) or op)
        assert seen == ["h", "out"]

    _pinned("run_through_graph", check)


def test_call_has_training_arg():
    def check():
        assert _compat.call_has_training_arg(keras.layers.Dropout(0.5)) is True
        assert _compat.call_has_training_arg(keras.layers.Flatten()) is False

    _pinned("call_has_training_arg", check)


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


def test_optimizer_tracks():
    def check():
        model = _model()
        optimizer = keras.optimizers.SGD()
        optimizer.build(model.trainable_variables)
        assert all(_compat.optimizer_tracks(optimizer, v) for v in model.trainable_variables)
        assert not _compat.optimizer_tracks(optimizer, keras.Variable(np.zeros(2), name="other"))

    _pinned("optimizer_tracks", check)


def test_tf_keras_variable_index():
    from tf_dessilbi.tfmot._lazy import modules

    tf_keras, _ = modules()

    def check():
        first, second = tf_keras.backend.variable(np.zeros(2)), tf_keras.backend.variable(np.zeros(3))
        optimizer = tf_keras.optimizers.SGD()
        optimizer.build([first, second])
        assert _compat.tf_keras_variable_index(optimizer, first) == 0
        assert _compat.tf_keras_variable_index(optimizer, second) == 1
        assert _compat.tf_keras_variable_index(optimizer, tf_keras.backend.variable(np.zeros(1))) is None

    try:
        check()
    except Exception as e:  # noqa: BLE001 - the point is the message
        pytest.fail(f"tf_keras {tf_keras.__version__}: the private API behind "
                    f"_compat.tf_keras_variable_index moved: {e!r}")


def test_pack_inputs_of_a_dict_input_model():
    def check():
        a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
        joined = keras.layers.Concatenate()([a, b])
        model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(joined))
        packed = _compat.pack_inputs(model, ["x", "y"])
        assert isinstance(packed, dict) and sorted(packed.values()) == ["x", "y"]

    _pinned("pack_inputs", check)


def test_slot_variables_and_relabel_tracked_list():
    def check():
        model = _model()
        optimizer = keras.optimizers.SGD(momentum=0.9)
        optimizer.build(model.trainable_variables)
        kernel = model.trainable_variables[0]
        (slot,) = _compat.slot_variables(optimizer, kernel)
        assert tuple(slot.shape) == tuple(kernel.shape) and "momentum" in slot.name
        assert _compat.slot_variables(keras.optimizers.SGD(), kernel) == []  # not built
        children = optimizer._trackable_children("checkpoint")
        relabelled = _compat.relabel_tracked_list(optimizer, dict(children), "_variables", lambda i: 10 + i)
        assert sorted(relabelled["_variables"].keys())[:2] == ["10", "11"]

    _pinned("slot_variables", check)


def test_initial_epoch_after_backup_and_restore(tmp_path):
    def check():
        model = _model()
        model.compile("sgd", "mse")
        assert _compat.initial_epoch(model) == 0
        backup = str(tmp_path / "backup")
        x, y = np.zeros((4, 4)), np.zeros((4, 2))
        model.fit(x, y, epochs=2, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
        restored = _model()
        restored.compile("sgd", "mse")
        callback = keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)
        callback.set_model(restored)
        callback.on_train_begin()
        assert _compat.initial_epoch(restored) == 2

    _pinned("initial_epoch", check)


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


def test_clone_model_uncompiled_skips_an_unregistered_schedule():
    class Unregistered(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.01

        def get_config(self):
            return {}

    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(Unregistered()), loss="mse")
    with pytest.raises(TypeError, match="Unregistered"):  # what Keras' own clone does
        keras.models.clone_model(model)

    def check():
        clone = _compat.clone_model_uncompiled(model, lambda layer: layer.__class__.from_config(layer.get_config()))
        assert not clone.compiled
        assert model.compiled  # restored
        assert [l.name for l in clone.layers] == [l.name for l in model.layers]

    _pinned("clone_model_uncompiled", check)

"""The one layer table: built-in entries, custom layers opting in once, bad input."""

import keras
import pytest

import tf_dessilbi
from tf_dessilbi import registry
from tf_dessilbi.layers import MaskedLayer
from tf_dessilbi.layers import SparseGate


@pytest.mark.parametrize(
    "layer,weight,unit_axes,role,gateable",
    [
        (keras.layers.Dense(3), "kernel", (-1,), "producer", True),
        (keras.layers.Conv2D(3, 3), "kernel", (-1,), "producer", True),
        (keras.layers.Conv1D(3, 3), "kernel", (-1,), "producer", True),
        (keras.layers.DepthwiseConv2D(3), "kernel", (-2, -1), "depthwise", True),
        (keras.layers.Conv2DTranspose(3, 3), "kernel", (-2,), "producer", False),
        (keras.layers.SeparableConv2D(3, 3), "pointwise_kernel", (-1,), "producer", False),
        (keras.layers.BatchNormalization(), None, (-1,), "channelwise", False),
        (keras.layers.MaxPooling2D(), None, (-1,), "passthrough", False),
        (keras.layers.Flatten(), None, (-1,), "flatten", False),
        (keras.layers.Add(), None, (-1,), "merge", False),
        (keras.layers.Concatenate(), None, (-1,), "concatenate", False),
    ],
)
def test_builtin_entries(layer, weight, unit_axes, role, gateable):
    spec = registry.layer_spec(layer)
    assert (spec.weight_name, spec.unit_axes, spec.role, spec.gateable) == (weight, unit_axes, role, gateable)
    assert (registry.gate_spec(layer) is not None) == gateable


def test_unknown_layers_have_no_entry():
    assert registry.layer_spec(keras.layers.LSTM(3)) is None
    assert "LSTM" not in registry.known_layers()


def test_a_custom_layer_registered_once_works_with_both_wrappers_and_structures():
    @tf_dessilbi.register_gated_layer(weight_name="w")
    class MyDense(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")

        def call(self, x):
            return x @ self.w

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 4)

    assert "MyDense" in registry.supported_layers()
    spec = registry.layer_spec(MyDense())
    assert spec.weight_name == "w" and spec.unit_axes == (-1,) and spec.gateable
    inputs = keras.Input((5,))
    model = keras.Model(inputs, MyDense(name="mine")(inputs))
    gated = tf_dessilbi.gate_model(model)
    assert isinstance(gated.layers[-1], SparseGate)
    masked = tf_dessilbi.mask_model(model)
    assert isinstance(masked.layers[-1], MaskedLayer)
    assert list(tf_dessilbi.masks.FixedMasks().mask(masked).weights) == ["mine/w"]


def test_subclasses_share_their_base_entry():
    class MyConv(keras.layers.Conv2D):
        pass

    assert registry.layer_spec(MyConv(2, 3)) is registry.layer_spec(keras.layers.Conv2D)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(weight_name=""), ValueError, r"`weight_name` must be a non-empty string or None. Received: weight_name=''"),
        (dict(role="mixer"), ValueError, r"`role` must be one of .*Received: role='mixer'"),
        (dict(structure="rows"), ValueError, r"`structure` must be one of .*Received: structure='rows'"),
        (dict(unit_axes=(1,)), ValueError, r"`unit_axes` must be a non-empty tuple of negative axes"),
        (dict(output_axes=0), ValueError, r"`output_axes` must be >= 1. Received: output_axes=0"),
        (dict(unit_axes=(-2,), gateable=True), ValueError, r"`gateable=True` needs a `weight_name` whose unit axes are the trailing axes"),
    ],
)
def test_bad_registrations(kwargs, error, match):
    class Fresh(keras.layers.Layer):
        pass

    with pytest.raises(error, match=match):
        registry.register_layer(Fresh, **kwargs)
    assert registry.layer_spec(Fresh) is None


def test_registering_a_non_layer_is_a_type_error():
    with pytest.raises(TypeError, match="needs a keras.layers.Layer subclass"):
        registry.register_layer(int)


def test_set_cut_keeps_the_rest_of_the_entry():
    class Cuttable(keras.layers.Dense):
        pass

    registry.register_layer(Cuttable, structure="neuron")
    registry.set_cut(Cuttable, "handler")
    spec = registry.layer_spec(Cuttable)
    assert spec.cut == "handler" and spec.structure == "neuron" and spec.weight_name == "kernel"
    with pytest.raises(ValueError, match="is not in the layer table"):
        registry.set_cut(type("Nope", (keras.layers.Layer,), {}), "handler")

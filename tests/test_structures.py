"""Structures: "auto" from paths, explicit mappings, `structures_for` from the layer table."""

import re

import keras
import pytest

import tf_dessilbi
from tf_dessilbi import registry
from tf_dessilbi.dessilbi import structures


class _Var:
    def __init__(self, path, shape):
        self.path, self.shape = path, shape


@pytest.mark.parametrize(
    "path,shape,want",
    [
        ("conv/kernel", (3, 3, 1, 8), "filter"),
        ("conv1d/kernel", (3, 4, 8), "filter"),
        ("dense/kernel", (16, 4), "elementwise"),
        ("dense/bias", (4,), None),
        ("depthwise_conv2d/kernel", (3, 3, 4, 1), None),
        ("conv2d_transpose/kernel", (3, 3, 4, 8), None),
        ("separable_conv2d/pointwise_kernel", (1, 1, 4, 8), None),
        ("batch_normalization/gamma", (8,), None),
        ("embedding/embeddings", (10, 4), None),
    ],
)
def test_auto_structure(path, shape, want):
    assert structures.auto_structure(path, shape) == want


def test_first_matching_pattern_wins_and_unmatched_variables_are_uncoupled():
    variables = [_Var("a/kernel", (4, 2)), _Var("b/kernel", (3, 3, 1, 2)), _Var("b/bias", (2,))]
    resolved = structures.resolve_structures(
        variables, structures.validate_structure({"a/": "elementwise", "kernel": "filter"})
    )
    assert resolved == ["elementwise", "filter", None]


def test_elementwise_preset_couples_autos_kernels_each_as_a_lasso():
    variables = [_Var("a/kernel", (4, 2)), _Var("b/kernel", (3, 3, 1, 2)), _Var("b/bias", (2,)),
                 _Var("dw/depthwise_kernel", (3, 3, 2, 1))]
    assert structures.validate_structure("elementwise") == "elementwise"
    resolved = structures.resolve_structures(variables, "elementwise")
    assert resolved == ["elementwise", "elementwise", None, None]
    assert structures.resolve_structures(variables, "auto") == ["elementwise", "filter", None, None]


def test_elementwise_preset_round_trips_through_the_optimizer_config():
    import keras

    from tf_dessilbi import DessiLBI

    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    opt = DessiLBI(0.1, structure="elementwise")
    opt.build(model.trainable_variables)
    assert opt.get_config()["structure"] == "elementwise"
    again = DessiLBI.from_config(opt.get_config())
    again.build(model.trainable_variables)
    assert [again.variable_structure(v) for v in model.trainable_variables] == [
        "elementwise", None, "elementwise", None]


def test_group_structure_needs_rank_two():
    with pytest.raises(ValueError, match=r"'filter' .* needs a variable of rank >= 2"):
        structures.resolve_structures([_Var("x/bias", (3,))], structures.validate_structure({"bias": "filter"}))


def test_structures_for_reads_the_layer_table():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="renamed_thing")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    mapping = tf_dessilbi.structures_for(model)
    assert mapping == {r"^renamed_thing/kernel$": "filter", r"^head/kernel$": "elementwise"}
    # ... and a mapping that resolves against the model's variables.
    opt = tf_dessilbi.DessiLBI(structure=mapping)
    opt.build(model.trainable_variables)
    coupled = {v.path: s for v, s in opt.coupled_variables()}
    assert coupled == {"renamed_thing/kernel": "filter", "head/kernel": "elementwise"}


def test_a_registered_structure_is_picked_up():
    class Wide(keras.layers.Dense):
        pass

    registry.register_layer(Wide, structure="neuron")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Wide(3, name="w")(inputs))
    assert tf_dessilbi.structures_for(model) == {r"^w/kernel$": "neuron"}


def test_structures_for_needs_a_built_model():
    with pytest.raises(ValueError, match="needs a built model"):
        tf_dessilbi.structures_for(keras.Sequential([keras.layers.Dense(2)]))


def test_named_structures_and_an_unknown_name():
    from tf_dessilbi import models
    from tf_dessilbi.dessilbi import structures

    model = models.fmnist_cnn_s()
    assert structures.named_structure("auto", model) == "auto"
    filt = structures.named_structure("filter", model)
    assert sorted(v for v in filt.values() if v) == ["filter"] * 3 and list(filt.values())[-2:] == [None, None]
    fn = list(structures.named_structure("filter_neuron", model).values())
    assert fn == ["filter", "filter", "filter", "neuron", "elementwise"]
    with pytest.raises(ValueError, match=r"`structure` must be one of .*Received: structure='filters'"):
        structures.named_structure("filters", model)


@pytest.mark.parametrize("name", ["filter", "filter_neuron"])
def test_the_api_takes_the_cli_structure_names(name):
    # One vocabulary: DessiLBI(structure=name) couples what the CLI's
    # config.dessilbi.structure=name couples (named_structure, from the layer table).
    from tf_dessilbi import models
    from tf_dessilbi.dessilbi import structures

    model = models.fmnist_cnn_s()
    opt = tf_dessilbi.DessiLBI(structure=name)
    opt.build(model.trainable_variables)
    got = [opt.variable_structure(v) for v in model.trainable_variables]
    mapping = structures.named_structure(name, model)
    expected = [next((s for p, s in mapping.items() if re.search(p, v.path)), None)
                for v in model.trainable_variables]
    assert got == expected and any(got)
    assert opt.get_config()["structure"] == name


def test_a_pattern_selects_kernels_unless_it_names_another_variable():
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv1"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    opt = tf_dessilbi.DessiLBI(structure={"conv": "filter"})  # conv1/bias is not selected
    opt.build(model.trainable_variables)
    by_path = {v.path.split("/", 1)[-1]: opt.variable_structure(v) for v in model.trainable_variables}
    assert by_path == {"conv1/kernel": "filter", "conv1/bias": None, "out/kernel": None, "out/bias": None}
    opt = tf_dessilbi.DessiLBI(structure={"conv1/bias": "elementwise", "conv": "filter"})
    opt.build(model.trainable_variables)
    assert opt.variable_structure(model.get_layer("conv1").bias) == "elementwise"

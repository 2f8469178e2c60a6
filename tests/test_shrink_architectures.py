"""shrink() on the building blocks of today's architectures, each against the zeroed reference.

Pre-processing and scale layers (Rescaling, Normalization, layer scale,
InceptionResNet's CustomScaleLayer), `keras.ops` nodes (hard-swish), grouped
convolutions (whole groups), GroupNormalization (whole groups), Permute,
MultiHeadAttention (whole heads) in a transformer block, ``keep=`` for layers
of any kind, the refusal of an unknown layer, and a user's own layer
registered with one call.
"""

import keras
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized
from keras import layers

import tf_dessilbi as tfd
from tests import shrink_reference as ref
from tf_dessilbi import _compat
from tf_dessilbi.shrink import shrink


def _exact(model, masks, **kwargs):
    """shrink == the sparse model with the removed units zeroed; returns (small, report)."""
    sparse = ref.sparse_model(model, masks)
    small, report = shrink(model, masks, fold_constants=False, return_report=True, **kwargs)
    reference = ref.zero_units(ref.copy_model(sparse), report.removed)
    ref.assert_close(small, reference, ref.inputs_for(model))
    return small, report


def stem_and_hard_swish():
    """EfficientNet's stem and MobileNetV3's hard-swish written with keras.ops."""
    x = keras.Input((8, 8, 3))
    h = layers.Rescaling(1 / 255.0, name="rescale")(x)
    h = layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0], name="norm")(h)
    h = layers.Rescaling([1.0, 0.5, 2.0], name="per_channel")(h)
    h = layers.Conv2D(8, 3, padding="same", name="c1")(h)
    h = layers.Multiply(name="hswish")([h, layers.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)])
    h = layers.Conv2D(6, 1, name="c2")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="stem")


def grouped():
    """ConvNeXt's depthwise conv as Conv2D(groups=C), a grouped conv, GroupNormalization."""
    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(8, 1, name="c1")(x)
    h = layers.Conv2D(8, 3, padding="same", groups=8, name="dw")(h)
    h = layers.Conv2D(12, 3, padding="same", groups=4, name="g4")(h)
    h = layers.GroupNormalization(groups=4, name="gn")(h)
    h = layers.Permute((2, 1, 3), name="swap_hw")(h)
    h = layers.Conv2D(6, 1, name="c2")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="grouped")


def scales():
    classes = _compat.application_layer_classes()
    x = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 1, name="a")(x)
    b = layers.Conv2D(8, 3, padding="same", name="b")(x)
    h = classes["CustomScaleLayer"](0.17, name="custom_scale")([a, b])
    h = layers.Conv2D(8, 1, name="c")(h)
    h = classes["LayerScale"](0.5, 8, name="layer_scale")(h)
    h = layers.Conv2D(4, 1, name="d")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="scales")


def transformer(name="block"):
    x = keras.Input((6, 8))
    h = layers.Dense(8, name="embed")(x)
    a = layers.MultiHeadAttention(4, 3, name="mha")(h, h)
    h = layers.LayerNormalization(name="ln1")(layers.Add()([h, a]))
    f = layers.Dense(16, activation="gelu", name="ff1")(h)
    f = layers.Dense(8, name="ff2")(f)
    h = layers.LayerNormalization(name="ln2")(layers.Add()([h, f]))
    h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name=name)


class BlocksTest(parameterized.TestCase):
    @parameterized.parameters(("stem", stem_and_hard_swish), ("grouped", grouped), ("scales", scales))
    def test_random_unit_masks_exact(self, _, build):
        for seed in (0, 1):
            keras.utils.set_random_seed(seed)
            model = ref.randomize(build(), seed)
            masks = ref.random_unit_masks(model, seed, skip=("out",))
            small, report = _exact(model, masks)
            self.assertLess(report.params_after, report.params_before)

    @parameterized.parameters(("stem", stem_and_hard_swish), ("grouped", grouped), ("scales", scales))
    def test_gated_model_shrinks_exactly(self, _, build):
        # CS gates wrap every conv (grouped ones too) around the ops nodes; shrink reads 1[s > 0].
        model = ref.randomize(build())
        gated = tfd.gate_model(model)
        rng = np.random.default_rng(0)  # gates closed (s < 0) on a random half of each layer's units
        for layer in tfd.gates.gating.gated_layers(gated):
            shape = tuple(layer.gate_scores.shape)
            scores = np.abs(rng.normal(0.0, 1.0, shape)) + 0.1
            scores[..., rng.permutation(shape[-1])[: shape[-1] // 2]] *= -1.0
            layer.gate_scores.assign(scores.astype("float32"))
        small, report = shrink(gated, fold_constants=False, return_report=True)
        self.assertTrue(report.removed)
        reference = ref.zero_units(tfd.strip(gated), report.removed)
        ref.assert_close(small, reference, ref.inputs_for(model))

    def test_grouped_conv_loses_whole_groups(self):
        model = ref.randomize(grouped(), 0)
        # A group's inputs and outputs form one class: g4's group 1 reads dw channels 2-3
        # (each a depthwise group of its own) and writes channels 3-5, which
        # GroupNormalization normalizes as its group 1.
        dead = {"c1": [2, 3], "dw": [2, 3], "g4": [3, 4, 5]}
        masks = {k: ~np.isin(np.arange(n), dead[k]) for k, n in (("c1", 8), ("dw", 8), ("g4", 12))}
        small, report = _exact(model, masks)
        self.assertEqual((small.get_layer("dw").groups, small.get_layer("dw").filters), (6, 6))
        self.assertEqual((small.get_layer("g4").groups, small.get_layer("g4").filters), (3, 9))
        self.assertEqual(small.get_layer("gn").groups, 3)
        self.assertEqual(report.removed["g4"], [3, 4, 5])

    def test_per_channel_constants_are_cut(self):
        x = keras.Input((6, 6, 2))
        h = layers.Conv2D(4, 1, name="c1")(x)
        h = layers.Rescaling([1.0, 2.0, 3.0, 4.0], offset=0.5, name="scale")(h)
        h = layers.Normalization(mean=[0.0, 1, 2, 3], variance=[1.0, 2, 3, 4], name="norm")(h)
        model = keras.Model(x, layers.Conv2D(2, 1, name="out")(h))
        small, _ = _exact(ref.randomize(model), {"c1": np.array([1, 0, 1, 0], bool)})
        self.assertEqual(small.get_layer("scale").get_config()["scale"], [1.0, 3.0])
        self.assertEqual(small.get_layer("norm").get_config()["mean"], [0.0, 2])


class AttentionTest(parameterized.TestCase):
    def _sparse(self, heads_out, ff_out):
        keras.utils.set_random_seed(0)
        model = ref.randomize(transformer())
        mha = model.get_layer("mha")
        value = mha.weights[4]  # value/kernel (d, H, d_v)
        v = np.array(value)
        v[:, heads_out, :] = 0
        value.assign(v)
        return model, {"ff1": ~np.isin(np.arange(16), ff_out)}

    def test_heads_and_neurons_removed_exactly(self):
        model, masks = self._sparse([1, 3], [0, 5, 9])
        sparse = ref.sparse_model(model, masks)
        small, report = shrink(model, masks, fold_constants=False, return_report=True)
        self.assertEqual(report.removed["mha/heads"], [1, 3])
        self.assertEqual(report.removed["ff1"], [0, 5, 9])
        self.assertEqual(small.get_layer("mha").num_heads, 2)
        self.assertEqual(small.get_layer("ff1").units, 13)
        reference = ref.copy_model(sparse)
        for variable in reference.get_layer("mha").weights[:6]:  # q, k, v of the removed heads
            v = np.array(variable)
            v[..., [1, 3], :] = 0
            variable.assign(v)
        ref.zero_units(reference, {"ff1": report.removed["ff1"]})
        ref.assert_close(small, reference, ref.inputs_for(model))
        self.assertLess(report.macs_after, report.macs_before)

    def test_head_unit_mask(self):
        model = ref.randomize(transformer())
        small, report = shrink(model, {"mha": np.array([1, 0, 1, 0], bool)},
                               fold_constants=False, return_report=True)
        self.assertEqual(report.removed, {"mha/heads": [1, 3]})
        self.assertEqual(small.get_layer("mha").num_heads, 2)
        reference = ref.copy_model(model)
        for variable in reference.get_layer("mha").weights[:6]:
            v = np.array(variable)
            v[..., [1, 3], :] = 0
            variable.assign(v)
        ref.assert_close(small, reference, ref.inputs_for(model))

    def test_dessilbi_head_structure(self):
        keras.utils.set_random_seed(0)
        model = transformer()
        structure = tfd.structures_for(model)
        self.assertEqual(structure["^mha/value/kernel$"], "head")
        # Only the attention couples to Γ: the other kernels' supports stay dense, so the
        # network keeps depending on its input whatever heads one short path admits.
        structure = {k: (v if k.startswith("^mha/") else None) for k, v in structure.items()}
        opt = tfd.DessiLBI(learning_rate=0.05, kappa=1.0, mu=5.0, lambda_=0.1, structure=structure)
        model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 6, 8)).astype("float32")
        model.fit(x, rng.integers(0, 3, 32), batch_size=16, epochs=3, verbose=0)
        support = np.asarray(opt.support(model.get_layer("mha").weights[4]))
        heads_in = support.any(axis=(0, 2))
        self.assertTrue((support == heads_in[None, :, None]).all())  # whole heads enter Γ
        small, report = shrink(model, optimizer=opt, fold_constants=False, return_report=True)
        gone = report.removed.get("mha/heads", [])
        self.assertTrue(0 < len(gone) < 4, gone)
        np.testing.assert_array_equal(gone, np.flatnonzero(~heads_in) if heads_in.any()
                                      else np.arange(1, 4))
        reference = tfd.strip(model, opt)
        for variable in reference.get_layer("mha").weights[:6]:
            v = np.array(variable)
            v[..., gone, :] = 0
            variable.assign(v)
        ref.zero_units(reference, {k: v for k, v in report.removed.items() if "/" not in k})
        ref.assert_close(small, reference, x[:4])

    def test_keep_leaves_attention_whole(self):
        # Its sub-layers each own a `kernel` and a `bias`: rebuilt by their paths.
        model, masks = self._sparse([1, 3], [0])
        small = shrink(model, masks, keep=["mha"])
        self.assertEqual(small.get_layer("mha").num_heads, 4)
        for a, b in zip(small.get_layer("mha").get_weights(), model.get_layer("mha").get_weights()):
            np.testing.assert_array_equal(a, b)
        ref.assert_close(small, ref.sparse_model(model, masks), ref.inputs_for(model))


class KerasHubTest(parameterized.TestCase):
    def test_transformer_encoder_loses_feedforward_neurons(self):
        keras_hub = pytest.importorskip("keras_hub")
        keras.utils.set_random_seed(0)
        x = keras.Input((6, 8))
        h = layers.Dense(8, name="embed")(x)
        h = keras_hub.layers.TransformerEncoder(16, 2, name="enc")(h)
        h = layers.GlobalAveragePooling1D()(h)
        model = ref.randomize(keras.Model(x, layers.Dense(3, name="out")(h)))
        ffn = model.get_layer("enc")._feedforward_intermediate_dense
        kernel = np.array(ffn.kernel)
        kernel[:, ::3] = 0  # neurons 0, 3, ..., 15 dead
        ffn.kernel.assign(kernel)
        small, report = shrink(model, fold_constants=False, return_report=True)
        self.assertEqual(report.removed, {"enc/feedforward": [0, 3, 6, 9, 12, 15]})
        self.assertEqual(small.get_layer("enc").get_config()["intermediate_dim"], 10)
        reference = ref.copy_model(model)
        bias = reference.get_layer("enc")._feedforward_intermediate_dense.bias
        b = np.array(bias)
        b[::3] = 0
        bias.assign(b)
        ref.assert_close(small, reference, ref.inputs_for(model))


    def test_bert_backbone_from_config(self):
        keras_hub = pytest.importorskip("keras_hub")
        keras.utils.set_random_seed(0)
        bert = keras_hub.models.BertBackbone(
            vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
            intermediate_dim=16, max_sequence_length=8,
        )
        with self.assertRaisesRegex(ValueError, r"layer 'token_embedding' \(ReversibleEmbedding\)"
                                    r".*keep=\['token_embedding'\]"):
            shrink(bert)
        for name in ("transformer_layer_0", "transformer_layer_1"):
            ffn = bert.get_layer(name)._feedforward_intermediate_dense
            ffn.kernel.assign(np.array(ffn.kernel) * (np.arange(16) % 2))  # even neurons dead
        keep = ["token_embedding", "segment_embedding", "position_embedding", "get_item"]
        small, report = shrink(bert, keep=keep, return_report=True)
        self.assertEqual(report.removed["transformer_layer_1/feedforward"], list(range(0, 16, 2)))
        x = {"token_ids": np.tile(np.arange(1, 9), (2, 1)),
             "segment_ids": np.zeros((2, 8), "int32"), "padding_mask": np.ones((2, 8), "int32")}
        for key, value in bert(x).items():  # the dead neurons' biases are 0: exact
            np.testing.assert_allclose(np.asarray(small(x)[key]), np.asarray(value), atol=1e-6)


class KeepAndRefusalTest(parameterized.TestCase):
    def test_keep_grouped_conv_and_lambda(self):
        x = keras.Input((6, 6, 4))
        h = layers.Conv2D(8, 1, name="c1")(x)
        h = layers.Conv2D(8, 3, padding="same", groups=2, name="g")(h)
        h = layers.Lambda(lambda t: t * 2.0, name="double")(h)
        model = ref.randomize(keras.Model(x, layers.Conv2D(2, 1, name="out")(h)))
        masks = {"c1": np.arange(8) % 2 == 0, "g": np.arange(8) < 6}
        with self.assertRaisesRegex(ValueError, r"^shrink\(\) cannot reason about layer 'double' "
                                    r"\(Lambda\).*keep=\['double'\]"):
            shrink(model, masks)
        small = shrink(model, masks, keep=["g", "double"])
        self.assertEqual(small.get_layer("g").groups, 2)
        self.assertEqual(small.get_layer("c1").filters, 8)  # read by a kept layer
        x = ref.inputs_for(model)
        expected = ref.predict(ref.zero_units(model, {
            k: np.flatnonzero(~v) for k, v in masks.items()}, with_bias=False), x)
        np.testing.assert_allclose(ref.predict(small, x)[0], expected[0], rtol=1e-5, atol=1e-5)

    def test_unknown_op_refused_before_anything_is_built(self):
        x = keras.Input((6,))
        h = layers.Dense(4, name="h")(x)
        h = keras.ops.cumsum(h, axis=-1)
        model = keras.Model(x, layers.Dense(2, name="out")(h))
        before = [w.copy() for w in model.get_weights()]
        with self.assertRaisesRegex(ValueError, r"^shrink\(\) cannot reason about operation "
                                    r"'cumsum' \(Cumsum\).*keep=\['cumsum'\]"):
            shrink(model, {"h": np.array([1, 0, 1, 1], bool)})
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        small = shrink(model, {"h": np.array([1, 0, 1, 1], bool)}, keep=["cumsum"])
        self.assertEqual(small.get_layer("h").units, 4)

    def test_registered_user_layer(self):
        @keras.saving.register_keras_serializable(package="test_shrink_architectures")
        class Scale(layers.Layer):  # a per-channel scale, a user's own layer
            def build(self, shape):
                self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

            def call(self, x):
                return x * self.w

        x = keras.Input((6,))
        h = layers.Dense(5, name="h")(x)
        h = Scale(name="scale")(h)
        model = keras.Model(x, layers.Dense(2, name="out")(h))
        model.get_layer("scale").w.assign(np.arange(1, 6, dtype="float32"))
        with self.assertRaisesRegex(ValueError, "'scale' \\(Scale\\).*register_layer"):
            shrink(model, {"h": np.array([1, 0, 1, 1, 0], bool)})
        tfd.register_layer(Scale, weight_name=None, role="channelwise")
        small = shrink(model, {"h": np.array([1, 0, 1, 1, 0], bool)})
        np.testing.assert_array_equal(small.get_layer("scale").get_weights()[0], [1, 3, 4])
        ref.assert_close(
            small, ref.sparse_model(model, {"h": np.array([1, 0, 1, 1, 0], bool)}),
            ref.inputs_for(model),
        )


if __name__ == "__main__":
    absltest.main()

"""The channel dependency graph and the unit decision of shrink(), piece by piece."""

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from keras import layers

from tests import shrink_reference as ref
from tf_dessilbi.dependency import graph as graph_lib
from tf_dessilbi.shrink import shrink


def _classes(g, tensor):
    roots = g.uf.roots()
    return roots[g.labels[id(tensor)]]


class GraphTest(parameterized.TestCase):
    def test_flatten_maps_nhwc_entries_to_channels(self):
        x = keras.Input((3, 2, 1))
        c = layers.Conv2D(4, 1, name="c")(x)
        f = layers.Flatten(name="f")(c)
        model = keras.Model(x, layers.Dense(5, name="d")(f))
        g = graph_lib.Graph(model)
        conv_classes = _classes(g, c)
        flat_classes = _classes(g, f)
        self.assertLen(flat_classes, 3 * 2 * 4)
        for i, cls in enumerate(flat_classes):
            self.assertEqual(cls, conv_classes[i % 4])  # (h·W + w)·C + c

    def test_flatten_cut_keeps_the_dense_rows_of_kept_channels(self):
        x = keras.Input((3, 2, 1))
        c = layers.Conv2D(4, 1, name="c")(x)
        f = layers.Flatten(name="f")(c)
        model = keras.Model(x, layers.Dense(5, name="d")(f))
        keep = np.array([True, False, True, False])
        small = shrink(model, {"c": keep})
        old = model.get_layer("d").get_weights()[0]
        rows = [i for i in range(24) if keep[i % 4]]
        np.testing.assert_array_equal(small.get_layer("d").get_weights()[0], old[rows])
        np.testing.assert_array_equal(
            small.get_layer("c").get_weights()[0], model.get_layer("c").get_weights()[0][..., keep]
        )

    def test_add_couples_and_concatenate_offsets(self):
        x = keras.Input((4, 4, 2))
        a = layers.Conv2D(3, 1, name="a")(x)
        b = layers.Conv2D(3, 1, name="b")(x)
        s = layers.Add(name="add")([a, b])
        c = layers.Conv2D(2, 1, name="c")(x)
        cat = layers.Concatenate(name="cat")([s, c])
        model = keras.Model(x, layers.Conv2D(2, 1, name="out")(cat))
        g = graph_lib.Graph(model)
        np.testing.assert_array_equal(_classes(g, a), _classes(g, b))
        np.testing.assert_array_equal(
            _classes(g, cat), np.concatenate([_classes(g, s), _classes(g, c)])
        )

    def test_add_channel_goes_only_if_gone_in_every_branch(self):
        x = keras.Input((4, 4, 2))
        a = layers.Conv2D(3, 1, name="a")(x)
        b = layers.Conv2D(3, 1, name="b")(x)
        s = layers.Add(name="add")([a, b])
        model = keras.Model(x, layers.Conv2D(2, 1, name="out")(s))
        masks = {"a": np.array([False, False, True]), "b": np.array([False, True, True])}
        small, report = shrink(model, masks, return_report=True)
        self.assertEqual(report.removed, {"a": [0], "b": [0]})
        self.assertEqual(small.get_layer("a").filters, 2)
        ref.assert_close(small, ref.sparse_model(model, masks), ref.inputs_for(model))

    def test_shared_layer_couples_its_callers(self):
        x1, x2 = keras.Input((6,)), keras.Input((6,))
        p1 = layers.Dense(4, name="p1")(x1)
        p2 = layers.Dense(4, name="p2")(x2)
        shared = layers.Dense(3, name="shared")
        out = layers.Concatenate(name="cat")([shared(p1), shared(p2)])
        model = keras.Model([x1, x2], out)
        masks = {"p1": np.array([0, 1, 1, 1], bool), "p2": np.array([0, 0, 1, 1], bool)}
        small, report = shrink(model, masks, return_report=True)
        # The shared layer's input row j goes only if both callers lose unit j.
        self.assertEqual(report.removed, {"p1": [0], "p2": [0]})
        ref.assert_close(small, ref.sparse_model(model, masks), ref.inputs_for(model))


    def test_nested_model_called_twice(self):
        inner_in = keras.Input((5,))
        inner = keras.Model(inner_in, layers.Dense(4, name="inner_d")(inner_in), name="block")
        x1, x2 = keras.Input((3,)), keras.Input((3,))
        a = layers.Dense(5, name="a")(x1)
        b = layers.Dense(5, name="b")(x2)
        out = layers.Concatenate(name="cat")([inner(a), inner(b)])
        model = ref.randomize(keras.Model([x1, x2], layers.Dense(2, name="out")(out)), 0)
        masks = {"a": np.array([0, 0, 1, 1, 1], bool), "b": np.array([0, 1, 1, 1, 1], bool),
                 "inner_d": np.array([1, 0, 1, 1], bool)}
        small, report = shrink(model, masks, return_report=True)
        self.assertEqual(report.removed["a"], [0])
        self.assertEqual(report.removed["b"], [0])
        self.assertEqual(report.removed["inner_d"], [1])
        self.assertIsInstance(small.get_layer("block"), keras.Model)
        expected = ref.zero_units(ref.sparse_model(model, masks), report.zeroed)
        ref.assert_close(small, expected, ref.inputs_for(model))


class DecisionTest(parameterized.TestCase):
    def _mlp(self, seed=0):
        keras.utils.set_random_seed(seed)
        x = keras.Input((6,))
        h = layers.Dense(10, activation="relu", name="h")(x)
        return ref.randomize(keras.Model(x, layers.Dense(3, name="out")(h)), seed)

    def test_zero_fan_in_column_counts_as_removed(self):
        model = self._mlp()
        k, b = model.get_layer("h").get_weights()
        k[:, [2, 5]] = 0
        model.get_layer("h").set_weights([k, b])
        small, report = shrink(model, return_report=True)
        self.assertEqual(report.removed, {"h": [2, 5]})
        self.assertEqual(report.folded, {"h": [2, 5]})  # relu(b_j) ≠ 0 folded into out's bias
        ref.assert_close(small, model, ref.inputs_for(model))

    def test_unconsumed_unit_counts_as_removed(self):
        model = self._mlp()
        k, b = model.get_layer("out").get_weights()
        k[[1, 7], :] = 0
        model.get_layer("out").set_weights([k, b])
        small, report = shrink(model, return_report=True)
        self.assertEqual(report.removed, {"h": [1, 7]})
        ref.assert_close(small, model, ref.inputs_for(model))

    def test_round_to_keeps_a_multiple_of_the_strongest(self):
        model = self._mlp()
        keep = np.zeros(10, bool)
        keep[[0, 3, 4]] = True
        # The masked columns are all zero: the tie is broken by the norms of W.
        norms = np.linalg.norm(model.get_layer("h").get_weights()[0], axis=0)
        small, report = shrink(model, {"h": keep}, round_to=4, return_report=True)
        self.assertEqual(small.get_layer("h").units, 4)
        removed = set(range(10)) - set(report.removed["h"])
        extra = (removed - {0, 3, 4}).pop()
        candidates = [j for j in range(10) if j not in (0, 3, 4)]
        self.assertEqual(extra, max(candidates, key=lambda j: norms[j]))
        self.assertIn("round_to=4", report.row("h").note)
        ref.assert_close(small, ref.sparse_model(model, {"h": keep}), ref.inputs_for(model))

    def test_all_empty_layer_keeps_min_units(self):
        model = self._mlp()
        with self.assertRaisesRegex(ValueError, "keeps no weight of layer\\(s\\) h"):
            shrink(model, {"h": np.zeros(10, bool)})  # a dead network: refused by default
        small, report = shrink(model, {"h": np.zeros(10, bool)}, min_units=2, return_report=True,
                               allow_dead=True)
        self.assertEqual(small.get_layer("h").units, 2)
        self.assertIn("min_units", report.row("h").note)
        small1 = shrink(model, {"h": np.zeros(10, bool)}, allow_dead=True)
        self.assertEqual(small1.get_layer("h").units, 1)
        ref.assert_close(
            small1, ref.sparse_model(model, {"h": np.zeros(10, bool)}), ref.inputs_for(model)
        )

    def test_keep_leaves_a_layer_whole(self):
        model = self._mlp()
        small, report = shrink(model, {"h": np.arange(10) < 4}, keep=["h"], return_report=True)
        self.assertEqual(small.get_layer("h").units, 10)
        self.assertEqual(report.removed, {})

    def test_output_units_are_never_removed(self):
        model = self._mlp()
        small = shrink(model, {"out": np.array([True, False, True])})
        self.assertEqual(small.get_layer("out").units, 3)

    def test_softmax_and_layer_norm_channels_are_pinned(self):
        x = keras.Input((6,))
        h = layers.Dense(5, activation="softmax", name="soft")(x)
        h = layers.Dense(4, name="pre_ln")(h)
        h = layers.LayerNormalization(name="ln")(h)
        model = keras.Model(x, layers.Dense(2, name="out")(h))
        small = shrink(model, {"soft": np.arange(5) < 2, "pre_ln": np.arange(4) < 2})
        self.assertEqual(small.get_layer("soft").units, 5)
        self.assertEqual(small.get_layer("pre_ln").units, 4)

    def test_nonzero_constant_before_same_padding_is_zeroed(self):
        x = keras.Input((6, 6, 1))
        h = layers.Conv2D(4, 3, padding="same", activation="sigmoid", name="c1")(x)
        h = layers.Conv2D(3, 3, padding="same", name="c2")(h)
        model = keras.Model(x, layers.GlobalAveragePooling2D()(h))
        masks = {"c1": np.array([1, 0, 1, 1], bool)}
        # sigmoid(0) = 0.5 ≠ 0 and c2 pads: neither exact nor foldable → kept whole.
        small, report = shrink(model, masks, return_report=True)
        self.assertEqual(small.get_layer("c1").filters, 4)
        self.assertEqual(report.pinned, {"c1": [1]})


class BadInputTest(parameterized.TestCase):
    def _model(self):
        x = keras.Input((6,))
        h = layers.Dense(5, name="h")(x)
        return keras.Model(x, layers.Dense(2, name="out")(h))

    def _same_weights(self, model, before):
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_unsupported_layer(self):
        x = keras.Input((5,), dtype="int32")
        e = layers.Embedding(10, 4, name="emb")(x)
        model = keras.Model(x, layers.Dense(2, name="out")(layers.Flatten()(e)))
        with self.assertRaisesRegex(ValueError, r"^shrink\(\) cannot reason about layer 'emb' \(Embedding\).*keep=\['emb'\].*register_layer"):
            shrink(model)

    def test_unsupported_layer_in_keep_is_left_alone(self):
        x = keras.Input((5,), dtype="int32")
        e = layers.Embedding(10, 4, name="emb")(x)
        h = layers.Dense(3, name="h")(layers.Flatten()(e))
        model = keras.Model(x, layers.Dense(2, name="out")(h))
        small = shrink(model, {"h": np.array([1, 0, 1], bool)}, keep=["emb"])
        self.assertEqual(small.get_layer("h").units, 2)

    def test_unknown_layer_in_mask(self):
        model = self._model()
        before = model.get_weights()
        with self.assertRaisesRegex(ValueError, "'nope' names no layer"):
            shrink(model, {"nope": np.ones(5, bool)})
        self._same_weights(model, before)

    def test_wrong_length_mask(self):
        model = self._model()
        before = model.get_weights()
        with self.assertRaisesRegex(ValueError, "has shape \\(3,\\); layer 'h' has 5"):
            shrink(model, {"h": np.ones(3, bool)})
        self._same_weights(model, before)

    def test_unknown_keep(self):
        with self.assertRaisesRegex(ValueError, r"`keep` names layers \['zz'\]"):
            shrink(self._model(), keep=["zz"])

    def test_subclassed_model(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.d = layers.Dense(2)

            def call(self, x):
                return self.d(x)

        net = Net()
        net(np.zeros((1, 3), "float32"))
        with self.assertRaisesRegex(TypeError, "subclassed"):
            shrink(net)

    @parameterized.parameters(
        ({"round_to": 0}, ValueError, "round_to"),
        ({"min_units": 0}, ValueError, "min_units"),
        ({"fold_constants": "yes"}, TypeError, "fold_constants"),
        ({"keep": [1]}, TypeError, "keep"),
    )
    def test_bad_arguments(self, kwargs, error, word):
        with self.assertRaisesRegex(error, f"`{word}`.*Received"):
            shrink(self._model(), **kwargs)

    def test_channels_first_is_refused(self):
        x = keras.Input((2, 6, 6))
        h = layers.Conv2D(3, 1, data_format="channels_first", name="c")(x)
        model = keras.Model(x, layers.Flatten()(h))
        with self.assertRaisesRegex(ValueError, "channels_first"):
            shrink(model)


if __name__ == "__main__":
    absltest.main()

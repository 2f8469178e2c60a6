"""shrink() end to end: mask sources, the report, and what a deployer does with the result."""

import os
import tempfile

import keras
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized
from keras import layers

import tf_dessilbi as tfd
from tests import shrink_reference as ref
from tf_dessilbi import masks as masks_lib
from tf_dessilbi.models import fmnist_cnn_s
from tf_dessilbi.shrink import ShrinkReport
from tf_dessilbi.shrink import shrink


def small_cnn(name="cnn"):
    return fmnist_cnn_s(input_shape=(12, 12, 1), num_classes=4, name=name)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 4, n)
    return x, y


def _dessilbi_model(seed=0, structure="auto"):
    keras.utils.set_random_seed(seed)
    model = small_cnn()
    # λ low enough that every layer keeps some support (λ = 1, μ = 20 left all of them empty:
    # a dead network, which shrink now refuses); a few filters stay out.
    opt = tfd.DessiLBI(learning_rate=0.05, kappa=1.0, mu=2.0, lambda_=0.15, structure=structure)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(seed=seed)
    model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    return model, opt


class SourcesTest(parameterized.TestCase):
    @parameterized.parameters(0, 1)
    def test_short_dessilbi_run_is_exact(self, seed):
        model, opt = _dessilbi_model(seed)
        sparse = tfd.strip(model, opt)
        mask = masks_lib.resolve(None, model, optimizer=opt)
        out_of_support = {k: int((~v).sum()) for k, v in mask.units.items()}
        self.assertGreater(sum(out_of_support.values()), 0, out_of_support)
        small, report = shrink(model, optimizer=opt, return_report=True)
        x = _data(8, seed + 10)[0]
        # strip(prune_bias=True) zeroes the bias of unsupported filters, so a
        # removed filter outputs relu(0) = 0: the shrink is exact, nothing zeroed.
        self.assertEqual(report.zeroed, {})
        ref.assert_close(small, sparse, x)
        for name, gone in out_of_support.items():
            if name != "logits" and gone < mask.units[name].size:
                self.assertGreaterEqual(len(report.removed.get(name, [])), gone)

    def test_short_dessilbi_run_on_resnet(self):
        from tf_dessilbi.models import resnet20

        keras.utils.set_random_seed(0)
        model = resnet20(input_shape=(8, 8, 3), num_classes=4)
        opt = tfd.DessiLBI(learning_rate=0.05, mu=2.0, lambda_=0.2)  # alive: 363 of 788 units kept
        model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 8, 8, 3)).astype("float32")
        model.fit(x, rng.integers(0, 4, 32), batch_size=16, epochs=3, verbose=0)
        small, report = shrink(model, optimizer=opt, return_report=True)
        self.assertTrue(report.removed)
        self.assertLess(report.macs_after, report.macs_before)
        # A removed filter's BN outputs β − γ·m/√(v+ε) ≠ 0 into a padded conv:
        # those units are zeroed, and the result is the reference that zeroes them.
        expected = ref.zero_units(tfd.strip(model, opt), report.zeroed)
        ref.assert_close(small, expected, x[:4])

    def test_filter_neuron_structure(self):
        structure = {r"conv\d/kernel": "filter", r"fc1/kernel": "neuron"}
        model, opt = _dessilbi_model(0, structure=structure)
        small = shrink(model, optimizer=opt)
        ref.assert_close(small, tfd.strip(model, opt), _data(8, 3)[0])

    def test_filter_gates(self):
        model = small_cnn()
        gated = tfd.gate_model(model, granularity="filter")
        rng = np.random.default_rng(0)
        for gate in tfd.gated_layers(gated):
            scores = gate.gate_scores
            gate.gate_scores.assign(rng.normal(0.2, 1.0, tuple(scores.shape)).astype("float32"))
            bias = getattr(gate.layer, "bias", None)
            if bias is not None:
                bias.assign(rng.normal(0, 0.3, tuple(bias.shape)).astype("float32"))
        tfd.set_ticket_mode(gated, True)
        small, report = shrink(gated, return_report=True)
        self.assertTrue(report.removed)
        stripped = tfd.strip(gated)
        x = _data(8, 4)[0]
        ref.assert_close(small, ref.zero_units(stripped, report.zeroed), x)
        self.assertNotIn("SparseGate", str([type(layer) for layer in small.layers]))

    def test_elementwise_mask_with_emptied_columns_and_rows(self):
        x = keras.Input((8,))
        h = layers.Dense(6, activation="relu", name="h")(x)
        model = ref.randomize(keras.Model(x, layers.Dense(3, name="out")(h)), 0)
        rng = np.random.default_rng(0)
        m_h = rng.random((8, 6)) < 0.7
        m_h[:, 1] = False  # unit 1: no fan-in
        m_out = rng.random((6, 3)) < 0.8
        m_out[4, :] = False  # unit 4: output never consumed
        mask = masks_lib.Mask({"h/kernel": m_h, "out/kernel": m_out})
        small, report = shrink(model, mask, return_report=True)
        self.assertEqual(sorted(report.removed["h"]), [1, 4])
        sparse = ref.copy_model(model)
        for name, m in (("h", m_h), ("out", m_out)):
            k, b = sparse.get_layer(name).get_weights()
            sparse.get_layer(name).set_weights([k * m, b])
        ref.assert_close(small, sparse, ref.inputs_for(model))

    def test_masked_layer_wrappers(self):
        model = ref.randomize(small_cnn(), 1)
        units = ref.random_unit_masks(model, 1, skip=("logits",))
        masked = tfd.layers.mask_model(model, masks_lib.UnitMasks(units))
        small, report = shrink(masked, return_report=True)
        expected = ref.zero_units(ref.sparse_model(model, units), report.zeroed)
        ref.assert_close(small, expected, ref.inputs_for(model))

    def test_sequential_stays_sequential_and_input_untouched(self):
        model = keras.Sequential(
            [keras.Input((5,)), layers.Dense(6, name="a"), layers.Dense(2, name="b")], name="s"
        )
        before = [w.copy() for w in model.get_weights()]
        small = shrink(model, {"a": np.array([1, 0, 1, 0, 1, 1], bool)})
        self.assertIsInstance(small, keras.Sequential)
        self.assertEqual(small.name, "s")
        self.assertEqual([layer.name for layer in small.layers], ["a", "b"])
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)


    def test_failing_shrink_restores_the_weights_it_masked_in_place(self):
        # A plain model is masked in place while it is cut; an error on the way
        # (here: the mask empties layer "a", refused as dead) restores it.
        model = keras.Sequential(
            [keras.Input((5,)), layers.Dense(6, name="a"), layers.Dense(2, name="b")], name="s"
        )
        before = [w.copy() for w in model.get_weights()]
        with self.assertRaisesRegex(ValueError, "keeps no weight of layer"):
            shrink(model, {"a": np.zeros(6, bool)})
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        small = shrink(model, {"a": np.array([1, 0, 1, 0, 1, 1], bool)})
        self.assertEqual(small.get_layer("a").units, 4)
        self.assertTrue(all(
            not any(w is v for v in model.weights) for w in small.weights))  # no shared variable
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)


class ReportTest(parameterized.TestCase):
    def test_counts_from_shapes(self):
        model = small_cnn()
        keep = {"conv1": np.arange(16) < 8, "conv3": np.arange(64) < 16}
        small, report = shrink(model, keep, return_report=True)
        self.assertIsInstance(report, ShrinkReport)
        row = report.row("conv2")  # 3·3·in·out MACs per output position (12×12)
        self.assertEqual(row.macs_before, 3 * 3 * 16 * 32 * 12 * 12)
        self.assertEqual(row.macs_after, 3 * 3 * 8 * 32 * 12 * 12)
        fc1 = report.row("fc1")  # Flatten of 3×3×16 kept channels
        self.assertEqual(fc1.params_after, 3 * 3 * 16 * 128 + 128)
        self.assertEqual(report.params_after, small.count_params())
        self.assertEqual(report.params_before, model.count_params())
        d = report.to_dict()
        self.assertEqual(d["totals"]["macs_after"], sum(r.macs_after for r in report.rows))
        self.assertAlmostEqual(d["totals"]["params_ratio"], small.count_params() / model.count_params())
        text = str(report)
        self.assertIn("conv1", text)
        self.assertIn("16 → 8", text)
        self.assertIn("total", text)


class DeployTest(parameterized.TestCase):
    def _shrunk(self):
        model = ref.randomize(small_cnn(), 0)
        units = ref.random_unit_masks(model, 0, skip=("logits",))
        return shrink(model, units)

    def test_keras_round_trip(self):
        small = self._shrunk()
        x = ref.inputs_for(small)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "small.keras")
            small.save(path)
            loaded = keras.models.load_model(path)
        ref.assert_close(loaded, small, x, tol=1e-6)
        self.assertEqual(loaded.count_params(), small.count_params())

    def test_tflite_conversion(self):
        import tensorflow as tf

        small = self._shrunk()
        with tempfile.TemporaryDirectory() as tmp:
            small.export(tmp, verbose=False)
            flatbuffer = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
        # (from_concrete_functions gives NaN outputs with this TF / Keras 3 pair,
        # for dense models too; the SavedModel route is the reliable one.)
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        x = ref.inputs_for(small, batch=1)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(out, np.asarray(small(x)), rtol=1e-4, atol=1e-4)

    def test_tfmot_bridge_accepts_it(self):
        small = self._shrunk()
        converted = tfd.tfmot.to_tf_keras(small)
        x = ref.inputs_for(small)
        np.testing.assert_allclose(
            np.asarray(converted(x, training=False)), np.asarray(small(x)), rtol=1e-5, atol=1e-5
        )

    @pytest.mark.slow
    def test_saved_model_export(self):
        small = self._shrunk()
        with tempfile.TemporaryDirectory() as tmp:
            path = tfd.export_saved_model(small, tmp)
            self.assertTrue(os.path.exists(os.path.join(path, "saved_model.pb")))


if __name__ == "__main__":
    absltest.main()

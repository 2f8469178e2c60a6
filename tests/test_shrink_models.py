"""shrink() is exact on every model family, for random unit masks (several seeds).

For each model: random biases and BN statistics (so removed units output
nonzero constants), a random unit mask; then

* with ``fold_constants=False`` the shrunk model equals the reference: the
  sparse model with every removed unit's kernel, bias and BN γ/β zeroed;
* with ``fold_constants=True`` it equals the sparse model with only the
  units the report calls *zeroed* zeroed (folded ones are reproduced);
* every layer's new width is its kept count, and the units the mask removed
  from a producer whose outputs are not coupled are gone.
"""

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras import layers

from tests import shrink_reference as ref
from tf_dessilbi import models
from tf_dessilbi.shrink import shrink

SEEDS = (0, 1, 2)


def sequential_cnn():
    return keras.Sequential(
        [
            keras.Input((12, 12, 2)),
            layers.Conv2D(8, 3, padding="same", name="c1"),
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="r1"),
            layers.MaxPooling2D(name="p1"),
            layers.Conv2D(12, 3, activation="relu", name="c2"),
            layers.Flatten(name="f"),
            layers.Dense(16, activation="relu", name="d1"),
            layers.Dense(5, name="out"),
        ],
        name="seq_cnn",
    )


def mlp():
    x = keras.Input((20,))
    h = layers.Dense(32, activation="relu", name="h1")(x)
    h = layers.Dropout(0.5, name="drop")(h)
    h = layers.Dense(24, activation="tanh", name="h2")(h)
    return keras.Model(x, layers.Dense(4, name="out")(h), name="mlp")


def branch_concat():
    x = keras.Input((10, 10, 3))
    a = layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(x)
    b = layers.Conv2D(5, 1, activation="relu", name="b")(x)
    b = layers.Conv2D(7, 3, padding="same", name="b2")(b)
    c = layers.Concatenate(name="cat")([a, b])
    c = layers.Conv2D(8, 3, padding="valid", activation="relu", name="c")(c)
    g = layers.GlobalAveragePooling2D(name="gap")(c)
    return keras.Model(x, layers.Dense(3, name="out")(g), name="branch")


def depthwise_separable():
    x = keras.Input((12, 12, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.ReLU(name="r")(h)
    h = layers.SeparableConv2D(10, 3, padding="valid", activation="relu", name="sep")(h)
    h = layers.Conv2D(6, 1, activation="relu", name="pw")(h)
    h = layers.GlobalMaxPooling2D(name="gmp")(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="dwsep")


def conv1d():
    x = keras.Input((20, 4))
    h = layers.Conv1D(8, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.AveragePooling1D(2, name="p")(h)
    h = layers.Conv1D(10, 3, activation="relu", name="c2")(h)
    h = layers.Flatten(name="f")(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="conv1d")


def conv3d():
    x = keras.Input((6, 6, 6, 2))
    h = layers.Conv3D(6, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.Conv3D(8, 3, activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling3D(name="gap")(h)
    return keras.Model(x, layers.Dense(3, name="out")(h), name="conv3d")


def nested():
    inner_in = keras.Input((8, 8, 6))
    y = layers.Conv2D(10, 3, padding="same", activation="relu", name="inner_c")(inner_in)
    y = layers.BatchNormalization(name="inner_bn")(y)
    inner = keras.Model(inner_in, y, name="block")
    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(x)
    h = inner(h)
    h = layers.Conv2D(4, 1, activation="relu", name="head_c")(h)
    h = layers.Flatten(name="f")(h)
    return keras.Model(x, layers.Dense(2, name="out")(h), name="nested")


def assorted():
    """Padding, merges other than Add, PReLU, cropping, up-sampling, ConvTranspose, Reshape."""
    x = keras.Input((8, 8, 2))
    h = layers.Conv2D(6, 3, padding="same", name="c1")(x)
    h = layers.PReLU(shared_axes=[1, 2], name="prelu")(h)
    h = layers.ZeroPadding2D(1, name="pad")(h)
    h = layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    a = layers.Conv2D(8, 1, name="a")(h)
    b = layers.Conv2D(8, 1, activation="sigmoid", name="b")(h)
    m = layers.Multiply(name="mul")([a, b])
    d = layers.Subtract(name="sub")([m, layers.Conv2D(8, 1, name="d")(h)])
    d = layers.Maximum(name="max")([d, layers.Conv2D(8, 1, name="e")(h)])
    d = layers.Cropping2D(1, name="crop")(d)
    d = layers.UpSampling2D(2, name="up")(d)
    t = layers.Conv2DTranspose(5, 3, strides=2, padding="same", activation="relu", name="tr")(d)
    t = layers.Reshape((24 * 24, 5), name="reshape")(t)
    t = layers.Conv1D(4, 1, activation="relu", name="c1d")(t)
    g = layers.GlobalAveragePooling1D(name="gap")(t)
    return keras.Model(x, layers.Dense(3, name="out")(g), name="assorted")


def resnet20():
    return models.resnet20(input_shape=(8, 8, 3), num_classes=4)


def vgg16_bn():
    return models.vgg16_bn(input_shape=(32, 32, 3), num_classes=4)


def fmnist():
    return models.fmnist_cnn_s(input_shape=(12, 12, 1), num_classes=4)


BUILDERS = {
    "sequential_cnn": sequential_cnn,
    "fmnist_cnn_s": fmnist,
    "mlp": mlp,
    "branch_concat": branch_concat,
    "depthwise_separable": depthwise_separable,
    "conv1d": conv1d,
    "conv3d": conv3d,
    "nested": nested,
    "resnet20": resnet20,
    "assorted": assorted,
}


def _check(model, masks, seed):
    sparse = ref.sparse_model(model, masks)
    x = ref.inputs_for(model, seed)
    before = [w.copy() for w in model.get_weights()]
    # Random masks may empty a small layer: exactness holds there too (allow_dead).
    small, report = shrink(model, masks, fold_constants=False, return_report=True, allow_dead=True)
    reference = ref.zero_units(ref.copy_model(sparse), report.removed)
    ref.assert_close(small, reference, x)
    folded, report_f = shrink(model, masks, return_report=True, allow_dead=True)
    reference_f = ref.zero_units(ref.copy_model(sparse), report_f.zeroed)
    ref.assert_close(folded, reference_f, x)
    assert report_f.removed == report.removed
    for a, b in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)
    # New widths are the kept counts.
    new_layers = ref.by_name(small)
    for row in report.rows:
        layer = new_layers[row.layer]
        units = getattr(layer, "filters", None) or getattr(layer, "units", None)
        if units is not None:
            assert units == row.units_after, row
    assert type(small) is type(model)
    return small, report


class ShrinkModelsTest(parameterized.TestCase):
    @parameterized.parameters(*sorted(BUILDERS))
    def test_random_masks_exact(self, name):
        self._random_masks_exact(name, SEEDS[0])

    @parameterized.product(name=sorted(BUILDERS), seed=SEEDS[1:])
    @pytest.mark.slow
    def test_random_masks_exact_more_seeds(self, name, seed):
        self._random_masks_exact(name, seed)

    def _random_masks_exact(self, name, seed):
        keras.utils.set_random_seed(seed)
        model = ref.randomize(BUILDERS[name](), seed)
        masks = ref.random_unit_masks(model, seed, skip=("out",))
        small, report = _check(model, masks, seed)
        self.assertLess(report.params_after, report.params_before)
        self.assertLess(report.macs_after, report.macs_before)

    @parameterized.parameters(*SEEDS)
    def test_plain_chain_removes_exactly_the_masked_units(self, seed):
        model = ref.randomize(mlp(), seed)
        masks = ref.random_unit_masks(model, seed, skip=("out",))
        small, report = _check(model, masks, seed)
        for name in ("h1", "h2"):
            np.testing.assert_array_equal(
                sorted(report.removed.get(name, [])), np.flatnonzero(~masks[name])
            )
        # Dense → Dense: every constant act(b_j) folds, so nothing is zeroed and
        # the folded result equals the unzeroed sparse model.
        folded, report_f = shrink(model, masks, return_report=True, allow_dead=True)
        self.assertEqual(report_f.zeroed, {})
        ref.assert_close(folded, ref.sparse_model(model, masks), ref.inputs_for(model))

    def test_resnet_residual_channels_coupled(self):
        model = ref.randomize(resnet20(), 0)
        masks = ref.random_unit_masks(model, 0, keep_prob=0.3, skip=("out",))
        small, report = _check(model, masks, 0)
        # Channels joined by a residual Add go together: all producers feeding
        # the same Add chain keep the same width.
        widths = {r.layer: r.units_after for r in report.rows}
        adds = [layer for layer in model.layers if isinstance(layer, layers.Add)]
        self.assertTrue(adds)
        for add in adds:
            parents = [t._keras_history.operation for t in add.input]
            shapes = {tuple(p.output.shape) for p in parents}
            self.assertEqual(len(shapes), 1)
        new_adds = [layer for layer in small.layers if isinstance(layer, layers.Add)]
        for add in new_adds:
            self.assertEqual(len({tuple(t.shape) for t in add.input}), 1)
        self.assertTrue(widths)

    @pytest.mark.slow
    def test_vgg16_bn(self):
        model = ref.randomize(vgg16_bn(), 0)
        masks = ref.random_unit_masks(model, 0, keep_prob=0.6, skip=("out", "logits"))
        _check(model, masks, 0)


if __name__ == "__main__":
    from absl.testing import absltest

    absltest.main()

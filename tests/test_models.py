"""The model zoo: every registered model builds, runs and couples its convs."""

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi import models

# (name, input shape small enough for a quick forward pass, classes)
CASES = [
    ("fmnist_cnn_s", (28, 28, 1), 10),
    ("lenet5", (28, 28, 1), 10),
    ("vgg16_bn", (32, 32, 3), 10),
    ("resnet20", (32, 32, 3), 10),
    ("resnet56", (32, 32, 3), 100),
    ("resnet18", (64, 64, 3), 7),
]


def test_every_registered_model_is_tested():
    assert sorted(models.MODELS) == sorted(name for name, _, _ in CASES)


@pytest.mark.parametrize("name,shape,classes", CASES)
def test_builds_and_outputs_logits(name, shape, classes):
    model = models.get_model(name, input_shape=shape, num_classes=classes)
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, classes)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name,shape,classes", CASES)
def test_dessilbi_auto_couples_every_conv_by_filter(name, shape, classes):
    model = models.get_model(name, input_shape=shape, num_classes=classes)
    optimizer = tf_dessilbi.DessiLBI()
    optimizer.build(model.trainable_variables)
    coupled = dict((v.path, s) for v, s in optimizer.coupled_variables())
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs
    for layer in convs:
        assert coupled[layer.kernel.path] == "filter"
    assert coupled[model.get_layer("logits").kernel.path] == "elementwise"


@pytest.mark.parametrize("depth,blocks", [(20, 3), (56, 9)])
def test_resnet_cifar_depth(depth, blocks):
    model = models.resnet_cifar(depth)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    # stem + 2 per block + 2 projection shortcuts
    assert len(convs) == 1 + 2 * 3 * blocks + 2


def test_weight_decay_adds_l2_losses():
    model = models.get_model("resnet20", weight_decay=1e-4)
    model(np.zeros((1, 32, 32, 3), np.float32))
    assert len(model.losses) > 0
    plain = models.get_model("resnet20")
    plain(np.zeros((1, 32, 32, 3), np.float32))
    assert len(plain.losses) == 0


@pytest.mark.parametrize("depth", [0, 19, 21, "20"])
def test_resnet_cifar_bad_depth(depth):
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_cifar(depth)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="Unknown model 'resnet99'.*known models"):
        models.get_model("resnet99")


def test_fmnist_cnn_s_widths_and_their_validation():
    model = models.fmnist_cnn_s(filters=(8, 12, 20))
    widths = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert widths == [8, 12, 20]
    assert model.get_layer("fc1").kernel.shape == (7 * 7 * 20, 128)
    default = [layer.filters for layer in models.fmnist_cnn_s().layers
               if isinstance(layer, keras.layers.Conv2D)]
    assert default == [16, 32, 64]
    for bad in [(8, 12), (8, 0, 4), (8.0, 12, 20), "16,32,64", (True, 2, 3)]:
        with pytest.raises(ValueError, match="filters"):
            models.fmnist_cnn_s(filters=bad)

"""Keras 3 functional models used by the configs, benchmarks and tests.

`MODELS` maps a config's ``model.name`` to its builder; every builder takes
``input_shape`` and ``num_classes`` (and optionally ``weight_decay``).
"""

from tf_dessilbi.models.fmnist import fmnist_cnn_s
from tf_dessilbi.models.lenet5 import lenet5
from tf_dessilbi.models.resnet import resnet18
from tf_dessilbi.models.resnet import resnet20
from tf_dessilbi.models.resnet import resnet56
from tf_dessilbi.models.resnet import resnet_cifar
from tf_dessilbi.models.vgg import vgg16_bn

MODELS = {
    "fmnist_cnn_s": fmnist_cnn_s,
    "lenet5": lenet5,
    "vgg16_bn": vgg16_bn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
}


def get_model(name: str, **kwargs):
    """Builds the model registered as `name` in `MODELS`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model {name!r}; known models: {sorted(MODELS)}."
        )
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "fmnist_cnn_s",
    "get_model",
    "lenet5",
    "resnet18",
    "resnet20",
    "resnet56",
    "resnet_cifar",
    "vgg16_bn",
]

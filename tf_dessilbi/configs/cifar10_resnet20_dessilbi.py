r"""ResNet-20 on CIFAR-10 with DessiLBI (filter groups).

    python -m tf_dessilbi.train --config=cifar10_resnet20_dessilbi \
        --workdir=runs/cifar10_resnet20 --config.data.data_dir=$HOME/tensorflow_datasets

The ResNet-56 lottery settings on the shallower net (the network Savarese
et al. search tickets on). Not run here: no measured result.
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "cifar10_resnet56_dessilbi.py")
    )
    config.model.name = "resnet20"
    return config

r"""VGG-16-BN on CIFAR-10 with DessiLBI (filter groups).

    python -m tf_dessilbi.train --config=cifar10_vgg16bn_dessilbi \
        --workdir=runs/cifar10_vgg16bn --config.data.data_dir=$HOME/tensorflow_datasets

Not run here (no network, 2 CPU cores): no measured result.
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "cifar10_resnet56_dessilbi.py")
    )
    config.model.name = "vgg16_bn"
    # DessiLBI lottery scripts, VGG-16-BN group: conv λ 0.05 on
    # ‖V_g‖/√(filter size); ≈ 0.05·√(3·3·256) = 2.4 on ‖V_g‖ (mid layers).
    config.dessilbi.lambda_ = 2.4
    return config

r"""ResNet-56 on CIFAR-10 with DessiLBI (filter groups): the lottery setting.

    python -m tf_dessilbi.train --config=cifar10_resnet56_dessilbi \
        --workdir=runs/cifar10_resnet56 --config.data.data_dir=$HOME/tensorflow_datasets

CIFAR-10 from TFDS. Early tickets: the support of Γ at epoch 35 is retrained
from the initial weights (the authors' ``gamma_epoch 35`` of 200). Not run
here (no network, 2 CPU cores): no measured result.
"""

from tf_dessilbi.training import config_lib

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config():
    config = config_lib.base_config()
    # DessiLBI lottery scripts, CIFAR-10 ResNet-56 group (Savarese et al. 2020, authors' code): μ 100,
    # κ 1, conv λ 0.1, Nesterov, wd 1e-4, 200 epochs.
    config.num_epochs = 200
    config.batch_size = 128

    config.data.name = "cifar10"
    config.data.source = "tfds"
    config.data.augment = "cifar"  # pad 4, random crop 32, flip
    config.data.mean = CIFAR10_MEAN
    config.data.std = CIFAR10_STD
    config.data.shuffle_buffer = 50_000

    config.model.name = "resnet56"
    # PyTorch's coupled wd 1e-4 on kernels = Keras L2(5e-5) (gradient 2·l·w).
    config.model.weight_decay = 5e-5

    config.optimizer.name = "dessilbi"
    config.optimizer.learning_rate = 0.1  # lr/schedule: standard CIFAR, ours
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.dessilbi.kappa = 1.0
    config.dessilbi.mu = 100.0
    # The authors threshold ‖V_g‖/√(filter size) at conv λ 0.1; we threshold
    # ‖V_g‖ at λ, so their 0.1 is λ ≈ 0.1·√(3·3·32) ≈ 1.7 for the middle stage.
    config.dessilbi.lambda_ = 1.7
    config.dessilbi.structure = "auto"
    config.schedule.name = "piecewise"
    config.schedule.boundaries = (100, 150)
    config.schedule.decay_factor = 0.1

    config.early_tickets.epochs = (35,)  # "gamma_epoch 35"
    config.early_tickets.rewind = "init"
    return config

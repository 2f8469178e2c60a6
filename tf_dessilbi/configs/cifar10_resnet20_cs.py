r"""ResNet-20 on CIFAR-10: Continuous Sparsification ticket search.

    python -m tf_dessilbi.train --config=cifar10_resnet20_cs \
        --workdir=runs/cifar10_resnet20_cs --config.data.data_dir=$HOME/tensorflow_datasets

Not run here (no network, 2 CPU cores): no measured result.
"""

from tf_dessilbi.training import config_lib

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config():
    config = config_lib.base_config()
    # Savarese et al.'s CIFAR-10 ResNet script (Savarese et al. 2020, authors' code): SGD lr 0.1,
    # Nesterov momentum 0.9, wd 1e-4 on weights only, λ 1e-8, β_final 200,
    # s₀ 0, 3 rounds × 85 epochs, lr ×0.1 at epochs 56 and 71, rewind epoch 2,
    # 5,000 training images held out for validation.
    config.num_epochs = 85  # per round
    config.batch_size = 128

    config.data.name = "cifar10"
    config.data.source = "tfds"
    config.data.train_split = "train[:45000]"
    config.data.eval_split = "train[45000:]"  # the held-out 5,000
    config.data.augment = "cifar"
    config.data.mean = CIFAR10_MEAN
    config.data.std = CIFAR10_STD
    config.data.shuffle_buffer = 45_000

    config.model.name = "resnet20"
    config.model.weight_decay = 5e-5  # = PyTorch wd 1e-4 on kernels only

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.schedule.name = "piecewise"
    config.schedule.boundaries = (56, 71)
    config.schedule.decay_factor = 0.1

    config.gates.enabled = True
    config.gates.granularity = "weight"
    config.gates.gate_init = 0.0
    config.gates.penalty = 1e-8
    config.gates.final_beta = 200.0
    config.gates.per_step = False  # the authors: once per epoch (85-epoch rounds)
    config.gates.rounds = 3
    config.gates.rewind_epoch = 2
    config.outputs.path = False
    return config

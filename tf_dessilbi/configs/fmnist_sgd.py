r"""FMNIST-CNN-S on Fashion-MNIST with SGD: the dense baseline.

    python -m tf_dessilbi.train --config=fmnist_sgd --workdir=runs/fmnist_sgd

Data come offline from Debian's ``dataset-fashion-mnist`` (TFDS otherwise).
Measured with that command (3 epochs, 2 shared CPU cores, 3 min 9 s wall
clock with other jobs running): test accuracy 90.40 %.
"""

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.base_config()
    config.num_epochs = 3  # the 3-epoch budget of the benchmarks (bench/RESULTS.md)
    config.batch_size = 128

    # Data.
    config.data.name = "fashion_mnist"

    # Model: conv 16-32-64 + dense 128 (the benchmark model of bench/).
    config.model.name = "fmnist_cnn_s"

    # Optimizer. lr 0.1 with momentum 0.9 diverges on this Keras model
    # (measured: 10% accuracy); 0.05 is the largest stable value we tried.
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.schedule.name = "constant"

    # Outputs: nothing sparse to record.
    config.outputs.path = False
    return config

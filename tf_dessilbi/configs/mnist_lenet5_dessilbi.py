r"""LeNet-5 on MNIST with DessiLBI: the authors' MNIST example.

    python -m tf_dessilbi.train --config=mnist_lenet5_dessilbi \
        --workdir=runs/mnist_lenet5 --config.data.data_dir=$HOME/tensorflow_datasets

MNIST comes from TFDS (``tfds.load("mnist")``, downloaded on first use).
Not run here (no network): no measured result.
"""

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.base_config()
    # The authors' LeNet/MNIST example (Fu et al. 2020, the authors' public
    # scripts): lr 0.1, κ 1, μ 20, momentum 0.9, no weight decay, lr ×0.1
    # every 20 epochs. The epoch count is ours (not in the authors' scripts).
    config.num_epochs = 60
    config.batch_size = 128

    config.data.name = "mnist"
    config.data.source = "tfds"
    config.data.eval_split = "test"
    config.data.shuffle_buffer = 60_000

    config.model.name = "lenet5"

    config.optimizer.name = "dessilbi"
    config.optimizer.learning_rate = 0.1
    config.dessilbi.kappa = 1.0
    config.dessilbi.mu = 20.0
    config.dessilbi.lambda_ = 1.0  # the base code's hard-coded λ = 1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 0.0
    config.schedule.name = "step"
    config.schedule.step_epochs = 20
    config.schedule.decay_factor = 0.1
    return config

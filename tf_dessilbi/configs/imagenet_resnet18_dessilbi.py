r"""ResNet-18 on ImageNet (ILSVRC-2012) with DessiLBI (filter groups).

    python -m tf_dessilbi.train --config=imagenet_resnet18_dessilbi \
        --workdir=runs/imagenet_resnet18 --config.data.data_dir=/data/tfds \
        --config.strategy=mirrored

ImageNet must be prepared for TFDS first (``imagenet2012`` needs the manual
download). Settings are the standard ResNet-18 recipe (90 epochs, lr 0.1 per
256 images, ×0.1 at 30/60, wd 1e-4) with DessiLBI's κ 1, μ 100: not from the
authors' scripts and not run here (no measured result).
"""

from tf_dessilbi.training import config_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config():
    config = config_lib.base_config()
    config.num_epochs = 90
    config.batch_size = 256

    config.data.name = "imagenet2012"
    config.data.source = "tfds"
    config.data.eval_split = "validation"
    config.data.augment = "imagenet"  # random-resized crop + flip; eval: center crop
    config.data.image_size = 224
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.data.cache = False
    config.data.shuffle_buffer = 16_384

    config.model.name = "resnet18"
    config.model.weight_decay = 5e-5  # = PyTorch wd 1e-4 on kernels

    config.optimizer.name = "dessilbi"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.dessilbi.kappa = 1.0
    config.dessilbi.mu = 100.0
    config.dessilbi.lambda_ = 1.7  # as for the CIFAR ResNets (see there)
    config.schedule.name = "piecewise"
    config.schedule.boundaries = (30, 60)
    config.schedule.decay_factor = 0.1
    config.mixed_precision = "mixed_bfloat16"
    config.outputs.histograms = False
    return config

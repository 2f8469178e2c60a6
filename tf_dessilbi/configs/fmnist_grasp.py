r"""FMNIST-CNN-S pruned at initialization by GraSP (Wang et al., ICLR 2020), 90 % removed.

    python -m tf_dessilbi.train --config=fmnist_grasp --workdir=runs/fmnist_grasp

`tf_dessilbi.sparse.grasp.prepare` draws ``samples_per_class`` training
images of every class, scores S = −w ⊙ (H g) with the logits divided by
T = 200 (H g by double backprop), removes the 90 % highest scores over all
Conv2D/Dense kernels and trains the masked model with the SGD recipe below.

Not yet measured through this command (the CLI's method table is being
wired); measured numbers under the shared protocol: docs/research/reports/SPARSE_COMPARE.md.
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_snip.py"))
    config.method = "grasp"
    config.sparse = ml_collections.ConfigDict()
    config.sparse.sparsity = 0.9
    config.sparse.scope = "global"
    config.sparse.temperature = 200.0  # T of the paper's code
    config.sparse.samples_per_class = 25  # the paper's ~25 per class (10 classes: 250 images)
    config.sparse.score_batch_size = 0  # 0: all samples in one batch
    return config

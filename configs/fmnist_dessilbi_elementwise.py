r"""FMNIST-CNN-S with DessiLBI, every kernel elementwise (lasso, no groups).

    python -m tf_dessilbi.train --config=configs/fmnist_dessilbi_elementwise.py \
        --workdir=runs/fmnist_dessilbi_elementwise

Same hyperparameters as ``fmnist_dessilbi.py``; conv kernels enter the
support weight by weight (thresholded at λ/√fan_in) instead of by filter.
"""

import os

from tf_dessilbi import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "fmnist_dessilbi.py")
    )
    config.optimizer.structure = "elementwise"
    return config

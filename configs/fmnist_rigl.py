r"""FMNIST-CNN-S with RigL (Evci et al. 2020) at 90 % sparsity, ERK densities.

    python -m tf_dessilbi.train --config=configs/fmnist_rigl.py --workdir=runs/fmnist_rigl

`tf_dessilbi.sparse.rigl`: as configs/fmnist_set.py, but the weights grown
are those with the largest |∂L/∂(W ⊙ M)| (dense gradient w.r.t. the effective
weight, one batch every ΔT steps). RigL's defaults: ΔT 100, f₀ 0.3, T_end 75 %
of training, cosine decay. Accuracy under the shared protocol:
bench/MASK_METHODS.md (not measured with this command).
"""

import os

import ml_collections

from tf_dessilbi import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_sgd.py"))
    config.method = "rigl"

    # Sparsity (tf_dessilbi.sparse.rigl.prepare reads these).
    config.sparse = ml_collections.ConfigDict()
    config.sparse.sparsity = 0.9
    config.sparse.distribution = "erdos_renyi_kernel"  # | erdos_renyi | uniform
    config.sparse.first_layer_dense = False
    config.sparse.delta_t = 100  # ΔT
    config.sparse.drop_fraction = 0.3  # f₀
    config.sparse.end_fraction = 0.75  # T_end / training steps
    config.sparse.seed = 0  # initial masks
    config.outputs.path = False
    return config

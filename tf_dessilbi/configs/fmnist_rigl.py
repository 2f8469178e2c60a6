r"""FMNIST-CNN-S with RigL (Evci et al. 2020) at 90 % sparsity, ERK densities.

    python -m tf_dessilbi.train --config=fmnist_rigl --workdir=runs/fmnist_rigl

`tf_dessilbi.sparse.rigl`: as tf_dessilbi/configs/fmnist_set.py, but the weights grown
are those with the largest |∂L/∂(W ⊙ M)| (dense gradient w.r.t. the effective
weight, one batch every ΔT steps). RigL's defaults: ΔT 100, f₀ 0.3, T_end 75 %
of training, cosine decay. Accuracy under the shared protocol:
docs/research/reports/SPARSE_COMPARE.md (not measured with this command).
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    # SET's recipe and sparsity settings; only the growth rule differs.
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_set.py"))
    config.method = "rigl"
    return config

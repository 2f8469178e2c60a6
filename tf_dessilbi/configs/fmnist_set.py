r"""FMNIST-CNN-S with SET (Mocanu et al. 2018) at 90 % sparsity, ERK densities.

    python -m tf_dessilbi.train --config=fmnist_set --workdir=runs/fmnist_set

`tf_dessilbi.sparse.set_`: random masks at ERK layer densities; every ΔT
steps until T_end each layer drops the round(f_t·n_active) active weights of
smallest |W| and grows as many at random (at 0), f_t = f₀/2 (1 + cos(πt/T_end)).
The parameter count never changes. The rest of the recipe is
`tf_dessilbi/configs/fmnist_sgd.py`'s. Accuracy under the shared protocol:
docs/research/reports/SPARSE_COMPARE.md (not measured with this command).
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_sgd.py"))
    config.method = "set"

    # Sparsity (tf_dessilbi.sparse.set_.prepare reads these).
    config.sparse = ml_collections.ConfigDict()
    config.sparse.sparsity = 0.9
    config.sparse.distribution = "erdos_renyi_kernel"  # | erdos_renyi | uniform
    config.sparse.first_layer_dense = False
    config.sparse.delta_t = 100  # ΔT
    config.sparse.drop_fraction = 0.3  # f₀
    config.sparse.end_fraction = 0.75  # T_end / training steps
    config.sparse.seed = 0  # initial masks and random growth
    config.outputs.path = False
    return config

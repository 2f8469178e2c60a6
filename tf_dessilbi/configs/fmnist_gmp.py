r"""FMNIST-CNN-S with gradual magnitude pruning (Zhu & Gupta 2017) to 90 % sparsity.

    python -m tf_dessilbi.train --config=fmnist_gmp --workdir=runs/fmnist_gmp

`tf_dessilbi.sparse.gmp`: every Conv2D/Dense kernel is wrapped in a
`MaskedLayer`; every `frequency` steps from `begin_fraction` to
`end_fraction` of training each layer keeps its round((1 − s_t)·n) weights
of largest |W|, s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³. The rest of the
recipe is `tf_dessilbi/configs/fmnist_sgd.py`'s. Accuracy under the shared protocol:
docs/research/reports/SPARSE_COMPARE.md (not measured with this command).
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_sgd.py"))
    config.method = "gmp"

    # Sparsity (tf_dessilbi.sparse.gmp.prepare reads these).
    config.sparse = ml_collections.ConfigDict()
    config.sparse.sparsity = 0.9  # s_f
    config.sparse.initial_sparsity = 0.0  # s_i
    config.sparse.begin_fraction = 0.0  # t₀ / training steps
    config.sparse.end_fraction = 0.75  # (t₀ + nΔt) / training steps
    config.sparse.frequency = 100  # Δt
    config.sparse.power = 3.0
    config.sparse.scope = "layer"  # layer (TF-MOT) | global
    config.outputs.path = False
    return config

r"""FMNIST-CNN-S pruned at initialization by SNIP (Lee et al., ICLR 2019), 90 % removed.

    python -m tf_dessilbi.train --config=fmnist_snip --workdir=runs/fmnist_snip

`tf_dessilbi.sparse.snip.prepare` scores |g ⊙ w| of the fresh model on
``score_batches`` batches of the training data (g averaged), keeps the top
10 % of all Conv2D/Dense kernel weights (global ranking) and trains the
masked model (`MaskedLayer`, mask fixed) with the SGD recipe below.

Not yet measured through this command (the CLI's method table is being
wired); measured numbers under the shared protocol: docs/research/reports/SPARSE_COMPARE.md.
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_sgd.py"))
    # Optimizer: the benchmarks' protocol (Nesterov, warm-up, cosine to 0).
    config.optimizer.nesterov = True
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0

    # Sparsity method (tf_dessilbi.sparse.snip).
    config.method = "snip"
    config.sparse = ml_collections.ConfigDict()
    config.sparse.sparsity = 0.9  # fraction of kernel weights removed
    config.sparse.scope = "global"  # global | layer
    config.sparse.score_batches = 4  # mini-batches g is averaged over (the paper: 1)
    return config

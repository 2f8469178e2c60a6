r"""FMNIST-CNN-S by iterative magnitude pruning with rewinding, to 90 % removed, with sanity checks.

    python -m tf_dessilbi.train --config=fmnist_imp --workdir=runs/fmnist_imp

`tf_dessilbi.procedures.imp.run`: train the dense model ``num_epochs``
epochs, then rounds of "remove 20 % of the remaining kernel weights by |W|
(global ranking), rewind to the initial weights, retrain ``num_epochs``";
11 prunings reach 90 % (0.8¹¹ < 0.1, the last one stops at 10 % kept).
Then Ma et al.'s sanity checks (NeurIPS 2021) under the same budget: the
ticket against the dense run, the same mask from a random
re-initialization and a random mask with the same layer-wise densities;
``imp.json`` in the workdir holds the verdict. 14 trainings of
``num_epochs`` epochs in all.

Not yet measured through this command (the CLI's method table is being
wired); measured numbers under the shared protocol: docs/research/reports/SPARSE_COMPARE.md.
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_snip.py"))
    config.num_epochs = 3  # epochs of every round (and of each control)
    config.outputs.export = False
    config.method = "imp"
    config.sparse = ml_collections.ConfigDict()
    config.sparse.target_sparsity = 0.9
    config.sparse.rounds = 0  # > 0: a fixed number of prunings instead of the target
    config.sparse.prune_fraction = 0.2  # of the remaining weights, per round
    config.sparse.scope = "global"  # global | layer
    config.sparse.rewind_epoch = 0  # 0: reset to θ₀ (Frankle & Carbin); k: rewind to epoch k
    config.sparse.sanity_checks = True
    config.sparse.tolerance = 0.005  # "matches dense" within half a point
    config.sparse.milestones = (0.8,)  # a round also stops exactly at 80 %: a ticket there too
    config.sparse.sanity_at = ()  # milestones that get the two controls as well
    return config

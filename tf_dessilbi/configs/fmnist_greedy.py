r"""FMNIST-CNN-S pruned structurally by greedy forward selection (Ye et al., ICML 2020).

    python -m tf_dessilbi.train --config=fmnist_greedy --workdir=runs/fmnist_greedy

`tf_dessilbi.procedures.greedy.run`: train the dense model ``num_epochs``
epochs; then for conv1, conv2, conv3 and fc1 in turn (the logits layer is
kept) grow the unit set from empty, each step adding the best of 50 sampled
filters/neurons on a training mini-batch, until the mini-batch loss is
within 0.02 of the layer-whole network's; then fine-tune
``fine_tune_epochs`` epochs. ``greedy.json`` holds the units kept per layer
and ``mask.npz`` the structural unit mask (for ``shrink``).

Not yet measured through this command (the CLI's method table is being
wired); measured numbers under the shared protocol: docs/research/reports/PRUNE_METHODS.md.
"""

import os

import ml_collections

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_snip.py"))
    config.outputs.export = False
    config.method = "greedy"
    config.sparse = ml_collections.ConfigDict()
    config.sparse.num_candidates = 50  # units sampled per step
    config.sparse.tolerance = 0.02  # stop once L(S) ≤ L(full) + tolerance
    config.sparse.unit_budget = 1.0  # at most this fraction of each layer's units
    config.sparse.fine_tune_epochs = 1
    return config

r"""FMNIST-CNN-S with DessiLBI under the benchmarks' protocol at E = 3 (the accuracy part of bench.run).

    python -m tf_dessilbi.train --config=fmnist_dessilbi_protocol_e3 \
        --workdir=runs/fmnist_dessilbi_protocol_e3

The protocol of ``tf_dessilbi/configs/fmnist_dessilbi_protocol.py`` at the 3-epoch budget
of the accuracy part of ``python -m bench.run``: conv filters as groups and
dense kernels elementwise (``structure="auto"``, so the accuracy-vs-sparsity
comparison counts every kernel), ``init_norm`` λ 0.5, W* trained on the
support of the end of the warm-up for the last 2 epochs.

Expected result (the accuracy part of ``python -m bench.run``, 3 seeds):
W* 90.30 ± 0.32 % with 34.7 % of the weights, against SGD 92.07 ± 0.24 %.
How the recipe was chosen: docs/research/configs.md.
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "fmnist_dessilbi_protocol.py"))
    config.num_epochs = 3
    config.dessilbi.structure = "auto"
    config.dessilbi.lambda_ = 0.5
    config.fork.units = 0.0
    config.fork.trim = False
    config.fork.last_epochs = 2
    return config

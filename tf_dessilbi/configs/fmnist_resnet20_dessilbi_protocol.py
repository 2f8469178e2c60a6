r"""ResNet-20 (BN, residual) on Fashion-MNIST with DessiLBI filter groups, under the protocol at E = 3.

    python -m tf_dessilbi.train --config=fmnist_resnet20_dessilbi_protocol \
        --workdir=runs/fmnist_resnet20_dessilbi_protocol

ResNet-20 on 28×28×1 (`tf_dessilbi.models.resnet20`) under the protocol of
`bench/protocol.py` at the shorter budget of E = 3 epochs. Each conv kernel's
output filters are the groups, with per-filter λ (``unit_init_norm``,
λ_g = 0.45·‖W_g(0)‖); the path runs until supp Γ holds half of the 784
filters, trimmed to exactly 392, then W* is trained on that support with the
coupling off. W* drops a filter together with its BN channel.

Expected result with the command above: dense W = W* 91.72 %, 392/784 filters
in the support; the export is shrunk to 0.42× the parameters and 0.69× the
MACs (channels joined by a residual Add leave only together: 579 filters
stay). At the protocol's full budget (``--config.num_epochs=10``, seeds 0–2,
docs/research/reports/PARITY_RESNET20_E10.md): W* 93.07 ± 0.26 % against SGD
92.91 ± 0.36 % with 392/784 filters out; with
``--config.fork.dependency_groups=True`` (392 filters physically removed)
92.87 ± 0.18 %.

How the recipe was found: docs/research/configs.md.
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "fmnist_dessilbi_protocol.py"))
    config.model.name = "resnet20"
    config.num_epochs = 3
    config.dessilbi.structure = "filter"
    config.dessilbi.lambda_scaling = "unit_init_norm"
    config.dessilbi.lambda_ = 0.45
    config.fork.units = 0.5
    config.fork.trim = True
    config.fork.last_epochs = 0
    return config

r"""The path of ``tf_dessilbi/configs/fmnist_dessilbi_protocol.py`` run to the end: DessiLBI's dense W.

    python -m tf_dessilbi.train --config=fmnist_dessilbi_protocol_path \
        --workdir=runs/fmnist_dessilbi_protocol_path

Fu et al. report two models of one path: the coupled iteration's dense W at
the end of training, and the support of an early Γ retrained (W*). The
protocol config is the second. It runs this config's steps until supp Γ holds
half of the conv filters, then trains W* on that support with the coupling
off for the rest of the budget. This config is the first: the same settings
(protocol, λ, μ, κ, structure, seed) with the fine-tune off, so the coupled
iteration runs on to the end of the budget and gives dense W. Until the
protocol config's fine-tune starts, both take the same steps, to the bit
(`bench/parity.py` checks the running train loss of every step before the
fork: ``parity_report._shared_prefix``). A test keeps the two configs equal
outside the fine-tune's fields.

Measured with the command above (2026-12-07, 2 shared CPU cores of an AMD
EPYC with AVX-512, 8.8 min beside other jobs): dense W 93.07 % with all
112 conv filters in supp Γ at the end (the protocol config's W*: 92.56 %
with 56). `bench/PARITY_E10_FORK.md` has both over 5 seeds against SGD.
"""

import os

from tf_dessilbi.training import config_lib

#: The fields of the protocol config that start or shape its fine-tune, and their "off" values.
FINETUNE_OFF = {"finetune_units": 0.0, "finetune_trim": False, "finetune_epochs": 0,
                "finetune_weights": 0.0, "finetune_groups": False, "finetune_round_to": 1,
                "finetune_layer_units": ""}


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__),
                                                 "fmnist_dessilbi_protocol.py"))
    for field, value in FINETUNE_OFF.items():
        setattr(config.optimizer, field, value)
    return config

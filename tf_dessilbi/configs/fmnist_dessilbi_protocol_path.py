r"""The path of ``tf_dessilbi/configs/fmnist_dessilbi_protocol.py`` run to the end: DessiLBI's dense W.

    python -m tf_dessilbi.train --config=fmnist_dessilbi_protocol_path \
        --workdir=runs/fmnist_dessilbi_protocol_path

Fu et al. report two models of one path: the coupled iteration's dense W at
the end of training, and W*, the support of an early Γ retrained. This config
gives the first: the protocol config's settings with the fine-tune off. Until
the protocol config's fine-tune starts, both take the same steps, to the bit.
A test keeps the two configs equal outside the fine-tune's fields.

Expected result with the command above: dense W 93.07 % with all 112 conv
filters in supp Γ at the end. Over seeds 0–4 with the benchmark's data order
(docs/research/reports/PARITY_E10_FORK.md): dense W 92.98 ± 0.19 % against SGD
93.09 ± 0.10 %.
"""

import os

from tf_dessilbi.training import config_lib

#: The fields of the protocol config that start or shape its fork, and their "off" values.
FINETUNE_OFF = {"fork.units": 0.0, "fork.trim": False, "fork.last_epochs": 0,
                "fork.weights": 0.0, "fork.dependency_groups": False, "fork.round_to": 1}


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__),
                                                 "fmnist_dessilbi_protocol.py"))
    for field, value in FINETUNE_OFF.items():
        section, name = field.split(".")
        config[section][name] = value
    return config

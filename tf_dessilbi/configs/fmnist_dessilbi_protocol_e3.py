r"""FMNIST-CNN-S with DessiLBI under the benchmarks' protocol at E = 3 (the accuracy part of bench.run).

    python -m tf_dessilbi.train --config=fmnist_dessilbi_protocol_e3 \
        --workdir=runs/fmnist_dessilbi_protocol_e3

The protocol of `bench/protocol.py` (inputs normalized by the Fashion-MNIST
mean/std, Nesterov 0.9, peak lr 0.05, 1 warm-up epoch then cosine to 0), as
in ``tf_dessilbi/configs/fmnist_dessilbi_protocol.py``, at the 3-epoch budget that the
accuracy part of ``python -m bench.run`` (`bench.accuracy`: SGD, DessiLBI,
its early tickets, a CS ticket and TF-MOT at the same sparsities, 3 seeds)
fits into on 2 CPU cores. The E = 10 recipe does not carry over. The
support reaches 49 % of the filters just after the warm-up, and 2 epochs
are too few to retrain it. This recipe is the best one `bench/parity.py`
measured at E = 3 with the dense layers coupled too (`bench/PARITY.md`,
"Every recipe measured"):

* ``structure="auto"`` — conv filters as groups, dense kernels elementwise,
  so the accuracy-vs-sparsity comparison counts every kernel;
* ``lambda_scaling="init_norm"``, λ 0.5 — see the E = 10 config;
* ``finetune_epochs=2`` — W* trained on the support of the end of the
  warm-up (epoch 1) for the last 2 epochs, with the coupling off.

Measured by `bench/parity.py` (seed 0, the benchmark's data order): dense W
= W* 90.56 %, 46/112 filters, 35.0 % of the coupled weights, against SGD
92.05 ± 0.18 % (3 seeds). The same recipe with the dense layers uncoupled
("filter", 3 seeds): 90.82 ± 0.31 % with 38/112 filters. The accuracy part
of ``python -m bench.run`` (the trainer's input pipeline and shuffles, 3
seeds, 2026-12-02): W* 90.30 ± 0.32 % with 34.7 % of the weights and 48 / 38 /
40 of 112 filters, against SGD 92.07 ± 0.24 %.
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "fmnist_dessilbi_protocol.py"))
    config.num_epochs = 3
    config.optimizer.structure = "auto"
    config.optimizer.lambda_ = 0.5
    config.optimizer.finetune_units = 0.0
    config.optimizer.finetune_trim = False
    config.optimizer.finetune_epochs = 2
    return config

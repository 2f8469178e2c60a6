r"""FMNIST-CNN-S with DessiLBI under the benchmarks' protocol (warm-up + cosine).

    python -m tf_dessilbi.train --config=configs/fmnist_dessilbi_protocol.py \
        --workdir=runs/fmnist_dessilbi_protocol

The recipe `bench/parity.py` found for a decaying learning rate (the
protocol of `bench/protocol.py`: inputs normalized by the Fashion-MNIST
mean/std, Nesterov 0.9, peak lr 0.05, 1 warm-up epoch then cosine to 0,
3 epochs). What each choice does, measured on seed 0 (test accuracy of the
final model; SGD under the same protocol 92.04 %; every run in
`bench/PARITY.md`, "Every recipe measured"):

* the paper's iteration with this schedule stalls: V moves at α/μ, and by
  the time α decays no conv filter has crossed λ = 1.5 (1/112 at the end,
  W* at chance, dense W 90.78 %);
* ``lambda_scaling="init_norm"`` — λ in units of each layer's RMS initial
  unit norm. With ``"fan_in"`` a conv1 filter had to grow ~3× its initial
  norm to enter and an fc1 weight ~0.7×; with ``init_norm`` one λ is as
  selective in every layer;
* ``finetune_epochs=2`` — supp Γ is fixed after the warm-up epoch and the
  last two epochs train W* on it with the coupling off (`WStarFinetune`,
  the paper's retraining inside the same budget). The coupling itself
  costs accuracy at this budget (dense W 91.25 % with only the conv
  kernels coupled, against 92.04 %); the decoupled fine-tune recovers it
  (91.87 % with every filter kept, λ 0.4);
* ``structure="filter"`` — conv filters as groups, the dense layers
  uncoupled: coupling fc1 and the logits too ("auto") cost 0.5 pt at the
  same λ (90.56 % vs 91.05 %);
* λ sets the width: 0.45 → 95/112 filters, 91.85 %; 0.47 → 70/112,
  91.51 %; 0.5 → 43/112, 91.05 %. λ = 0.5 is the value that removes
  ≥ 50 % of the filters;
* ``SteadyPathSpeed`` (μ ∝ α once α peaks, so the path does not stall)
  is not used here: with the support fixed after the warm-up there is no
  decay phase left for it to speed up, and with a one-epoch fine-tune
  (support fixed at 2/3 of the budget) it reached 91.12 % at 72/112.

Measured with the command above (2026-12-01, 2 shared CPU cores; the CLI's
per-pass seeded shuffles, not the benchmark's order): test accuracy dense W
= W* 91.00 %; filters in the support conv1 16/16, conv2 13/32, conv3 13/64
(42/112); the exported model is shrunk: parameters 426,122 → 86,533
(0.20×), MACs 7.74 M → 1.96 M (0.25×; fc1 stays dense but loses the inputs
of the removed conv3 filters). `bench/parity.py` with this recipe, 3 seeds:
W* 90.82 ± 0.31 % at 38/112 filters, SGD 92.05 ± 0.18 %: the parity target
(W* ≥ SGD − 0.5 with ≥ 50 % of the filters out) is not met at this 3-epoch
budget. The same recipe with other structures (seed 0): ``auto`` 90.56 %
(46/112), ``elementwise`` 90.77 % (weights removed in every filter, 112/112
keep some), ``filter_neuron`` dead (no fc1 neuron had entered by the end of
the warm-up: with ``init_norm`` a neuron of 3,136 inputs grows more slowly
relative to its initial norm than a conv filter).
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_dessilbi.py"))
    # The protocol (bench/protocol.py).
    config.data.mean = (0.2860,)
    config.data.std = (0.3530,)
    config.optimizer.nesterov = True
    config.optimizer.learning_rate = 0.05
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.schedule.final_fraction = 0.0
    # The recipe (bench/parity.py: filter, init+ft2+lam0.5).
    config.optimizer.structure = "filter"
    config.optimizer.lambda_scaling = "init_norm"
    config.optimizer.lambda_ = 0.5
    config.optimizer.mu = 20.0
    config.optimizer.kappa = 1.0
    config.optimizer.finetune_epochs = 2
    config.optimizer.steady_path = False
    return config

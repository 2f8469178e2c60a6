r"""FMNIST-CNN-S with DessiLBI under the benchmarks' protocol (warm-up + cosine, 10 epochs).

    python -m tf_dessilbi.train --config=configs/fmnist_dessilbi_protocol.py \
        --workdir=runs/fmnist_dessilbi_protocol

The recipe `bench/parity.py` found for a decaying learning rate (the
protocol of `bench/protocol.py`: inputs normalized by the Fashion-MNIST
mean/std, Nesterov 0.9, peak lr 0.05, 1 warm-up epoch then cosine to 0) at
the issue's budget of E = 10 epochs. Every run is in `bench/PARITY_E10_TRIM.md`
(this recipe, 5 seeds), `bench/PARITY_E10.md` (E = 10, the untrimmed
``finetune_units=0.49`` and the tuning record) and `bench/PARITY.md` (E = 3,
"Every recipe measured"); what each choice does:

* the paper's iteration with this schedule stalls: V moves at α/μ, and by
  the time α decays no conv filter has crossed λ = 1.5 (E = 3: 1/112 at
  the end, W* at chance, dense W 90.78 %);
* ``lambda_scaling="init_norm"`` — λ in units of each layer's RMS initial
  unit norm. With ``"fan_in"`` a conv1 filter had to grow ~3× its initial
  norm to enter and an fc1 weight ~0.7×; with ``init_norm`` one λ is as
  selective in every layer. Per filter (``"unit_init_norm"``, λ_g = λ·‖W_g(0)‖,
  the ResNet-20 recipe's) is no better here: 92.77 ± 0.12 % against 92.82 ±
  0.16 % with the same 56 filters (seeds 0–2, `bench/PARITY_E10_UNITINIT.md`):
  without BN, a filter's norm matters to the loss, so ‖V_g‖ does not simply
  follow ‖W_g(0)‖;
* ``structure="filter"`` — conv filters as groups, the dense layers
  uncoupled: coupling fc1 and the logits too ("auto") cost 0.5 pt at the
  same λ (E = 3: 90.56 % vs 91.05 %);
* ``finetune_units=0.5``, ``finetune_trim=True`` — the path runs until
  supp Γ holds half of the filters, then W* is trained on that fixed
  support with the coupling off for the rest of the budget
  (`WStarFinetune(units_fraction=..., trim=True)`, the paper's retraining
  inside one budget). Several filters can enter in the step that crosses
  the fraction: untrimmed, ``0.49`` kept 55–57 of 112 (57 on seed 4 and in
  the CLI: 49 % out, under the issue's 50 %); ``trim`` drops those that
  entered last (smallest ‖V_g‖/λ_l), so every seed keeps exactly 56. At a
  fixed λ the filters in the support at a given step differ by 20 % between
  seeds (E = 3, λ 0.5, end of the warm-up: 43 / 36 / 35) and between λ 0.45
  and 0.5 they drop from 95 to 43, so fixing the step (``finetune_epochs``)
  fixes neither the width nor the accuracy; the fraction fixes the width;
* λ = 0.5 sets how fast the path moves: the support reaches 49 % of the
  filters just after the warm-up (step 476–480 of 4,680), leaving ~9 epochs to
  train W*. λ 2 reaches it at step 1931 and gives 92.61 % (seed 0; λ 0.5:
  92.70 %); λ 0.3 reaches it in the warm-up (step 354) and gives 92.51 %;
  λ 1 reaches it at step 841 (18 %) and gives 92.78 ± 0.07 % on seeds 0–2
  against this recipe's 92.82 ± 0.16 % (`bench/PARITY_E10_LATE.md`): a
  later support does not raise W*;
* μ = 20 (ν in the paper), the coupling strength: during the path the
  coupling decays W toward Γ by κα/ν a step (2.5·10⁻³ at the peak lr), a
  strong extra weight decay on the filters outside the support. A weaker
  coupling at the same path speed (V moves by (α/ν)(W − Γ), so ν·λ fixes
  when a filter enters) selects the same widths but does not raise W*:
  μ 40 λ 0.25 −0.32 and μ 100 λ 0.1 −0.41 against −0.31 for μ 20 λ 0.5
  (seeds 0–2, all on one machine, `bench/PARITY_E10_MU.md`). Keeping the
  coupling on during the fine-tune holds W* back: from the same 43-filter
  support fixed at step 468, 92.35 % with it on (``cft9``) against 92.53 %
  off (``ft9``; seed 0, `bench/PARITY_E10_ROUND.md`);
* where the 56 filters sit: the path puts them 16/17/23 (conv1/2/3). Of
  eight 56-filter allocations trained from scratch, 12/16/28 is the best
  (92.69 ± 0.08 % against 92.40 ± 0.08 % for 16/17/23), but the support
  set to 12/16/28 when the fine-tune starts (the filters of largest
  ‖V_g‖/λ_g, ``WStarFinetune(layer_units=...)``) gives 92.79 ± 0.03 %
  against this recipe's 92.82 ± 0.16 % (seeds 0–2,
  `bench/PARITY_E10_WIDTHS.md`): the 56-filter networks end at ~92.8 %
  whatever the allocation, and the fraction does not move it either
  (``u0.4`` 45 filters 92.65 ± 0.24 %, ``u0.6`` 68 filters 92.74 ± 0.09 %,
  `bench/PARITY_E10_FRACTIONS.md`). Rounding each conv up to a multiple of
  16 filters at the fine-tune's start (``finetune_round_to=16``: 16/32/32
  or 16/16/32, 64–80 filters) gives 93.05 ± 0.05 %, −0.07, and 16/32/32
  serves at 1.04–1.12× the latency of 16/17/23 at batch 128 on this CPU
  (`bench/PARITY_E10_ROUND.md`, `bench/ROUND_TO.md`), but keeps 57–71 % of
  the filters: a user's choice, not this config's default, which keeps
  the issue's 50 % out (16/16/16, the fastest widths there, gives 92.53 ±
  0.06 %, −0.59);
* the budget: at E = 3 no recipe met parity with half the filters out
  (best W* 90.82 ± 0.31 % at 38/112 against SGD 92.05 ± 0.18 %), and
  56-filter architectures trained from scratch reach 91.22–91.26 % there.
  A longer one widens the gap instead of closing it: at E = 15 this
  recipe gives 92.50 ± 0.03 % against SGD 93.08 ± 0.04 % (−0.58, seeds
  0–2, `bench/PARITY_E15.md`): SGD gains nothing over E = 10 on this data
  (no augmentation) and the 56-filter network loses 0.3.

Measured with the command above (2026-12-06, 2 shared CPU cores, ~7 min;
the CLI's per-pass seeded shuffles, not the benchmark's order): test
accuracy dense W = W* 92.78 %, exactly 56/112 filters in the support
(conv1 16/16, conv2 18/32, conv3 22/64: 50 % out); the exported model is
shrunk: parameters 426,122 → 145,758 (0.34×), MACs 7.74 M → 2.98 M (0.39×).
(The untrimmed 0.49 gave 92.89 % with 57/112 here on 2026-12-01: three
filters entered at the step that crossed 49 %.) `bench/parity.py` with this
recipe (`bench/PARITY_E10_TRIM.md`, the benchmark's data order): dense W =
W* 92.82 ± 0.16 % on the protocol's seeds 0, 1, 2 against SGD 93.12 ±
0.10 % (−0.30: 27,847 against 27,937 correct test images), and 92.71 ±
0.21 % against 93.09 ± 0.10 % over seeds 0–4 (−0.38); 56/112 filters on
every seed. On another CPU (AMD EPYC without AVX-512, 2026-12-06: oneDNN's
kernels differ, so every run does) the same seeds give 92.78 ± 0.17 %
against SGD 93.09 ± 0.23 % (−0.31, `bench/PARITY_E10_MU.md`): the dense-W
line is met on one CPU and missed by four test images on the other.
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
    config.num_epochs = 10
    # The recipe (bench/parity.py: filter, init+lam0.5+u0.5+trim).
    config.optimizer.structure = "filter"
    config.optimizer.lambda_scaling = "init_norm"
    config.optimizer.lambda_ = 0.5
    config.optimizer.mu = 20.0
    config.optimizer.kappa = 1.0
    config.optimizer.finetune_units = 0.5
    config.optimizer.finetune_trim = True
    config.optimizer.finetune_epochs = 0
    config.optimizer.steady_path = False
    return config

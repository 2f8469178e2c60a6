r"""FMNIST-CNN-S with DessiLBI under the benchmarks' protocol (warm-up + cosine, 10 epochs).

    python -m tf_dessilbi.train --config=fmnist_dessilbi_protocol \
        --workdir=runs/fmnist_dessilbi_protocol

The recipe `bench/parity.py` found for a decaying learning rate (the
protocol of `bench/protocol.py`: inputs normalized by the Fashion-MNIST
mean/std, Nesterov 0.9, peak lr 0.05, 1 warm-up epoch then cosine to 0) at
the issue's budget of E = 10 epochs. Fu et al. report two models of one
path: the coupled iteration's dense W at the end of training, and W*, the
support of an early Γ retrained. This config gives W*: it runs the path
until supp Γ holds half of the conv filters, then trains W* on that support
for the rest of the budget. ``tf_dessilbi/configs/fmnist_dessilbi_protocol_path.py`` is
the same config with the fine-tune off: the path runs on to the end and
gives dense W. The two take the same steps until the fork. Every run is in
`bench/PARITY_E10_FORK.md` (this recipe and its path, 5 seeds),
`bench/PARITY_E10_TRIM.md` (the previous recipe, μ 20 λ 0.5, 5 seeds),
`bench/PARITY_E10.md` (E = 10, the untrimmed ``finetune_units=0.49`` and the
tuning record) and `bench/PARITY.md` (E = 3, "Every recipe measured"). What
each choice does (the scaling, structure, fraction, allocation, rounding and
budget were tuned with μ 20 λ 0.5, the previous recipe; μ 40 λ 0.25 moves
the path at the same speed with a weaker coupling, see its bullet):

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
* μ = 40, λ = 0.25 (ν and λ in the paper). V moves by (α/ν)(W − Γ), so
  ν·λ (10 here) sets when a filter enters; the support reaches half of the
  filters just after the warm-up (step 445–448 of 4,680), leaving ~9 epochs
  to train W*. During the path the coupling also decays W toward Γ by κα/ν
  a step, an extra weight decay on the filters outside the support, and
  the dense W of the path run to the end pays for it: with μ 20 λ 0.5
  (the previous recipe) it is 92.72 % on seed 0 against SGD 93.01 %, with
  μ 20 λ 2 92.82 ± 0.07 % against 93.12 ± 0.10 % (−0.30, seeds 0–2); with
  μ 40 λ 0.25 it is 93.03 ± 0.18 % (−0.10, seeds 0–2), and μ 100 λ 0.1
  gives 92.93 % on seed 0. W* of the fork hardly moves with ν: 92.74 ±
  0.18 % at μ 40 against 92.82 ± 0.16 % at μ 20 on the same seeds and CPU
  (−0.38 and −0.30; on a second CPU μ 40 λ 0.25 −0.32, μ 100 λ 0.1 −0.41,
  `bench/PARITY_E10_MU.md`). μ 40 is the weakest coupling measured whose
  W* stays well inside −0.5 while dense W meets −0.3. The timing of the
  support matters little: at μ 20, λ 2 reaches half of the filters at step
  1931 and gives W* 92.61 % (seed 0; λ 0.5: 92.70 %), λ 0.3 reaches it in
  the warm-up (step 354) and gives 92.51 %, and λ 1 at step 841 (18 %)
  gives 92.78 ± 0.07 % on seeds 0–2 (`bench/PARITY_E10_LATE.md`). Keeping
  the coupling on during the fine-tune holds W* back: from the same
  43-filter support fixed at step 468, 92.35 % with it on (``cft9``)
  against 92.53 % off (``ft9``; seed 0, `bench/PARITY_E10_ROUND.md`);
* where the 56 filters sit: the path puts them 16/17/23 (conv1/2/3). Of
  eight 56-filter allocations trained from scratch, 12/16/28 is the best
  (92.69 ± 0.08 % against 92.40 ± 0.08 % for 16/17/23), but the support
  set to 12/16/28 when the fine-tune starts (the filters of largest
  ‖V_g‖/λ_g, ``WStarFinetune(layer_units=...)``) gives 92.79 ± 0.03 %
  against the μ 20 recipe's 92.82 ± 0.16 % (seeds 0–2,
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
  A longer one widens the gap instead of closing it: at E = 15 the μ 20
  recipe gives 92.50 ± 0.03 % against SGD 93.08 ± 0.04 % (−0.58, seeds
  0–2, `bench/PARITY_E15.md`): SGD gains nothing over E = 10 on this data
  (no augmentation) and the 56-filter network loses 0.3.

Measured with the command above (2026-12-07, 2 shared CPU cores of an AMD
EPYC with AVX-512, 7.7 min beside other jobs; the CLI's per-pass seeded
shuffles, not the benchmark's order): test accuracy dense W = W* 92.56 %,
exactly 56/112 filters in the support from step 446 on (conv1 15/16, conv2
17/32, conv3 24/64: 50 % out); the exported model is shrunk: parameters
426,122 → 158,104 (0.37×), MACs 7.74 M → 2.78 M (0.36×). The path config
(``fmnist_dessilbi_protocol_path.py``, the same machine and day) gives dense
W 93.07 % with all 112 filters in supp Γ at the end. `bench/parity.py`
(`bench/PARITY_E10_FORK.md`, the benchmark's data order): W* 92.74 ± 0.14 %
with 56/112 filters on every seed against SGD 93.09 ± 0.10 % over seeds 0–4
(−0.35; −0.38 on the protocol's seeds 0–2), and the path's dense W 92.98 ±
0.19 % (−0.11; −0.10 on seeds 0–2): both of the issue's lines hold, the
two runs' losses identical to the bit up to the fork. The previous recipe (μ 20
λ 0.5, `bench/PARITY_E10_TRIM.md`) gave dense W = W* 92.82 ± 0.16 % on seeds
0–2 against SGD 93.12 ± 0.10 % (−0.30, exactly on the dense-W line), −0.38
over seeds 0–4, and −0.31 on another CPU (`bench/PARITY_E10_MU.md`): with
the fine-tune it has no dense W of its own, so its W* had to meet −0.3.
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
    # The recipe (bench/parity.py: filter, init+mu40+lam0.25+u0.5+trim; its path, dense W:
    # init+mu40+lam0.25, tf_dessilbi/configs/fmnist_dessilbi_protocol_path.py).
    config.optimizer.structure = "filter"
    config.optimizer.lambda_scaling = "init_norm"
    config.optimizer.lambda_ = 0.25
    config.optimizer.mu = 40.0
    config.optimizer.kappa = 1.0
    config.optimizer.finetune_units = 0.5
    config.optimizer.finetune_trim = True
    config.optimizer.finetune_epochs = 0
    config.optimizer.steady_path = False
    return config

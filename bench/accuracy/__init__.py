"""Accuracy vs sparsity on Fashion-MNIST (FMNIST-CNN-S), several seeds.

Every contender trains for the same epochs with the same learning-rate
schedule (from ``tf_dessilbi/configs/fmnist_dessilbi_protocol_e3.py`` when present, the
protocol of `bench.protocol` at E = 3, else
`tf_dessilbi.training.config_lib.base_config()`), built by the trainer's own
`tf_dessilbi.training.components.build_optimizer`, on the trainer's input pipeline:

* dense SGD (momentum as in the config);
* DessiLBI: test accuracy of the dense W and of W* (W on supp Γ) after every
  epoch, the support size sampled along the run (claim 1 of issue 6);
* early tickets: supp(Γ) at an early epoch retrained from the initial
  weights with SGD (`tf_dessilbi.procedures.early_tickets.retrain_ticket`);
* a Continuous Sparsification ticket (`tf_dessilbi.TicketSearch`);
* TF-MOT `prune_low_magnitude` (tf_keras, in its own process) with a
  PolynomialDecay schedule to the sparsity of each of ours, and to 90 %.

    python -m bench.accuracy [--quick] [--json out.json] [--seeds 3]

Modules: `config` (the config, learning-rate table), `runs` (SGD / DessiLBI
fits with the recorder, early tickets), `cs` (the CS ticket), `tfmot` (the
TF-MOT worker process), `summary` (mean ± std over seeds, config drift),
`report` (markdown and figures).
"""

from __future__ import annotations

import argparse
import json
import time

import bench
from bench.accuracy import cs, runs, tfmot
from bench.accuracy.config import early_ticket_epochs, load_config, log
from bench.accuracy.report import format_mean_std, path_markdown, plot, to_markdown
from bench.accuracy.summary import config_drift, mean_std, summarize

bench.quiet_tf()

__all__ = [
    "config_drift", "format_mean_std", "load_config", "main", "mean_std", "path_markdown",
    "plot", "run", "run_seed", "summarize", "to_markdown",
]


def run_seed(config, seed: int) -> dict:
    """SGD, DessiLBI, its early tickets and the CS ticket for one seed.

    Returns:
        The seed's results, with ``"tfmot_spec"`` (what `tfmot.run_all`
        trains at the sparsity of each of ours, and at 90 %).
    """
    import keras

    from tf_dessilbi.training import input_pipeline

    config = config.copy_and_resolve_references()
    config.seed = seed
    data = input_pipeline.get_datasets(config.data, config.batch_size, config.eval_batch_size, seed)
    steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    tickets = early_ticket_epochs(config)
    out = {"seed": seed, "steps_per_epoch": steps_per_epoch}

    _, _, rec = runs.fit(config, data, steps_per_epoch, dessilbi=False)
    out["sgd"] = {"acc": rec.out["acc_w"], "time_s": rec.out["time_s"]}
    log(f"seed {seed}: SGD {out['sgd']['acc']}")
    keras.utils.clear_session()

    model, initial, rec = runs.fit(config, data, steps_per_epoch, dessilbi=True,
                                   ticket_epochs=tickets)
    out["dessilbi"] = {k: v for k, v in rec.out.items() if k != "epoch_weights"}
    masks = rec.masks
    log(f"seed {seed}: DessiLBI W {out['dessilbi']['acc_w']} W* {out['dessilbi']['acc_w_star']} "
        f"kept {[round(x['weight_fraction'], 5) for x in out['dessilbi']['support']]}")
    del model
    keras.utils.clear_session()

    out["early_tickets"] = {}
    for epoch in tickets:
        # supp Γ frozen by a W* fine-tune repeats an earlier ticket: the seeded retrain would too.
        same = next((e for e in tickets if e < epoch and masks[e] == masks[epoch]), None)
        if same is not None:
            out["early_tickets"][str(epoch)] = dict(out["early_tickets"][str(same)],
                                                    same_support_as=same)
            log(f"seed {seed}: early ticket {epoch}: the support of epoch {same}, not retrained")
            continue
        out["early_tickets"][str(epoch)] = runs.retrain_early_ticket(
            config, data, steps_per_epoch, initial, masks[epoch], epoch)
        keras.utils.clear_session()

    out["cs"] = cs.cs_ticket(config, data, steps_per_epoch)
    log(f"seed {seed}: CS {out['cs'].get('acc', out['cs'].get('error'))} "
        f"kept {out['cs'].get('weight_fraction')}")
    keras.utils.clear_session()

    # TF-MOT at the sparsity of each of ours (+ 90 %): trained later, in a tf_keras process.
    targets = {"W* (end)": out["dessilbi"]["support"][-1]["weight_fraction"]}
    for epoch, r in out["early_tickets"].items():
        targets[f"early ticket (epoch {epoch})"] = r["weight_fraction"]
    if "weight_fraction" in out["cs"]:
        targets["CS ticket"] = out["cs"]["weight_fraction"]
    targets["90 % sparsity (reference)"] = 0.10
    out["tfmot_spec"] = tfmot.make_spec(config, steps_per_epoch, targets)
    return out


def run(quick: bool = False, seeds: int = 0) -> dict:
    """The whole benchmark (2 seeds on tiny data when `quick`, else 3 on all of it)."""
    config, source = load_config(quick)
    seeds = seeds or (2 if quick else 3)
    t0 = time.time()
    per_seed = [run_seed(config, s) for s in range(seeds)]
    tfmot.run_all(per_seed)
    return {
        "config_source": source,
        "config": {
            "num_epochs": config.num_epochs,
            "batch_size": config.batch_size,
            "optimizer": config.optimizer.to_dict(),
            "schedule": config.schedule.to_dict(),
            "early_ticket_epochs": early_ticket_epochs(config),
            "train_limit": config.data.train_limit,
            "eval_limit": config.data.eval_limit,
        },
        "seeds": per_seed,
        "summary": summarize(per_seed),
        "time_s": time.time() - t0,
    }


def main(argv=None):
    """``python -m bench.accuracy``: runs, prints the markdown, writes ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--tfmot-worker", help=argparse.SUPPRESS)
    parser.add_argument("--add-ticket-epochs", default="",
                        help="comma-separated epochs: add early tickets to the results in --json")
    args = parser.parse_args(argv)
    if args.add_ticket_epochs:
        runs.add_ticket_epochs(args.json, [int(e) for e in args.add_ticket_epochs.split(",")])
        return
    if args.tfmot_worker:
        results = tfmot.tfmot_worker(args.tfmot_worker)
    else:
        results = run(args.quick, args.seeds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.tfmot_worker:
        print(to_markdown(results))
        print(path_markdown(results))

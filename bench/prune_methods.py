"""Pruning methods under the shared protocol: SNIP, GraSP, IMP (+ sanity checks), greedy selection.

    python -m bench.prune_methods --epochs 1 --seeds 0            # what PRUNE_METHODS.md reports
    python -m bench.prune_methods                                 # the protocol: 10 epochs, seeds 0,1,2

Every contender trains FMNIST-CNN-S under `bench.protocol` (same data order
per seed, SGD Nesterov 0.9, peak lr 0.05, warm-up 1 epoch, cosine to 0 over
E epochs):

* dense: E epochs (the baseline; its weights feed greedy selection);
* SNIP / GraSP at each ``--sparsities``: scored on the fresh model (SNIP:
  ``--snip-batches`` batches of 128; GraSP: 25 images per class, T = 200),
  then E epochs with the mask fixed;
* IMP: global magnitude pruning of ``--imp-fraction`` of the remaining
  weights per round, reset to θ₀, E epochs per round, down to
  ``--imp-sparsity``; then Ma et al.'s two controls (same mask from a random
  re-initialization; a random mask with the ticket's layer-wise densities),
  E epochs each;
* greedy forward selection (structural) from the dense run's weights
  (50 candidates, loss tolerance ``--greedy-tolerance``), fine-tuned E epochs.

Each finished run is cached as JSON in ``--work-dir`` (``--reuse``, the
default, resumes an interrupted benchmark); the report goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import bench
from bench import protocol

bench.quiet_tf()

METHODS = ("dense", "snip", "grasp", "imp", "greedy")


def _weights_file(work_dir, epochs, seed):
    return os.path.join(work_dir, f"dense_e{epochs}_s{seed}.weights.h5")


def _dense(data, seed, epochs, work_dir):
    model = protocol.build_model(seed)
    result = protocol.train(model, data, epochs)
    os.makedirs(work_dir, exist_ok=True)
    model.save_weights(_weights_file(work_dir, epochs, seed))
    return result


def _one_shot(method, data, seed, epochs, sparsity, args):
    from tf_dessilbi import masks as masks_lib
    from tf_dessilbi.layers import mask_model
    from tf_dessilbi.sparse import grasp, snip

    model = protocol.build_model(seed)
    t0 = time.perf_counter()
    if method == "snip":
        mask = snip.snip_mask(model, data.batches(seed, args.snip_batches), sparsity,
                              num_batches=args.snip_batches)
    else:
        batches = grasp.class_balanced_batches(data.batches(seed), 10, args.grasp_samples)
        mask = grasp.grasp_mask(model, batches, sparsity, temperature=args.grasp_temperature)
    score_s = time.perf_counter() - t0
    masked = mask_model(model, mask)
    result = protocol.train(masked, data, epochs)
    kept = masks_lib.FixedMasks().mask(masked)
    result.update(score_s=score_s, weights_kept=kept.weights_kept, weights_total=kept.weights_total,
                  layer_density={k: float(m.mean()) for k, m in kept.weights.items()})
    return result


def _imp(data, seed, epochs, args):
    from tf_dessilbi import models
    from tf_dessilbi.procedures import imp

    t0 = time.perf_counter()
    result = imp.iterative_magnitude_pruning(
        lambda: models.fmnist_cnn_s(),
        lambda: protocol.make_sgd(data.steps_per_epoch, epochs),
        data.train, data.test, epochs_per_round=epochs, steps_per_epoch=data.steps_per_epoch,
        target_sparsity=args.imp_sparsity, prune_fraction=args.imp_fraction, scope="global",
        rewind_epoch=0, sanity_checks=True, tolerance=args.imp_tolerance, seed=seed,
    )
    summary = result.to_dict()
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _greedy(data, seed, epochs, args):
    from tf_dessilbi.procedures import greedy

    path = _weights_file(args.work_dir, epochs, seed)
    if not os.path.exists(path):
        _dense(data, seed, epochs, args.work_dir)
    model = protocol.build_model(seed)
    model.load_weights(path)
    t0 = time.perf_counter()
    result = greedy.greedy_forward_selection(
        model, data.batches(seed + 1), num_candidates=args.greedy_candidates,
        tolerance=args.greedy_tolerance, seed=seed, fine_tune_epochs=epochs,
        steps_per_epoch=data.steps_per_epoch,
        make_optimizer=lambda: protocol.make_sgd(data.steps_per_epoch, epochs),
        eval_data=data.test,
    )
    summary = result.to_dict()
    summary.pop("steps")  # the per-step trace is large; keep its length
    summary["selection_steps"] = {k: len(v) for k, v in result.steps.items()}
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _mean(values):
    return sum(values) / len(values)


def _fmt(values):
    """Mean accuracy in % (and the range over seeds when there are several)."""
    if not values:
        return "—"
    text = f"{100 * _mean(values):.2f}"
    if len(values) > 1:
        text += f" ({100 * min(values):.2f}–{100 * max(values):.2f})"
    return text


def report(results, args) -> str:
    seeds = args.seeds
    dense = [results[("dense", s)]["accuracy"] for s in seeds if ("dense", s) in results]
    lines = [
        "# Pruning methods under the shared protocol (bench/prune_methods.py)",
        "",
        "Command:",
        "",
        f"    {args.command}",
        "",
        f"Budget: E = {args.epochs} epoch(s) per training run (the protocol's default is 10), "
        f"seeds {', '.join(map(str, seeds))}, FMNIST-CNN-S on the real Fashion-MNIST "
        f"({args.num_train} training / 10k test images, batch 128, {args.steps_per_epoch} steps/epoch), SGD Nesterov 0.9, peak lr 0.05, warm-up 1 epoch, "
        f"cosine to 0. Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with "
        f"other jobs. Accuracies: test set (10k), in %; several seeds: mean (min–max).",
        "",
        "Sparsity counts the Conv2D/Dense kernels (biases dense). One-shot and IMP masks are "
        "unstructured; greedy selection removes whole filters/neurons.",
        "",
        "| method | weights removed (target) | weights removed (measured) | units kept | "
        "test accuracy | Δ vs dense (pts) | published claim at this scale |",
        "|---|---|---|---|---|---|---|",
    ]
    dense_mean = _mean(dense) if dense else None

    def delta(values):
        return "—" if not values or dense_mean is None else f"{100 * (_mean(values) - dense_mean):+.2f}"

    if dense:
        lines.append(f"| dense SGD | 0 % | 0 % | all | {_fmt(dense)} | — | — |")
    for sparsity in args.sparsities:
        accs = {}
        for method in ("snip", "grasp"):
            runs = [results[(method, sparsity, s)] for s in seeds if (method, sparsity, s) in results]
            accs[method] = [r["accuracy"] for r in runs]
            if not runs:
                continue
            removed = 1 - runs[0]["weights_kept"] / runs[0]["weights_total"]
            claim = "—"
            if method == "grasp" and accs.get("snip") and sparsity >= 0.9:
                diff = _mean(accs["grasp"]) - _mean(accs["snip"])
                claim = (f"GraSP ≥ SNIP at high sparsity: {'holds' if diff >= 0 else 'does not hold'} "
                         f"({100 * diff:+.2f} pts)")
            lines.append(
                f"| {method.upper() if method == 'snip' else 'GraSP'} | {100 * sparsity:.0f} % | "
                f"{100 * removed:.2f} % | (unstructured) | {_fmt(accs[method])} | "
                f"{delta(accs[method])} | {claim} |"
            )
    imp_runs = [results[("imp", s)] for s in seeds if ("imp", s) in results]
    if imp_runs:
        tickets = [r["ticket_eval"]["accuracy"] for r in imp_runs]
        reinit = [r["sanity"]["reinit_accuracy"] for r in imp_runs]
        random = [r["sanity"]["random_mask_accuracy"] for r in imp_runs]
        removed = imp_runs[0]["sparsity"]
        verdicts = [r["sanity"]["winning"] for r in imp_runs]
        claim = (f"winning ticket (Ma et al. checks): {sum(verdicts)}/{len(verdicts)} seeds "
                 f"pass")
        lines.append(f"| IMP ticket (reset to θ₀) | {100 * args.imp_sparsity:.0f} % | "
                     f"{100 * removed:.2f} % | (unstructured) | {_fmt(tickets)} | {delta(tickets)} | {claim} |")
        lines.append(f"| IMP control: same mask, random re-init | {100 * args.imp_sparsity:.0f} % | "
                     f"{100 * removed:.2f} % | (unstructured) | {_fmt(reinit)} | {delta(reinit)} | — |")
        lines.append(f"| IMP control: random mask, same layer-wise densities | "
                     f"{100 * args.imp_sparsity:.0f} % | {100 * removed:.2f} % | (unstructured) | "
                     f"{_fmt(random)} | {delta(random)} | — |")
    greedy_runs = [results[("greedy", s)] for s in seeds if ("greedy", s) in results]
    if greedy_runs:
        accs = [r["eval"]["accuracy"] for r in greedy_runs]
        selected = [r["selected_eval"]["accuracy"] for r in greedy_runs]
        r0 = greedy_runs[0]
        units = ", ".join(f"{k} {r0['units_kept'][k]}/{r0['units_total'][k]}" for k in r0["units_kept"])
        lines.append(
            f"| greedy selection (structural), fine-tuned | (tolerance {args.greedy_tolerance}) | "
            f"{100 * (1 - r0['weight_density']):.2f} % | {100 * r0['unit_density']:.1f} % ({units}) | "
            f"{_fmt(accs)} | {delta(accs)} | before fine-tuning {_fmt(selected)} |"
        )
    for s in seeds:
        if ("imp", s) not in results:
            continue
        r = results[("imp", s)]
        lines += ["", f"## IMP rounds, seed {s} (wall clock {r['wall_s'] / 60:.1f} min)", "",
                  "| round | weights removed | test accuracy |", "|---|---|---|"]
        for row in r["rounds"]:
            lines.append(f"| {row['index']} | {100 * row['sparsity']:.2f} % | "
                         f"{100 * row['eval']['accuracy']:.2f} |")
        lines += ["", f"Sanity checks (Ma et al. 2021), seed {s}: **{r['verdict']}**. "
                  f"Dense {100 * r['sanity']['dense_accuracy']:.2f}, ticket "
                  f"{100 * r['sanity']['ticket_accuracy']:.2f}, same mask re-initialized "
                  f"{100 * r['sanity']['reinit_accuracy']:.2f}, random mask "
                  f"{100 * r['sanity']['random_mask_accuracy']:.2f}; tolerance "
                  f"{100 * r['sanity']['tolerance']:.2f} pts."]
    for s in seeds:
        if ("greedy", s) in results:
            r = results[("greedy", s)]
            lines += ["", f"Greedy selection, seed {s}: selection + fine-tuning {r['wall_s'] / 60:.1f} min; "
                      f"steps per layer {r['selection_steps']}; trained network "
                      f"{100 * r['full_eval']['accuracy']:.2f}, after selection "
                      f"{100 * r['selected_eval']['accuracy']:.2f}, after fine-tuning "
                      f"{100 * r['eval']['accuracy']:.2f}. Weights removed counts the kernels of "
                      f"removed units and the next layer's inputs they fed."]
    walls = {k: v.get("wall_s") for k, v in results.items() if isinstance(v, dict)}
    lines += ["", "Wall clock per run (s): " + ", ".join(
        f"{'/'.join(map(str, k))} {w:.0f}" for k, w in walls.items() if w is not None), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=protocol.EPOCHS)
    parser.add_argument("--seeds", default=",".join(map(str, protocol.SEEDS)))
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--snip-batches", type=int, default=4)
    parser.add_argument("--grasp-samples", type=int, default=25)
    parser.add_argument("--grasp-temperature", type=float, default=200.0)
    parser.add_argument("--imp-sparsity", type=float, default=0.9)
    parser.add_argument("--imp-fraction", type=float, default=0.2)
    parser.add_argument("--imp-tolerance", type=float, default=0.005)
    parser.add_argument("--greedy-candidates", type=int, default=50)
    parser.add_argument("--greedy-tolerance", type=float, default=0.02)
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images (smoke runs)")
    parser.add_argument("--work-dir", default=os.path.join("bench", "_work", "prune_methods"))
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=os.path.join(bench.REPORTS_DIR, "PRUNE_METHODS.md"))
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {METHODS}")
    args.command = "python -m bench.prune_methods " + " ".join(argv if argv is not None else sys.argv[1:])
    tag = f"e{args.epochs}" + (f"_n{args.train_limit}" if args.train_limit else "")
    results = {}
    for seed in args.seeds:
        data = protocol.load_data(seed, args.epochs, train_limit=args.train_limit or None)
        args.num_train, args.steps_per_epoch = len(data.x_train), data.steps_per_epoch

        def cached(name, fn):
            out = protocol.run_cached(args.work_dir, f"{name}_{tag}_s{seed}", fn, reuse=args.reuse)
            print(f"[prune_methods] {name} seed {seed}: done", flush=True)
            return out

        if "dense" in methods or "greedy" in methods:
            results[("dense", seed)] = cached("dense", lambda: _dense(data, seed, args.epochs, args.work_dir))
        for sparsity in args.sparsities:
            for method in ("snip", "grasp"):
                if method in methods:
                    results[(method, sparsity, seed)] = cached(
                        f"{method}_{sparsity:g}",
                        lambda: _one_shot(method, data, seed, args.epochs, sparsity, args))
        if "imp" in methods:
            results[("imp", seed)] = cached(f"imp_{args.imp_sparsity:g}_p{args.imp_fraction:g}",
                                            lambda: _imp(data, seed, args.epochs, args))
        if "greedy" in methods:
            results[("greedy", seed)] = cached(f"greedy_t{args.greedy_tolerance:g}",
                                               lambda: _greedy(data, seed, args.epochs, args))
        text = report(results, args)  # rewritten after every seed
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    print(report(results, args))
    with open(os.path.join(args.work_dir, f"summary_{tag}.json"), "w") as f:
        json.dump({"/".join(map(str, k)): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()

"""Mask methods under the shared protocol: accuracy at 80/90/95 % removed, step time vs SGD.

Contenders (bench/protocol.py's data, model, optimizer and schedule for all):

* ``dense`` — plain SGD (one per seed);
* ``gmp`` — gradual magnitude pruning, s: 0 → s_f from 10 % to 75 % of the
  steps, every 100 steps, per layer (`tf_dessilbi.sparse.prune_low_magnitude`);
* ``set`` — SET, ERK densities, ΔT 100, f₀ 0.3 cosine, T_end 75 %;
* ``rigl_erk`` / ``rigl_uniform`` — RigL with the same schedule, ERK or
  uniform densities; the gradient batch comes from an order of its own.

Accuracy: every (method, sparsity, seed) run is cached as JSON under the
work dir (``--work``), so an interrupted run resumes with ``--reuse``.
Step time: the contenders' ``fit`` steps (callbacks, mask updates and
RigL's gradient batches included) timed alternately in blocks of ΔT = 100
steps in one process; the ratio to dense SGD is the median of per-round
ratios, with its quartiles.

    python -m bench.mask_methods --epochs 3 --seeds 0 --sparsities 0.9 --reuse

writes ``docs/research/reports/MASK_METHODS.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import bench

bench.quiet_tf()

METHODS = ("gmp", "set", "rigl_erk", "rigl_uniform")
DELTA_T = 100
DROP_FRACTION = 0.3
END_FRACTION = 0.75
GMP_BEGIN_FRACTION = 0.1


_log = bench.logger("mask_methods")


def make_contender(method: str, sparsity: float, seed: int, data, total_steps: int,
                   timing: bool = False):
    """``(model, callbacks)`` of one contender, built on `protocol.build_model(seed)`."""
    from bench import protocol
    from tf_dessilbi import sparse

    model = protocol.build_model(seed)
    if method == "dense":
        return model, []
    # For timing, updates run all along (T_end past the timed steps).
    end = total_steps if timing else max(1, int(round(END_FRACTION * total_steps)))
    if method == "gmp":
        begin = 0 if timing else int(round(GMP_BEGIN_FRACTION * total_steps))
        schedule = (sparse.ConstantSparsity(sparsity, 0, -1, DELTA_T) if timing else
                    sparse.PolynomialDecay(0.0, sparsity, begin, max(begin + 1, end), 3.0, DELTA_T))
        return sparse.prune_low_magnitude(model, schedule), [sparse.UpdatePruningStep()]
    if method == "set":
        updater = sparse.SET(end_step=end, delta_t=DELTA_T, initial_fraction=DROP_FRACTION, seed=seed)
        return (sparse.set_.sparsify(model, sparsity, updater, distribution="erdos_renyi_kernel",
                                     seed=seed), [sparse.UpdateMasks()])
    if method in ("rigl_erk", "rigl_uniform"):
        updater = sparse.RigL(end_step=end, batches=data.batches(seed), delta_t=DELTA_T,
                              initial_fraction=DROP_FRACTION, seed=seed)
        distribution = "erdos_renyi_kernel" if method == "rigl_erk" else "uniform"
        return (sparse.set_.sparsify(model, sparsity, updater, distribution=distribution, seed=seed),
                [sparse.UpdateMasks()])
    raise ValueError(f"Unknown method {method!r}; known: dense, {', '.join(METHODS)}")


def _density(model) -> float:
    from keras import ops

    from tf_dessilbi.sparse import updater as updater_lib

    try:
        found = updater_lib.targets(model)
    except ValueError:
        return 1.0
    kept = sum(float(ops.convert_to_numpy(ops.sum(ops.cast(t.mask, "int32")))) for t in found)
    total = sum(float(ops.convert_to_numpy(ops.size(t.mask))) for t in found)
    return kept / total


def accuracy_run(method: str, sparsity: float, seed: int, epochs: int, limit: int = 0) -> dict:
    import keras

    from bench import protocol

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    total = epochs * data.steps_per_epoch
    model, callbacks = make_contender(method, sparsity, seed, data, total)
    result = protocol.train(model, data, epochs, callbacks)
    result.update(method=method, sparsity=sparsity if method != "dense" else 0.0, seed=seed,
                  density=_density(model))
    _log(f"{method} s={sparsity} seed={seed}: acc {result['accuracy']:.4f}, "
         f"density {result['density']:.4f}, {result['wall_s']:.0f} s")
    return result


def timing_data(block: int, limit: int = 0):
    """``(protocol data of seed 0, a cached dataset of ``block`` batches)`` for step timing."""
    import tensorflow as tf

    from bench import protocol

    data = protocol.load_data(0, epochs=1, train_limit=limit or None, test_limit=limit or None)
    n = block * protocol.BATCH_SIZE
    reps = -(-n // len(data.x_train))
    x = tf.constant(tf.concat([data.x_train] * reps, 0)[:n])
    y = tf.constant(tf.concat([data.y_train] * reps, 0)[:n])
    return data, tf.data.Dataset.from_tensor_slices((x, y)).batch(protocol.BATCH_SIZE).cache()


def timing_run(sparsity: float, rounds: int, block: int = DELTA_T, limit: int = 0) -> dict:
    """Per-step wall time of every contender's fit, alternating blocks of ``block`` steps.

    Every block is one ``fit`` call over the same ``block`` batches held in
    memory (built once, outside the timing); the mask methods update every
    ``block`` steps, so each block contains exactly one update.
    """
    import keras

    from bench import protocol

    keras.utils.clear_session()
    data, ds = timing_data(block, limit)
    steps = (rounds + 2) * block
    names = ["dense", *METHODS]
    contenders = {}
    for name in names:
        model, cbs = make_contender(name, sparsity, 0, data, steps, timing=True)
        protocol.compile_model(model, block, rounds + 2)
        contenders[name] = (model, cbs)

    def run_block(name):
        model, cbs = contenders[name]
        c0, t0 = time.process_time(), time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=block, callbacks=cbs, verbose=0)
        return (time.perf_counter() - t0) / block, (time.process_time() - c0) / block

    for name in names:  # warm-up: tracing and the first updates
        run_block(name)
    per_round = {name: [] for name in names}
    cpu_round = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = run_block(name)
            per_round[name].append(wall)
            cpu_round[name].append(cpu)
        _log(f"timing round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {1000 * per_round[n][-1]:.1f} ms (cpu {1000 * cpu_round[n][-1]:.1f})" for n in names))

    def ratio_stats(values, base):
        ratios = sorted(a / b for a, b in zip(values, base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        return statistics.median(ratios), q[0], q[2]

    out = {}
    for name in names:
        wall = ratio_stats(per_round[name], per_round["dense"])
        cpu = ratio_stats(cpu_round[name], cpu_round["dense"])
        out[name] = {
            "median_ms": 1000 * statistics.median(per_round[name]),
            "ratio_median": wall[0], "ratio_q1": wall[1], "ratio_q3": wall[2],
            "cpu_median_ms": 1000 * statistics.median(cpu_round[name]),
            "cpu_ratio_median": cpu[0], "cpu_ratio_q1": cpu[1], "cpu_ratio_q3": cpu[2],
            "rounds": rounds, "block_steps": block,
            "density": _density(contenders[name][0]),
        }
    return out


def to_markdown(results: dict) -> str:
    acc = results["accuracy"]
    lines = ["# Mask methods on Fashion-MNIST (FMNIST-CNN-S, shared protocol)", "",
             "Written by `bench/mask_methods.py`. Command:", "", "```",
             results["command"], "```", "",
             f"Budget: {results['epochs']} epochs ({results['epochs'] * 468} steps), seeds "
             f"{results['seeds']}, sparsities {results['sparsities']}; host: {results['host']}.",
             "The protocol (bench/protocol.py) is otherwise the one of methods.md; with this "
             "short budget the accuracies are not converged and are not comparable with 10-epoch "
             "numbers.", "", "## Test accuracy", "",
             "| method | sparsity | density kept | accuracy (mean ± sd over seeds) | per seed | wall s |",
             "|---|---|---|---|---|---|"]
    groups = {}
    for r in acc:
        groups.setdefault((r["method"], r["sparsity"]), []).append(r)
    for (method, sp), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        a = [100 * r["accuracy"] for r in rs]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        lines.append(
            f"| {method} | {100 * sp:.0f} % | {100 * statistics.mean(r['density'] for r in rs):.2f} % | "
            f"{statistics.mean(a):.2f} ± {sd:.2f} | {', '.join(f'{v:.2f}' for v in a)} | "
            f"{statistics.mean(r['wall_s'] for r in rs):.0f} |")
    timing = results.get("timing")
    if timing:
        lines += ["", "## Step time vs dense SGD (side by side, one process)", "",
                  f"Blocks of {next(iter(timing.values()))['block_steps']} `fit` steps per contender, "
                  f"alternated over {next(iter(timing.values()))['rounds']} rounds (odd rounds "
                  f"reversed), at sparsity {results['timing_sparsity']}; every block of the mask "
                  "methods contains one mask update (RigL: one extra gradient batch). Ratio: median "
                  "of per-round ratios to dense, [quartiles]. Target ≤ 1.10×.", "",
                  "Wall time is what a user waits; CPU time (this process, all threads) is less "
                  "disturbed by the other jobs sharing the machine.", "",
                  "| contender | wall ms/step | wall ratio to dense | CPU ms/step | CPU ratio to dense "
                  "| density |", "|---|---|---|---|---|---|"]
        for name, t in timing.items():
            cpu = (f"{t['cpu_median_ms']:.2f} | {t['cpu_ratio_median']:.3f} "
                   f"[{t['cpu_ratio_q1']:.3f}, {t['cpu_ratio_q3']:.3f}]" if "cpu_median_ms" in t
                   else "– | –")
            lines.append(f"| {name} | {t['median_ms']:.2f} | {t['ratio_median']:.3f} "
                         f"[{t['ratio_q1']:.3f}, {t['ratio_q3']:.3f}] | {cpu} | "
                         f"{100 * t['density']:.2f} % |")
    lines += ["", "## Notes", "",
              "* Contenders: GMP prunes each layer from 0 to s along Zhu & Gupta's cubic from 10 % "
              "to 75 % of the steps, every 100 steps; SET and RigL start from random masks at ERK "
              "(or uniform) densities and drop/grow every ΔT = 100 steps with f₀ = 0.3 (cosine) "
              "until T_end = 75 % of the steps; RigL's gradient w.r.t. W ⊙ M is taken on a batch "
              "from an order of its own (the training order is the protocol's).",
              "* Density kept: the fraction of masked (Conv2D/Dense kernel) weights active at the "
              "end; biases are not masked. ERK's per-layer rounding keeps a few weights more than "
              "exactly 10 %.",
              "* The accuracy table's wall seconds are one run each on the shared machine (other "
              "jobs, and this project's tests, ran alongside): they are not a speed comparison.",
              "* Step times come from a 2-core machine shared with other jobs: the per-round "
              "ratios (quartiles shown) carry that noise. The step-time contenders run the mask "
              "updates all along (GMP at a constant target), so the update cost is included.",
              ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--work", default=os.path.join(bench.WORK_DIR, "mask_methods"))
    parser.add_argument("--timing-rounds", type=int, default=12, help="0: no step-time part")
    parser.add_argument("--timing-block", type=int, default=DELTA_T)
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (smoke tests)")
    parser.add_argument("--out", default=os.path.join(bench.REPORTS_DIR, "MASK_METHODS.md"))
    parser.add_argument("--render", action="store_true",
                        help="only rewrite --out from the results.json in --work")
    args = parser.parse_args(argv)
    from bench import protocol

    if args.render:
        with open(os.path.join(args.work, "results.json")) as f:
            results = json.load(f)
        with open(args.out, "w") as f:
            f.write(to_markdown(results))
        return results

    runs = []
    for seed in args.seeds:
        runs.append(("dense", 0.0, seed))
        runs += [(m, s, seed) for s in args.sparsities for m in args.methods]
    results = {"accuracy": [], "epochs": args.epochs, "seeds": args.seeds,
               "sparsities": args.sparsities, "host": f"{os.cpu_count()} CPUs visible",
               "command": "python -m bench.mask_methods " + " ".join(argv if argv is not None
                                                                      else sys.argv[1:])}
    for method, sp, seed in runs:
        name = f"{method}_s{sp:g}_seed{seed}_e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
        results["accuracy"].append(protocol.run_cached(
            args.work, name, lambda: accuracy_run(method, sp, seed, args.epochs, args.limit),
            reuse=args.reuse))
    if args.timing_rounds:
        sp = 0.9 if 0.9 in args.sparsities else args.sparsities[0]
        results["timing_sparsity"] = sp
        results["timing"] = protocol.run_cached(
            args.work, f"timing2_s{sp:g}_r{args.timing_rounds}_b{args.timing_block}",
            lambda: timing_run(sp, args.timing_rounds, args.timing_block, args.limit),
            reuse=args.reuse)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(args.out, "w") as f:
        f.write(to_markdown(results))
    _log(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()

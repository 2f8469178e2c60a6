"""Every sparsity method of the package, and TF-MOT, in one table under the shared protocol.

    python -m bench.sparse_compare --epochs 3            # what SPARSE_COMPARE.md reports
    python -m bench.sparse_compare --render              # rewrite the report from the cache

Contenders (all on `bench.protocol`: real Fashion-MNIST, FMNIST-CNN-S, the
same per-(seed, epoch) data order, SGD Nesterov 0.9, peak lr 0.05, 1 warm-up
epoch then cosine to 0 over E epochs; only what a method must change differs):

* ``dense`` — SGD, the baseline (every seed);
* ``gmp`` — `tf_dessilbi.prune_low_magnitude`, cubic 0 → s from 10 % to 75 %
  of the steps, every 100 steps (Zhu & Gupta);
* ``tfmot`` — TF-MOT's ``prune_low_magnitude`` (tf_keras, its own process:
  `bench.sparse_tfmot`)
  with exactly that schedule and the same per-step learning rates;
* ``static_erk`` — a random mask at ERK densities, never updated (RigL's
  "static" baseline);
* ``set`` / ``rigl_erk`` / ``rigl_uniform`` — `bench.mask_methods`' settings
  (ΔT 100, f₀ 0.3 cosine, T_end 75 %);
* ``snip`` / ``grasp`` — `bench.prune_methods`' settings (4 batches; 25 images
  per class, T = 200), then E epochs with the mask fixed;
* ``imp`` — global IMP, p = 0.5 of the remaining weights per round (fewer
  rounds than the paper's 0.2: the budget of this machine), reset to θ₀,
  E epochs per round, milestones at 80 and 90 % so one run gives tickets at
  each; Ma et al.'s two controls at 90 % (and 95 % on seed 0);
* ``cs`` — Continuous Sparsification, one round of E epochs (gates per
  weight, s₀ = 0, β 1 → 200 per step), the hard mask 1[s > 0] evaluated;
  its mask penalty λ is searched (secant in log λ on seed 0) to reach each
  sparsity, then reused for the other seeds;
* ``dessilbi`` — DessiLBI, every kernel elementwise (κ 1, μ 20, fan-in λ
  scaling), W* = W restricted to supp Γ evaluated, λ searched the same way;
* ``dessilbi_ft`` — the same iteration with λ in units of each layer's
  initial norm, at a fixed λ (`DESSILBI_FT_LAMBDA`), until supp Γ holds 1 − s
  of the weights, then W* trained on that support
  for the rest of the budget with the coupling off (`WStarFinetune(
  weights_fraction=1 − s)`, the paper's retraining inside the budget);
  the sparsity is set by the fraction, not by λ, so there is no search.

Each run is cached as JSON in ``--work`` (``--reuse``, the default, resumes an
interrupted benchmark and reuses the runs of `bench.mask_methods` /
`bench.prune_methods` with the same epochs). The report (``--out``) has the
table, the published claims with a verdict each, the step-time ratios (one
process, alternating blocks) and the plot ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types

import bench
from bench import parity, protocol
from bench.sparse_report import LABELS, METHODS, claims, plot, sparsity_at_accuracy, to_markdown  # noqa: F401
from bench.sparse_timing import timing_run
from bench.sparse_tfmot import tfmot_run, tfmot_spec  # noqa: F401

bench.quiet_tf()

IMP_FRACTION = 0.5
DESSILBI = {k: v for k, v in parity.HPARAMS.items() if k != "lambda_"}  # λ is searched
CS_GATES = {"granularity": "weight", "gate_init": 0.0, "final_beta": 200.0}
# λ in units of each layer's initial RMS norm (init_norm): at E = 3, supp Γ reaches 5 / 10 / 20 % of
# the weights at steps 580 / 620 / 730 of 1,404, every layer in it (10 %: conv1 50 %, conv2 18 %,
# conv3 14 %, fc1 10 %, logits 25 %). With fan-in scaling at λ 1 the 10 % support came at step 480
# with 32 of 112 filters and the fine-tuned W* stayed at chance (a conv layer nearly empty).
DESSILBI_FT_LAMBDA = 1.0
SEARCH_START = {"cs": (1e-8, 1e-6), "dessilbi": (1.5, 6.0)}  # λ brackets to start the search
SEARCH_TOLERANCE = 0.01  # accept a λ whose measured sparsity is within 1 pt of the target
SEARCH_STEPS = 4


_log = bench.logger("sparse_compare")


# ------------------------------------------------------------------ contenders
def _kernel_density(masks: dict) -> float:
    import numpy as np

    kept = sum(int(np.sum(m)) for m in masks.values())
    return kept / sum(int(np.size(m)) for m in masks.values())


def static_erk_run(sparsity, seed, epochs, limit=0) -> dict:
    """A random ERK mask, fixed: RigL's static baseline."""
    import keras

    from tf_dessilbi.sparse import densities as densities_lib
    from tf_dessilbi.sparse import set_ as set_lib
    from tf_dessilbi.sparse import updater as updater_lib
    from tf_dessilbi.sparse.gmp import sparse_copy

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    model = sparse_copy(protocol.build_model(seed))
    dens = set_lib.layer_densities(model, sparsity, "erdos_renyi_kernel", False)
    updater_lib.assign_masks(model, set_lib.random_masks(densities_lib.model_shapes(model), dens, seed))
    result = protocol.train(model, data, epochs)
    from bench.mask_methods import _density

    result.update(method="static_erk", sparsity=sparsity, seed=seed, density=_density(model))
    return result


def dessilbi_run(lam, seed, epochs, limit=0) -> dict:
    """DessiLBI elementwise at λ = ``lam`` (`bench.parity.dessilbi_run`); accuracy of W*, and of W."""
    result = parity.dessilbi_run("fmnist", "elementwise", seed, epochs, None, limit, lambda_=lam)
    result.update(method="dessilbi", lam=float(lam), dense_w_accuracy=result.pop("w_accuracy"),
                  accuracy=result.pop("w_star_accuracy"), density=result["weight_fraction"])
    return result


def dessilbi_ft_run(sparsity, seed, epochs, limit=0) -> dict:
    """DessiLBI elementwise at `DESSILBI_FT_LAMBDA`, W* fine-tuned from the step |supp Γ| / |W| ≥ 1 − s."""
    result = parity.dessilbi_run("fmnist", "elementwise", seed, epochs, None, limit,
                                 lambda_=DESSILBI_FT_LAMBDA, recipe=f"init+w{1.0 - sparsity:.6g}")
    result.update(method="dessilbi_ft", lam=DESSILBI_FT_LAMBDA,
                  dense_w_accuracy=result.pop("w_accuracy"), accuracy=result.pop("w_star_accuracy"),
                  density=result["weight_fraction"])
    return result


def cs_run(penalty, seed, epochs, limit=0) -> dict:
    """One Continuous Sparsification round; accuracy of the hard mask (the ticket)."""
    import keras

    import tf_dessilbi as tfd

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    gated = tfd.gate_model(protocol.build_model(seed), granularity=CS_GATES["granularity"],
                           gate_init=CS_GATES["gate_init"], penalty=float(penalty))
    beta = tfd.callbacks.GateTemperature(final_beta=CS_GATES["final_beta"], epochs=epochs,
                                         steps_per_epoch=data.steps_per_epoch, per_step=True)
    result = protocol.train(gated, data, epochs, callbacks=[beta])
    result["soft_accuracy"] = result.pop("accuracy")
    tfd.set_ticket_mode(gated, True)
    result["accuracy"] = float(gated.evaluate(data.test, verbose=0)[1])
    masks = {k: keras.ops.convert_to_numpy(v) for k, v in tfd.gate_masks(gated).items()}
    result.update(method="cs", lam=float(penalty), seed=seed, density=_kernel_density(masks))
    _log(f"cs λ={penalty:.4g} seed={seed}: ticket {result['accuracy']:.4f}, density "
         f"{result['density']:.4f}")
    return result


def imp_run(seed, epochs, target, milestones, sanity_at, limit=0) -> dict:
    """Global IMP (p = `IMP_FRACTION`, reset to θ₀) with milestones and the Ma et al. controls."""
    import keras

    from tf_dessilbi import models
    from tf_dessilbi.procedures import imp

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    t0 = time.perf_counter()
    result = imp.iterative_magnitude_pruning(
        lambda: models.fmnist_cnn_s(), lambda: protocol.make_sgd(data.steps_per_epoch, epochs),
        data.train, data.test, epochs_per_round=epochs, steps_per_epoch=data.steps_per_epoch,
        target_sparsity=target, prune_fraction=IMP_FRACTION, scope="global", rewind_epoch=0,
        milestones=milestones, sanity_at=sanity_at, seed=seed,
    )
    out = result.to_dict()
    out["wall_s"] = time.perf_counter() - t0
    _log(f"imp seed={seed}: {out['verdict']}")
    return out


# ------------------------------------------------------------------ the grid
class Runner:
    """Runs (or reads back) every contender's runs; each run one cached JSON file."""

    def __init__(self, args):
        self.args = args
        self.epochs = args.epochs
        self.tag = f"e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
        self.work = args.work
        self.mask_work = os.path.join(os.path.dirname(self.work), "mask_methods")
        self.prune_work = os.path.join(os.path.dirname(self.work), "prune_methods")

    def cached(self, work, name, fn):
        if self.args.render:
            path = os.path.join(work, f"{name}.json")
            if not os.path.exists(path):
                return None
            with open(path) as f:
                return json.load(f)
        return protocol.run_cached(work, name, fn, reuse=self.args.reuse)

    def mask_method(self, method, sparsity, seed):
        from bench import mask_methods

        name = f"{method}_s{sparsity:g}_seed{seed}_e{self.epochs}" + (
            f"_n{self.args.limit}" if self.args.limit else "")
        return self.cached(self.mask_work, name, lambda: mask_methods.accuracy_run(
            method, sparsity, seed, self.epochs, self.args.limit))

    def one_shot(self, method, sparsity, seed):
        from bench import prune_methods

        def run():
            data = protocol.load_data(seed, self.epochs, train_limit=self.args.limit or None)
            ns = types.SimpleNamespace(snip_batches=4, grasp_samples=25, grasp_temperature=200.0)
            out = prune_methods._one_shot(method, data, seed, self.epochs, sparsity, ns)
            out["density"] = out["weights_kept"] / out["weights_total"]
            return out

        out = self.cached(self.prune_work, f"{method}_{sparsity:g}_{self.tag}_s{seed}", run)
        if out is not None and "density" not in out:  # a run of bench.prune_methods
            out["density"] = out["weights_kept"] / out["weights_total"]
        return out

    def static_erk(self, sparsity, seed):
        return self.cached(self.work, f"static_erk_{sparsity:g}_{self.tag}_s{seed}",
                           lambda: static_erk_run(sparsity, seed, self.epochs, self.args.limit))

    def tfmot(self, sparsity, seed):
        return self.cached(self.work, f"tfmot_{sparsity:g}_{self.tag}_s{seed}",
                           lambda: tfmot_run(sparsity, seed, self.epochs, self.args.limit))

    def dessilbi_ft(self, sparsity, seed):
        name = f"dessilbi_ft_init_{sparsity:g}_lam{DESSILBI_FT_LAMBDA:g}_{self.tag}_s{seed}"
        return self.cached(self.work, name, lambda: dessilbi_ft_run(sparsity, seed, self.epochs,
                                                                    self.args.limit))

    def imp(self, seed, target, milestones, sanity_at):
        name = f"imp_p{IMP_FRACTION:g}_to{target:g}_{self.tag}_s{seed}"
        return self.cached(self.work, name, lambda: imp_run(
            seed, self.epochs, target, milestones, sanity_at, self.args.limit))

    def searched(self, method, lam, seed):
        fn = cs_run if method == "cs" else dessilbi_run
        return self.cached(self.work, f"{method}_lam{lam:.6g}_{self.tag}_s{seed}",
                           lambda: fn(lam, seed, self.epochs, self.args.limit))

    def search(self, method, target, seed=0):
        """The λ whose run's sparsity is closest to ``target`` (secant search in log λ).

        Returns ``(λ, run)``; every run tried stays in the cache (and in the
        accuracy-vs-sparsity plot).
        """
        tried = dict(self._cached_lambdas(method, seed))  # runs of earlier searches count
        for lam in SEARCH_START[method]:
            run = self.searched(method, lam, seed)
            if run is not None:
                tried[lam] = run
        for _ in range(self.args.search_steps):
            if not tried:
                return None, None
            best = min(tried, key=lambda k: abs((1 - tried[k]["density"]) - target))
            if abs((1 - tried[best]["density"]) - target) <= SEARCH_TOLERANCE or self.args.render:
                break
            lam = next_lambda(tried, target)
            if lam is None or any(math.isclose(lam, k, rel_tol=1e-3) for k in tried):
                break
            tried[lam] = self.searched(method, lam, seed)
        best = min(tried, key=lambda k: abs((1 - tried[k]["density"]) - target))
        return best, tried[best]

    def _cached_lambdas(self, method, seed) -> dict:
        out = {}
        if not os.path.isdir(self.work):
            return out
        suffix = f"_{self.tag}_s{seed}.json"
        for name in os.listdir(self.work):
            if name.startswith(f"{method}_lam") and name.endswith(suffix):
                with open(os.path.join(self.work, name)) as f:
                    run = json.load(f)
                out[run["lam"]] = run
        return out


def next_lambda(tried: dict, target: float):
    """The next λ of the search: log λ interpolated in log(density) (regula falsi kept inside the
    middle half of the bracket), extrapolated ×4 at most before a bracket exists.

    ``tried`` maps λ to runs with a ``density``; sparsity grows with λ for
    both methods (a larger threshold or penalty keeps fewer weights).
    """
    pts = sorted((math.log(k), math.log(max(r["density"], 1e-6))) for k, r in tried.items())
    goal = math.log(1.0 - target)
    below = [p for p in pts if p[1] >= goal]  # denser than the target: λ too small
    above = [p for p in pts if p[1] < goal]
    if below and above:
        (x0, y0), (x1, y1) = below[-1], above[0]
    elif len(pts) >= 2:
        (x0, y0), (x1, y1) = (pts[-2], pts[-1]) if below else (pts[0], pts[1])
    else:
        x = pts[0][0] + (math.log(4.0) if below else -math.log(4.0))
        return math.exp(x)
    if math.isclose(y0, y1):
        x = (x1 + math.log(4.0)) if below and not above else (x0 - math.log(4.0))
        return math.exp(x)
    x = x0 + (goal - y0) * (x1 - x0) / (y1 - y0)
    if below and above:  # bracketed: stay in the middle half, so the bracket shrinks ≥ 25 %
        return math.exp(min(max(x, x0 + 0.25 * (x1 - x0)), x0 + 0.75 * (x1 - x0)))
    lo, hi = pts[0][0] - math.log(4.0), pts[-1][0] + math.log(4.0)
    return math.exp(min(max(x, lo), hi))


def run_grid(args) -> dict:
    """Every (method, sparsity, seed) run of the report; ``{"rows": [...], ...}``."""
    r = Runner(args)
    rows = []

    def add(method, sparsity, seed, run, **extra):
        if run is not None:
            rows.append({"method": method, "target": sparsity, "seed": seed,
                         "accuracy": run["accuracy"], "density": run["density"], **extra})

    plan = [(s, seed) for seed in args.seeds for s in args.sparsities
            if seed in args.seeds_all or s == 0.9]
    for seed in args.seeds:
        add("dense", 0.0, seed, r.mask_method("dense", 0.0, seed))
    searched_lam = {}
    for method in ("gmp", "tfmot", "static_erk", "set", "rigl_erk", "rigl_uniform", "snip",
                   "grasp", "cs", "dessilbi", "dessilbi_ft"):
        if method not in args.methods:
            continue
        for sparsity, seed in plan:
            if method in ("gmp", "set", "rigl_erk", "rigl_uniform"):
                run = r.mask_method(method, sparsity, seed)
            elif method in ("snip", "grasp"):
                run = r.one_shot(method, sparsity, seed)
            elif method == "static_erk":
                run = r.static_erk(sparsity, seed)
            elif method == "tfmot":
                run = r.tfmot(sparsity, seed)
            elif method == "dessilbi_ft":
                run = r.dessilbi_ft(sparsity, seed)
                if run is not None:
                    add(method, sparsity, seed, run, dense_w_accuracy=run["dense_w_accuracy"],
                        finetune_from_step=run.get("finetune_from_step"))
                continue
            else:
                if (method, sparsity) not in searched_lam:
                    # The λ chosen is cached too, so a resumed or repeated run reuses it.
                    found = r.cached(r.work, f"search_{method}_{sparsity:g}_{r.tag}",
                                     lambda: {"lam": r.search(method, sparsity)[0]})
                    searched_lam[(method, sparsity)] = (
                        found["lam"] if found else r.search(method, sparsity)[0])
                lam = searched_lam[(method, sparsity)]
                run = None if lam is None else r.searched(method, lam, seed)
                if run is not None:
                    add(method, sparsity, seed, run, lam=lam,
                        dense_w_accuracy=run.get("dense_w_accuracy"))
                continue
            add(method, sparsity, seed, run)
    imp_runs = {}
    if "imp" in args.methods:
        for seed in args.seeds:
            top = max(args.sparsities) if seed in args.seeds_all else 0.9
            milestones = tuple(s for s in sorted(args.sparsities) if s < top)
            sanity_at = tuple(s for s in milestones if s == 0.9)
            run = r.imp(seed, top, milestones, sanity_at)
            if run is None:
                continue
            imp_runs[seed] = run
            for s in [*milestones, top]:
                rnd = run["rounds"][run["milestones"][f"{s:g}"]] if s != top else run["rounds"][-1]
                sanity = run["sanity"] if s == top else run["milestone_sanity"].get(f"{s:g}")
                add("imp", s, seed, {"accuracy": rnd["eval"]["accuracy"], "density": rnd["density"]})
                if sanity:
                    add("imp_reinit", s, seed, {"accuracy": sanity["reinit_accuracy"],
                                                "density": rnd["density"]})
                    add("imp_random", s, seed, {"accuracy": sanity["random_mask_accuracy"],
                                                "density": rnd["density"]})
    curves = {m: sorted(((1 - v["density"], v["accuracy"], k) for k, v in
                         r._cached_lambdas(m, 0).items())) for m in ("cs", "dessilbi")}
    return {"rows": rows, "imp": {str(k): v for k, v in imp_runs.items()}, "curves": curves,
            "lambdas": {f"{m}@{s:g}": lam for (m, s), lam in searched_lam.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds-all", type=int, nargs="+", default=[0],
                        help="seeds run at every sparsity (the others at 90 % only)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--render", action="store_true", help="report from the cache only")
    parser.add_argument("--timing-rounds", type=int, default=10, help="0: no step-time part")
    parser.add_argument("--timing-block", type=int, default=100)
    parser.add_argument("--limit", type=int, default=0, help="first N examples (smoke tests)")
    parser.add_argument("--search-steps", type=int, default=SEARCH_STEPS,
                        help="most λ-search runs per target beyond the two starting ones")
    parser.add_argument("--work", default=os.path.join(bench.WORK_DIR, "sparse_compare"))
    parser.add_argument("--out", default=os.path.join(bench.REPORTS_DIR, "SPARSE_COMPARE.md"))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; known: {', '.join(METHODS)}")
    bad = [s for s in args.sparsities if not 0.0 < s < 1.0]
    if bad:
        parser.error(f"--sparsities must lie in (0, 1); received {bad}")
    if 0.9 not in args.sparsities:
        parser.error("--sparsities must include 0.9 (the sparsity every seed runs at)")
    args.command = "python -m bench.sparse_compare " + " ".join(
        argv if argv is not None else sys.argv[1:])
    grid = run_grid(args)
    timing = None
    if args.timing_rounds:
        runner = Runner(args)
        timing = runner.cached(args.work, f"timing_r{args.timing_rounds}_b{args.timing_block}",
                               lambda: timing_run(args.timing_rounds, args.timing_block, args.limit))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(grid, os.path.join(os.path.dirname(os.path.abspath(args.out)), "sparse_compare.png"))
    with open(args.out, "w") as f:
        f.write(to_markdown(grid, timing, args))
    _log(f"wrote {args.out}")
    return {"grid": grid, "timing": timing}


if __name__ == "__main__":
    main()

"""The markdown report of `bench.parity`: the parity table, the tuning record, the tickets.

Read by ``python -m bench.parity`` after it has run (or, with ``--render``,
read back) the cached runs; also remembers the commands that trained into
a cache so the report can list them.
"""

from __future__ import annotations

import json
import os
import statistics

import bench
from bench import protocol
from bench.parity_recipe import HPARAMS, parse_recipe, path_recipe


def _mean_sd(values) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _recipes_tried(args) -> list:
    """Every DessiLBI run of this model and budget in the work dir (seed 0): the tuning record."""
    import glob

    tag = f"e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
    runs = []
    for path in glob.glob(os.path.join(args.work, f"dessilbi_{args.model}_*_{tag}_s0*.json")):
        with open(path) as f:
            r = json.load(f)
        if r.get("seed") == 0 and r.get("epochs", args.epochs) == args.epochs:
            runs.append(r)
    if not runs:
        return []
    lines = ["", "## Every recipe measured (seed 0)", "",
             "Recipe tokens: `paper` the paper's iteration with the protocol's α; `init` "
             "λ in units of each layer's RMS initial unit norm (`lambda_scaling=\"init_norm\"`); "
             "`unitinit` λ in units of each unit's own initial norm (`\"unit_init_norm\"`); "
             "`steady` μ ∝ α once α peaks (`SteadyPathSpeed`); `ftN` the last N epochs train W* "
             "on a fixed support with the coupling off (`WStarFinetune`), `cftN` the same with "
             "the coupling on; `uX` the fine-tune starts once supp Γ holds a fraction X of the "
             "conv filters (checked every step), `trim` then cuts it back to exactly ⌈X·N⌉ filters "
             "(the last to enter go), `groups` sets it to whole dependency groups of physical removal "
             "(the filters one residual Add sums stay or go together, by their joint margin ‖V_G‖/λ_G; "
             "with `gmax` by their strongest member's ‖V_g‖/λ_g), `joint` couples those groups "
             "during the whole path (`DessiLBI(unit_groups=joint_unit_groups(model))`), "
             "`wX` once it holds a fraction X of the coupled weights; `widthsA-B-C` the fine-tune "
             "starts with conv1/conv2/conv3 at exactly A/B/C filters, those of largest margin "
             "‖V_g‖/λ_g (`WStarFinetune(layer_units=...)`: filters below λ enter if needed); "
             "`roundR` then raises each conv's support to a multiple of R filters "
             "(`WStarFinetune(round_to=R)`; with `groups`, each channel space's whole groups, so the "
             "exported widths are multiples of R); "
             "`lamX`/`muX` override λ/μ. Structures: `auto` conv filters as "
             "groups + dense kernels elementwise, `filter` conv filters only (dense layers "
             "uncoupled), `filter_neuron` hidden neurons as groups too, `elementwise` every "
             "kernel elementwise.", "",
             "| structure | recipe | dense W | W* | conv filters kept (per layer) | coupled weights kept "
             "| support fixed from |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["structure"], r.get("recipe", "paper"))):
        convs = _conv_layers(r)
        per_layer = "/".join(str(r["layers"][n][0]) for n in convs) if len(convs) <= 4 else ""
        lines.append(f"| {r['structure']} | {r.get('recipe', 'paper')} | {100 * r['w_accuracy']:.2f} "
                     f"| {100 * r['w_star_accuracy']:.2f} | {r['filters_kept']}/{r['filters_total']}"
                     f"{' (' + per_layer + ')' if per_layer else ''} | "
                     f"{100 * r['weight_fraction']:.1f} % | {_fixed_from(r)} |")
    return lines


def _conv_layers(result) -> list:
    """The conv layers of a run's ``layers`` (FMNIST-CNN-S ``conv1``…, ResNet-20 ``*_conv``), stem first."""
    names = [n for n in result.get("layers", {}) if n.startswith("conv") or n.endswith("conv")]
    return sorted(names, key=lambda n: (not n.startswith("stem"), n))


def _fixed_from(result) -> str:
    """The step the fine-tune fixed supp Γ at (recorded, or the ``ftN`` epoch), as a budget share."""
    step = result.get("finetune_from_step")
    epochs, steps = result.get("epochs"), result.get("steps")
    if step is None and epochs and steps:
        n = parse_recipe(result.get("recipe", "paper"))["finetune_epochs"]
        step = (epochs - n) * (steps // epochs) if n else None
    if step is None:
        return "— (no fine-tune)"
    where = f"step {step} ({100 * step / steps:.0f} %)" if steps else f"step {step}"
    layers = lambda names: ", ".join(n.split("/")[0] for n in names)  # noqa: E731
    if result.get("finetune_waited_for"):
        where += f", after waiting for {layers(result['finetune_waited_for'])} to keep a unit"
    if result.get("finetune_trimmed"):
        n = sum(map(len, result["finetune_trimmed"].values()))
        where += f", {n} unit{'s' if n != 1 else ''} trimmed"
    if result.get("finetune_added"):
        n = sum(map(len, result["finetune_added"].values()))
        where += f", {n} unit{'s' if n != 1 else ''} added"
    if result.get("finetune_empty_at_start"):
        where += f"; empty then: {layers(result['finetune_empty_at_start'])}"
    return where


def to_markdown(results, args) -> str:
    seeds = [results["seeds"][str(s)] for s in args.seeds if str(s) in results["seeds"]]
    sgd = [s["sgd"]["accuracy"] for s in seeds if "sgd" in s]
    lines = [
        f"# DessiLBI vs SGD under the shared protocol ({args.model}, bench/parity.py)", "",
        "Commands (runs are cached in `bench/_work/parity`, so each reuses what the others "
        "trained; the last one wrote this report):", "",
        *[f"    {c}" for c in _commands(args)], "",
        f"Protocol: `bench/protocol.py` (E = {args.epochs} epochs, warm-up 1 epoch then cosine to "
        f"0, Nesterov 0.9, peak lr 0.05), seeds {', '.join(map(str, args.seeds))}. DessiLBI: "
        f"κ {HPARAMS['kappa']:g}, μ {HPARAMS['mu']:g}, λ {HPARAMS['lambda_']:g} (fan-in "
        f"scaling) unless the recipe says otherwise (tokens below), α = the protocol's "
        f"schedule. Accuracy: 10k test images, %, mean ± sd over seeds.", "",
        "| run | seeds | dense W | Δ vs SGD | W* | Δ vs SGD | coupled weights kept | conv filters kept | "
        "same widths from scratch (SGD) | target (W ≥ SGD − 0.3, W* ≥ SGD − 0.5 with ≥ 50 % filters out) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| SGD | {len(sgd)} | {_mean_sd(sgd)} | — | — | — | 100 % | all | — | — |",
    ]
    keys = [f"{st}:{r}" for r in args.recipes for st in args.structures]
    extra = set(args.seeds) - set(protocol.SEEDS)
    for key in keys:
        row = _parity_row(key, seeds)
        if row is None:
            continue
        lines.append(row)
        ran = {int(k) for k, v in results["seeds"].items() if key in v and int(k) in args.seeds}
        if ran & extra and ran & set(protocol.SEEDS):  # the protocol's seeds alone too
            row = _parity_row(key, [results["seeds"][str(s)] for s in protocol.SEEDS],
                              f" (seeds {', '.join(map(str, protocol.SEEDS))}: the protocol's)")
            lines += [row] if row else []
    lines += _paired_rows(args, seeds)
    lines += _per_seed(args, seeds, keys)
    lines += _per_layer(args, seeds, keys)
    lines += _exports(args, seeds, keys)
    widths = [spec for spec in getattr(args, "scratch_widths", [])
              if any(f"widths:{spec}" in s for s in seeds)]
    if widths:
        lines += ["", "## Narrower FMNIST-CNN-S trained from scratch (dense SGD, the same protocol)", "",
                  "| conv widths | conv filters | seeds | accuracy | Δ vs SGD |", "|---|---|---|---|---|"]
        for spec in widths:
            pairs = [(s[f"widths:{spec}"]["accuracy"], s["sgd"]["accuracy"]) for s in seeds
                     if f"widths:{spec}" in s and "sgd" in s]
            accs = [a for a, _ in pairs]
            delta = 100 * (statistics.mean(accs) - statistics.mean(b for _, b in pairs))
            lines.append(f"| {spec.replace('-', '/')} | {sum(int(w) for w in spec.split('-'))}/112 "
                         f"| {len(accs)} | {_mean_sd(accs)} | {delta:+.2f} |")
    lines += _recipes_tried(args)
    tickets = [(seed, t) for seed, s in zip(args.seeds, seeds)
               for t in sorted(_tickets(s), key=lambda t: (t["rewind_epoch"], t["step"]))]
    if tickets:
        lines += ["", f"## Early tickets (supp Γ of DessiLBI {args.ticket_structure}, {args.ticket_recipe}, retrained "
                  "with SGD under the protocol)", "",
                  "A ticket starts from θ₀ and trains the whole budget, or from the run's W at the end of "
                  "epoch R (rewound) and trains the remaining epochs of the same schedule and batches; "
                  "every control of a row starts from the same point (the re-init: a fresh draw) and "
                  "trains as long.", "",
                  "| seed | taken at | start | weights kept | ticket | dense DessiLBI W | same mask, re-init | "
                  "random mask | random filters | verdict (Ma et al.'s two controls) | "
                  "ticket − random filters |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for seed, t in tickets:
            s = t.get("sanity") or {}
            acc = lambda key: f"{100 * s[key]:.2f}" if key in s else "—"  # noqa: E731
            units = t.get("random_units_accuracy")
            versus = (f"{100 * (s['ticket_accuracy'] - units):+.2f} pts"
                      if units is not None and "ticket_accuracy" in s else "—")
            lines.append(
                f"| {seed} | step {t['step']} ({100 * t['fraction']:.0f} % of the budget){_same(t)} | {_start(t)} | "
                f"{100 * t['weights_kept'] / t['weights_total']:.2f} % | {acc('ticket_accuracy')} | "
                f"{acc('dense_accuracy')} | {acc('reinit_accuracy')} | {acc('random_mask_accuracy')} "
                f"| {'—' if units is None else f'{100 * units:.2f}'} | {t['verdict']} | {versus} |")
        lines += ["", "Per budget fraction and start, seeds whose ticket wins (≥ dense DessiLBI W − 0.5 pt "
                  "and beats both controls by more than the margin):", ""]
        for step, rewind in sorted({(t["step"], t["rewind_epoch"]) for _, t in tickets}):
            rows = [t for _, t in tickets if (t["step"], t["rewind_epoch"]) == (step, rewind)]
            won = sum(bool(t.get("winning")) for t in rows)
            empty = sum(bool(t.get("empty_layers")) for t in rows)
            structured = [t for t in rows if t.get("random_units_accuracy") is not None]
            beats = sum((t["sanity"]["ticket_accuracy"] > t["random_units_accuracy"]
                         and t["sanity"]["ticket_accuracy"] > t["sanity"]["reinit_accuracy"]
                         and t["sanity"]["matches_dense"]) for t in structured)
            lines.append(f"- step {step} ({100 * rows[0]['fraction']:.0f} %), from {_start(rows[0])}: "
                         f"wins on {won}/{len(rows)} seeds"
                         + (f" ({empty} with an empty layer, not retrained)" if empty else "")
                         + (f"; with random filters in place of the elementwise random mask "
                            f"(matches dense, beats the re-init and the random filters): "
                            f"{beats}/{len(structured)}" if structured else ""))
    lines += ["", "Wall clock per run (s): " + ", ".join(
        f"seed {seed} {name} {s[name]['wall_s']:.0f}" for seed, s in zip(args.seeds, seeds)
        for name in ["sgd", *[f"{st}:{r}" for r in args.recipes for st in args.structures]]
        if name in s and "wall_s" in s[name]), ""]
    return "\n".join(lines)


def _against_sgd(sgd, dense_runs, w_star_runs) -> dict:
    """Issue 13's two lines over seeds: dense W (of ``dense_runs``) ≥ SGD − 0.3 pt, and W* (of
    ``w_star_runs``, which also give the filters) ≥ SGD − 0.5 pt with ≥ 50 % of the filters out;
    ``sgd`` the SGD accuracies of the same seeds. Returns the table cells: ``w``, ``ws`` (lists of
    accuracies), ``dw``, ``dws`` (points), ``filters`` and ``verdict``."""
    # Keras reports accuracies as float32 (0.9301 arrives as 0.93010002...): snapped to 1e-6, far
    # below one test image, and the differences compared at 1e-6 pt, so an exact −0.30 stays −0.30.
    base = statistics.mean(round(b, 6) for b in sgd)
    w = [round(r["w_accuracy"], 6) for r in dense_runs]
    ws = [round(r["w_star_accuracy"], 6) for r in w_star_runs]
    dw, dws = 100 * (statistics.mean(w) - base), 100 * (statistics.mean(ws) - base)
    kept = [r["filters_kept"] for r in w_star_runs]
    tot = w_star_runs[0]["filters_total"]
    out_frac = 1 - statistics.mean(kept) / tot if tot else 0.0
    lo, hi = min(kept), max(kept)
    share = lambda n: f"{100 * (1 - n / tot):.0f}" if tot else "0"  # noqa: E731
    out = share(lo) if share(lo) == share(hi) else f"{share(hi)}–{share(lo)}"
    w_star_ok, dense_ok = round(dws, 6) >= -0.5 and round(out_frac, 9) >= 0.5, round(dw, 6) >= -0.3
    verdict = ("holds" if w_star_ok and dense_ok else "does not hold") + (
        f" (W* ≥ SGD − 0.5 with ≥ 50 % out: {'yes' if w_star_ok else 'no'}; "
        f"dense W ≥ SGD − 0.3: {'yes' if dense_ok else 'no'})")
    return {"w": w, "ws": ws, "dw": dw, "dws": dws, "verdict": verdict,
            "filters": f"{lo}/{tot} ({out} % out)" if lo == hi else f"{lo}–{hi}/{tot} ({out} % out)"}


def _pairs(args) -> list:
    """``(structure, path recipe, fine-tune recipe)`` for each fine-tune recipe of ``args`` whose
    path recipe (`parity_recipe.path_recipe`, the same run without the fine-tune) ran too."""
    out = []
    for recipe in args.recipes:
        try:
            path = path_recipe(recipe)
        except ValueError:  # a name the tests make up: no fine-tune to pair
            continue
        if path != recipe and path in args.recipes:
            out += [(st, path, recipe) for st in args.structures]
    return out


def _shared_prefix(path_run: dict, tuned_run: dict, steps_per_epoch: int) -> str:
    """Whether the two runs took the same steps before the fine-tune: the running train loss of
    every step before it (runs that recorded it), else of the epochs that ended before it, must be
    the same to the bit (same seed, data order and kernels)."""
    start = tuned_run.get("finetune_from_step")
    if start is None:
        return "no fine-tune ran"
    if start and "step_loss" in path_run and "step_loss" in tuned_run:  # recorded every step
        same = path_run["step_loss"][:start] == tuned_run["step_loss"][:start]
        return f"fine-tune from step {start}; train loss of steps 1–{start} {'identical' if same else 'differs'}"
    epochs = start // steps_per_epoch
    if not epochs:
        return f"fine-tune from step {start}, inside epoch 1: not checked"
    same = path_run["train_loss"][:epochs] == tuned_run["train_loss"][:epochs]
    return (f"fine-tune from step {start}; train loss of epoch 1{f'–{epochs}' if epochs > 1 else ''} "
            f"{'identical' if same else 'differs'}")


def _paired_row(structure, path, tuned, named, spe, label="") -> str:
    """One row of `_paired_rows` over ``named`` ``(seed, results)`` pairs that ran both recipes."""
    pk, tk = f"{structure}:{path}", f"{structure}:{tuned}"
    both = [s for _, s in named]
    c = _against_sgd([s["sgd"]["accuracy"] for s in both], [s[pk] for s in both], [s[tk] for s in both])
    prefixes = [(seed, _shared_prefix(s[pk], s[tk], spe)) for seed, s in named]
    split = [str(seed) for seed, check in prefixes if check.endswith("differs")]
    verdict = (c["verdict"] if not split else  # then W* is no fork of this dense W
               f"not one path: the runs differ before the fork on seed {', '.join(split)}")
    checks = "; ".join(f"seed {seed}: {check}" for seed, check in prefixes)
    return (f"| {structure}: dense W of {path}, W* of {tuned}{label} | {len(both)} | {_mean_sd(c['w'])} | "
            f"{c['dw']:+.2f} | {_mean_sd(c['ws'])} | {c['dws']:+.2f} | {c['filters']} | {verdict} | {checks} |")


def _paired_rows(args, seeds) -> list:
    """The paper's two models from one path: the coupled iteration's dense W at the end (the path
    recipe) and W* retrained on the support where the fine-tune recipe forks from it; over every
    seed, and over the protocol's alone when there are more."""
    spe = (args.limit or protocol.NUM_TRAIN) // protocol.BATCH_SIZE
    lines = []
    for structure, path, tuned in _pairs(args):
        pk, tk = f"{structure}:{path}", f"{structure}:{tuned}"
        named = [(seed, s) for seed, s in zip(args.seeds, seeds) if pk in s and tk in s and "sgd" in s]
        if not named:
            continue
        lines.append(_paired_row(structure, path, tuned, named, spe))
        ours = [(seed, s) for seed, s in named if seed in protocol.SEEDS]
        if ours and len(ours) < len(named):
            lines.append(_paired_row(structure, path, tuned, ours, spe, f" (seeds "
                                     f"{', '.join(str(seed) for seed, _ in ours)}: the protocol's)"))
    if not lines:
        return []
    return ["", "## Dense W and W* of one path (the paper's two models)", "",
            "Fu et al. report the coupled iteration's dense W at the end of training and retrain "
            "the support of an early Γ. The fine-tune recipe is that retraining: it takes the "
            "path recipe's steps until supp Γ holds its fraction of the filters, then trains W* "
            "on that support for the rest of the budget, while the path recipe runs on to the end "
            "and gives dense W. Both train E epochs with the protocol's schedule; the last column "
            "checks that they took the same steps before the fork.", "",
            "| path | seeds | dense W (path) | Δ vs SGD | W* (fork) | Δ vs SGD | conv filters kept by W* "
            "| target (W ≥ SGD − 0.3, W* ≥ SGD − 0.5 with ≥ 50 % filters out) | shared prefix |",
            "|---|---|---|---|---|---|---|---|---|", *lines]


def _parity_row(key, seeds, label=""):
    """The main table's row of run ``key`` (``structure:recipe``) over ``seeds``; None if never run."""
    pairs = [(s[key], s["sgd"]["accuracy"]) for s in seeds if key in s and "sgd" in s]
    if not pairs:
        return None
    runs = [r for r, _ in pairs]
    structure, recipe = key.split(":")
    c = _against_sgd([b for _, b in pairs], runs, runs)  # SGD on the same seeds
    scratch = [s[f"scratch:{key}"]["accuracy"] for s in seeds if f"scratch:{key}" in s]
    return (
        f"| DessiLBI {structure}, {recipe}{label} | {len(runs)} | {_mean_sd(c['w'])} | {c['dw']:+.2f} | "
        f"{_mean_sd(c['ws'])} | {c['dws']:+.2f} | "
        f"{100 * statistics.mean(r['weight_fraction'] for r in runs):.1f} % | {c['filters']} | "
        f"{_mean_sd(scratch) + (f' ({len(scratch)} of {len(runs)} seeds)' if len(scratch) != len(runs) else '') if scratch else '—'} | "
        f"{c['verdict']} |")


def _per_seed(args, seeds, keys) -> list:
    """Per seed: SGD, and dense W / W* / filters of each run (the spread behind the means)."""
    keys = [k for k in keys if any(k in s for s in seeds)]
    if len(seeds) < 2 or not keys:
        return []
    lines = ["", "Per seed (test accuracy %; filters kept):", "",
             "| seed | SGD | " + " | ".join(f"{k.replace(':', ', ')}: dense W / W* / filters" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for seed, s in zip(args.seeds, seeds):
        cells = [f"{100 * s[k]['w_accuracy']:.2f} / {100 * s[k]['w_star_accuracy']:.2f} / "
                 f"{s[k]['filters_kept']}" if k in s else "—" for k in keys]
        sgd = f"{100 * s['sgd']['accuracy']:.2f}" if "sgd" in s else "—"
        lines.append(f"| {seed} | {sgd} | " + " | ".join(cells) + " |")
    return lines


def _exports(args, seeds, keys) -> list:
    """Per run and seed: the filters in supp Γ against those `tf_dessilbi.shrink` leaves in the
    exported model, and its parameters and MACs (runs that recorded them)."""
    rows = [(key, seed, s[key]) for key in keys for seed, s in zip(args.seeds, seeds)
            if key in s and "export" in s[key]]
    if not rows:
        return []
    lines = ["", "Exported model (`tf_dessilbi.shrink(model, optimizer=...)` of W*):", "",
             "| run | seed | conv filters in supp Γ | conv filters exported | parameters | MACs |",
             "|---|---|---|---|---|---|"]
    for key, seed, r in rows:
        e = r["export"]
        lines.append(f"| {key.replace(':', ', ')} | {seed} | {r['filters_kept']}/{r['filters_total']} | "
                     f"{e['conv_units'][1]}/{e['conv_units'][0]} | {e['params'][1] / e['params'][0]:.2f}× "
                     f"({e['params'][1]:,}) | {e['macs'][1] / e['macs'][0]:.2f}× |")
    return lines


def _per_layer(args, seeds, keys) -> list:
    """Filters kept per conv layer and seed, for models whose layers the recipe table does not list
    (more than four convs: ResNet-20), in the model's order (the stem first)."""
    lines = []
    for key in keys:
        runs = [(seed, s[key]) for seed, s in zip(args.seeds, seeds) if key in s]
        names = _conv_layers(runs[0][1]) if runs else []
        if len(names) <= 4:
            continue
        lines += ["", f"Filters kept per layer ({key.replace(':', ', ')}; of the layer's filters):", "",
                  "| layer | filters | " + " | ".join(f"seed {seed}" for seed, _ in runs) + " |",
                  "|---|---|" + "---|" * len(runs)]
        for name in names:
            cells = [str(r["layers"][name][0]) if name in r["layers"] else "—" for _, r in runs]
            lines.append(f"| {name} | {runs[0][1]['layers'][name][1]} | " + " | ".join(cells) + " |")
    return lines


def _tickets(seed_results) -> list:
    """A seed's tickets with their step and start (results cached before rewinding hold neither)."""
    out = []
    for key, t in seed_results.get("tickets", {}).items():
        step, _, rewind = key.partition("_rw")
        out.append(dict(t, step=int(t.get("step", step)), rewind_epoch=int(t.get("rewind_epoch", rewind or 0))))
    return out


def _same(ticket) -> str:
    """Where a ticket's support equals a later one's (supp Γ frozen by a W* fine-tune)."""
    first = ticket.get("same_support_as")
    return "" if first is None else f", the same support as step {first} (not retrained)"


def _start(ticket) -> str:
    rewind = ticket["rewind_epoch"]
    return "θ₀" if not rewind else f"W at the end of epoch {rewind} (rewound)"


def _commands_file(args) -> str:
    tag = f"e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
    return os.path.join(args.work, f"commands_{args.model}_{tag}.txt")


def _remembered(args) -> list:
    path = _commands_file(args)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _commands(args) -> list:
    """Every command that trained into this work dir for this model and budget, then this one."""
    return [c for c in _remembered(args) if c != args.command] + [args.command]


def remember_command(args) -> None:
    if args.render or args.command in _remembered(args):
        return
    os.makedirs(args.work, exist_ok=True)
    with open(_commands_file(args), "a") as f:
        f.write(args.command + "\n")


def default_out(model: str, epochs: int) -> str:
    """docs/research/reports/PARITY.md (fmnist, E = 3), PARITY_RESNET20.md, PARITY_E10.md, PARITY_RESNET20_E10.md, ..."""
    name = "PARITY" + ("" if model == "fmnist" else f"_{model.upper()}") + ("" if epochs == 3 else f"_E{epochs}")
    return os.path.join(bench.REPORTS_DIR, f"{name}.md")

"""DessiLBI against SGD under the shared protocol: parity, W*, and early tickets with both controls.

    python -m bench.parity --epochs 3 --seeds 0           # PARITY.md (the commands are in it)
    python -m bench.parity --epochs 10 --seeds 0 1 2 --structures filter \
        --recipes init+lam0.5+u0.49 --ticket-fractions 0.3 --scratch --random-units
                                                          # PARITY_E10.md (≈ 1 h 15 min)
    python -m bench.parity --epochs 10 --seeds 0 1 2 --structures elementwise \
        --recipes init+lam1+w0.1 --ticket-fractions 0.3 --rewind-epochs 1 \
        --out docs/research/reports/PARITY_E10_ELEMENTWISE.md              # rewound elementwise tickets (≈ 1 h)
    python -m bench.parity --model resnet20 --epochs 3 --seeds 0 --structures elementwise \
        --recipes unitinit+lam0.1+w0.1 --ticket-fractions 0.1 0.2 0.3 --rewind-epochs 1 0 \
        --out docs/research/reports/PARITY_RESNET20_TICKETS_ELEMENTWISE.md # ResNet-20 tickets (≈ 1 h 15 min)

Every run uses `bench.protocol` (real Fashion-MNIST, the per-(seed, epoch)
order, Nesterov momentum 0.9, peak lr 0.05, warm-up 1 epoch then cosine to
0) and FMNIST-CNN-S (``--model resnet20``: ResNet-20 on 28×28×1, BN channels
pruned with their filters in W*):

* ``sgd`` — the dense baseline (`bench.mask_methods`' dense run, shared);
* ``dessilbi_<structure>`` for ``auto`` (conv filters as groups, dense
  weights elementwise), ``filter_neuron`` (hidden dense neurons as groups
  too) and ``elementwise``: κ = 1, μ = 20, λ = 1.5 with fan-in scaling
  (``tf_dessilbi/configs/fmnist_dessilbi.py``), the protocol's learning-rate schedule as
  α; dense W and W* (W on supp Γ) evaluated;
* early tickets of ``dessilbi_auto``: supp Γ taken after 10 / 20 / 30 % of
  the steps, retrained with SGD under the protocol from θ₀ or (``--rewind-epochs
  R``) from the run's W at the end of epoch R for the remaining epochs
  (`bench.parity_tickets`), with Ma et al.'s two controls under the same budget
  (`tf_dessilbi.procedures.early_tickets.ticket_with_controls`); the ticket
  must reach the dense DessiLBI run's W − 0.5 pt and beat both controls
  (``--ticket-structure`` / ``--ticket-recipe`` choose the run; with
  ``--random-units`` a third control, as many random whole filters per layer);
* with ``--scratch`` the support's conv widths trained from scratch with SGD,
  with ``--scratch-widths`` narrower FMNIST-CNN-S at given widths.

Runs are cached as JSON (and the supports as ``.npz``) in ``--work``; an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import bench
from bench import parity_tickets, protocol
from bench.parity_recipe import HPARAMS  # also bench.parity.HPARAMS
from bench.parity_recipe import build  # also bench.parity.build
from bench.parity_recipe import parse_recipe  # also bench.parity.parse_recipe

bench.quiet_tf()

STRUCTURES = ("auto", "filter", "filter_neuron", "elementwise")
TICKET_FRACTIONS = (0.1, 0.2, 0.3)
RECIPE = "paper"  # the recipe of the parity table and the tickets unless --recipes says otherwise


_log = bench.logger("parity")


class _Supports:
    """Keras callback: supp Γ as a `Mask` after given numbers of steps, W after others, and the
    epoch's running mean train loss after every step (``losses``: two runs with equal values up to
    step t took the same t steps, which `parity_report` checks for a fine-tune's fork)."""

    def __new__(cls, steps, weights_steps=()):
        import keras

        from tf_dessilbi.procedures import early_tickets

        class Supports(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.step, self.masks, self.weights, self.losses = 0, {}, {}, []

            def on_train_batch_end(self, batch, logs=None):
                self.step += 1
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))
                if self.step in steps:
                    self.masks[self.step] = early_tickets.support_masks(self.model,
                                                                        self.model.optimizer)
                if self.step in weights_steps:
                    self.weights[self.step] = [keras.ops.convert_to_numpy(w)
                                               for w in self.model.weights]

        return Supports()


def _conv_names(model) -> set:
    """The model's Conv2D layers: their units are the filters counted in supp Γ and the export."""
    import keras

    from tf_dessilbi import _compat

    return {layer.name for layer in _compat.flatten_layers(model)
            if isinstance(layer, keras.layers.Conv2D)}


def _filters(report, convs: set) -> tuple:
    """Conv filters with a weight in the support, and all conv filters (any structure)."""
    rows = [r for r in report.rows if r.layer in convs]
    return sum(r.units_kept for r in rows), sum(r.units_total for r in rows)


def _layer_units(model_name, widths):
    """A ``widths<a>-<b>-<c>`` token as `WStarFinetune(layer_units=...)` (FMNIST-CNN-S's convs)."""
    if not widths:
        return None
    if model_name != "fmnist":
        raise ValueError(f"Recipe token widths<a>-<b>-<c> names FMNIST-CNN-S's conv1-3; model {model_name!r}.")
    return {f"^conv{i}/": int(w) for i, w in enumerate(widths, start=1)}


def dessilbi_run(model_name, structure, seed, epochs, work, limit=0, ticket_steps=(),
                 lambda_=None, recipe="paper", rewind_steps=(), on_trained=None) -> dict:
    """One DessiLBI run under the protocol: dense W, W*, supports (saved in ``work`` at ``ticket_steps``).

    ``recipe`` is a `parse_recipe` name; ``lambda_`` overrides λ
    (`bench.sparse_compare` searches it); the weights after each of
    ``rewind_steps`` are saved too (the rewound tickets' start);
    ``on_trained(model, optimizer, data)`` is called on the trained model
    (`bench.deploy` keeps it).
    """
    import keras

    import tf_dessilbi as tfd
    from tf_dessilbi.dessilbi import finetune, path_speed, structures

    settings = parse_recipe(recipe)
    hparams = {**HPARAMS, **settings["hparams"], **({} if lambda_ is None else {"lambda_": float(lambda_)})}
    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    model = build(model_name, seed)
    optimizer = tfd.DessiLBI(learning_rate=protocol.lr_schedule(data.steps_per_epoch, epochs),
                             structure=structures.named_structure(structure, model),
                             unit_groups=tfd.joint_unit_groups(model) if settings["joint"] else None,
                             **hparams)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    supports = _Supports(set(ticket_steps), set(rewind_steps))
    callbacks = [supports]
    if settings["steady"]:
        callbacks.append(path_speed.SteadyPathSpeed())
    if settings["finetune_epochs"] or settings["units_fraction"] or settings["weights_fraction"]:
        start = max(0, epochs - settings["finetune_epochs"]) if settings["finetune_epochs"] else None
        fork = tfd.Fork(epoch=start, units=settings["units_fraction"],
                        weights=settings["weights_fraction"], check_every=1, trim=settings["trim"],
                        dependency_groups=settings["groups"], round_to=settings["round_to"])
        deprecated = {}  # the recipes of options the study found not to move W* (gmax, widths)
        if settings["gmax"]:
            deprecated["group_margin"] = "max"
        if settings["widths"]:
            deprecated["layer_units"] = _layer_units(model_name, settings["widths"])
        callbacks.append(finetune.WStarFinetune(fork, decouple=settings["decouple"], **deprecated))
    result = protocol.train(model, data, epochs, callbacks=callbacks, compile=False)
    result["recipe"], result["hparams"], result["step_loss"] = recipe, hparams, supports.losses
    if isinstance(callbacks[-1], finetune.WStarFinetune):
        result["finetune_from_step"] = callbacks[-1].started_at_step
        result["finetune_waited_for"] = callbacks[-1].deferred_for  # empty layers at the crossing
        result["finetune_empty_at_start"] = callbacks[-1].empty_at_start
        result["finetune_trimmed"] = callbacks[-1].trimmed
        result["finetune_added"] = callbacks[-1].added
    result["w_accuracy"] = result.pop("accuracy")
    if on_trained is not None:
        on_trained(model, optimizer, data)
    with tfd.apply_w_star(model, optimizer):
        result["w_star_accuracy"] = float(model.evaluate(data.test, verbose=0)[1])
    report = tfd.sparsity_report(model, optimizer)
    conv_names = _conv_names(model)
    kept, total = _filters(report, conv_names)
    result.update(model=model_name, structure=structure, seed=seed,
                  weight_fraction=report.weight_fraction, filters_kept=kept, filters_total=total,
                  layers={r.layer: [r.units_kept, r.units_total, r.weights_kept, r.weights_total]
                          for r in report.rows})
    _, shrunk = tfd.shrink(model, optimizer=optimizer, return_report=True)
    convs = [r for r in shrunk.rows if r.layer in conv_names]
    result["export"] = {"params": [shrunk.params_before, shrunk.params_after],
                        "macs": [shrunk.macs_before, shrunk.macs_after],
                        "conv_units": [sum(r.units_before for r in convs),
                                       sum(r.units_after for r in convs)]}
    result["supports"] = {}
    for step, mask in supports.masks.items():
        path = os.path.join(work, f"support_{model_name}_{structure}_{recipe}_e{epochs}_s{seed}_step{step}.npz")
        os.makedirs(work, exist_ok=True)
        mask.save(path)
        k, t = mask.weights_kept, mask.weights_total
        result["supports"][str(step)] = {"file": os.path.basename(path), "weight_fraction": k / t}
    result["rewind"] = {}
    for step, weights in supports.weights.items():
        os.makedirs(work, exist_ok=True)
        name = parity_tickets.weights_name(model_name, structure, recipe, epochs, seed, step)
        np.savez(os.path.join(work, name), *weights)
        result["rewind"][str(step)] = name
    _log(f"{model_name} dessilbi {structure} {recipe} seed {seed}: W {result['w_accuracy']:.4f}, "
         f"W* {result['w_star_accuracy']:.4f}, filters {kept}/{total}")
    return result


def sgd_run(model_name, seed, epochs, limit=0) -> dict:
    import keras

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    result = protocol.train(build(model_name, seed), data, epochs)
    result.update(model=model_name, seed=seed)
    return result


def scratch_run(widths, seed, epochs, limit=0) -> dict:
    """Dense SGD from scratch on FMNIST-CNN-S with the conv widths a support leaves.

    The control of Liu et al. (ICLR 2019, "Rethinking the value of network
    pruning"): the same architecture trained from a fresh initialization
    under the same protocol, so the report says what the selection added.
    """
    import keras

    from tf_dessilbi import models

    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    keras.utils.set_random_seed(int(seed))
    result = protocol.train(models.fmnist_cnn_s(filters=tuple(int(w) for w in widths)), data, epochs)
    result.update(widths=[int(w) for w in widths], seed=seed)
    _log(f"scratch {widths} seed {seed}: {result['accuracy']:.4f}")
    return result


def support_widths(result) -> list:
    """conv1..conv3 filters in a FMNIST-CNN-S run's support ([] when a layer keeps none)."""
    widths = [result["layers"].get(name, [0])[0] for name in ("conv1", "conv2", "conv3")]
    return widths if all(widths) else []


def run(args) -> dict:
    work = args.work
    spe = (args.limit or protocol.NUM_TRAIN) // protocol.BATCH_SIZE
    total = args.epochs * spe
    steps = sorted({max(1, int(f * total)) for f in args.ticket_fractions})  # never past f
    rewinds = {r: r * spe for r in args.rewind_epochs if r}  # epoch -> the step W is saved at
    tag = f"e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
    out = {"seeds": {}}

    def cached(work_dir, name, fn):
        """`protocol.run_cached`; with ``--render`` only what is cached (else ``None``)."""
        if not getattr(args, "render", False):
            return protocol.run_cached(work_dir, name, fn)
        path = os.path.join(work_dir, f"{name}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    for seed in args.seeds:
        seed_out = out["seeds"][str(seed)] = {}
        if args.model == "fmnist":  # the dense run of bench.mask_methods / sparse_compare
            mask_work = os.path.join(os.path.dirname(work), "mask_methods")
            name = f"dense_s0_seed{seed}_e{args.epochs}" + (f"_n{args.limit}" if args.limit else "")
            from bench import mask_methods

            seed_out["sgd"] = cached(mask_work, name, lambda: mask_methods.accuracy_run(
                "dense", 0.0, seed, args.epochs, args.limit))
        else:
            seed_out["sgd"] = cached(work, f"sgd_{args.model}_{tag}_s{seed}",
                                                  lambda: sgd_run(args.model, seed, args.epochs,
                                                                  args.limit))
        scratch_widths_runs(args, seed_out, seed, tag, cached)
        for recipe in args.recipes:
            suffix = "" if recipe == "paper" else f"_{recipe}"
            for structure in args.structures:
                tickets_here = (args.tickets and structure == args.ticket_structure
                                and recipe == args.ticket_recipe)
                name = f"dessilbi_{args.model}_{structure}_{tag}_s{seed}{suffix}"
                path = os.path.join(work, f"{name}.json")
                if tickets_here and os.path.exists(path) and not args.render:
                    with open(path) as f:
                        saved = json.load(f)
                    if not (all(str(st) in saved.get("supports", {}) for st in steps)  # redo
                            and all(str(st) in saved.get("rewind", {}) for st in rewinds.values())):
                        os.remove(path)
                seed_out[f"{structure}:{recipe}"] = cached(
                    work, name,
                    lambda: dessilbi_run(args.model, structure, seed, args.epochs, work, args.limit,
                                         steps if tickets_here else (), recipe=recipe,
                                         rewind_steps=rewinds.values() if tickets_here else ()))
                done = seed_out[f"{structure}:{recipe}"]
                widths = support_widths(done) if done and args.scratch and args.model == "fmnist" else []
                if widths and widths != [16, 32, 64]:
                    seed_out[f"scratch:{structure}:{recipe}"] = cached(
                        work, f"scratch_{args.model}_{tag}_s{seed}_{'-'.join(map(str, widths))}",
                        lambda: scratch_run(widths, seed, args.epochs, args.limit))
        auto = seed_out.get(f"{args.ticket_structure}:{args.ticket_recipe}")
        seed_out["tickets"] = {}
        if auto and args.tickets:
            suffix = "" if args.ticket_recipe == "paper" else f"_{args.ticket_recipe}"
            if args.ticket_structure != "auto":
                suffix += f"_{args.ticket_structure}"
            for rewind in args.rewind_epochs:
                trained = []  # (support, step, ticket): a support seen again is not retrained
                for step in sorted(steps, reverse=True):  # the latest first, the one most often cached
                    ticket = parity_tickets.ticket_at(args, work, tag, seed, step, rewind,
                                                      rewinds.get(rewind), auto, suffix, cached,
                                                      trained)
                    if ticket:
                        key = str(step) if not rewind else f"{step}_rw{rewind}"
                        seed_out["tickets"][key] = dict(ticket, fraction=step / total, step=step,
                                                        rewind_epoch=rewind)
        for key in [k for k, v in seed_out.items() if v is None]:
            del seed_out[key]
    return out


def scratch_widths_runs(args, seed_out, seed, tag, cached) -> None:
    """``--scratch-widths``: FMNIST-CNN-S at given conv widths, dense SGD from scratch."""
    for spec in args.scratch_widths:
        widths = [int(w) for w in spec.split("-")]
        seed_out[f"widths:{spec}"] = cached(
            args.work, f"scratch_{args.model}_{tag}_s{seed}_{spec}",
            lambda: scratch_run(widths, seed, args.epochs, args.limit))


def main(argv=None):
    from bench import parity_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("fmnist", "resnet20"), default="fmnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    parser.add_argument("--recipes", nargs="+", default=[RECIPE],
                        help="DessiLBI recipes (see parse_recipe), e.g. paper steady+ft1")
    parser.add_argument("--ticket-recipe", default=None,
                        help="the recipe whose auto run gives the tickets (default: the first)")
    parser.add_argument("--ticket-structure", default=None, choices=STRUCTURES,
                        help="the structure whose run gives the tickets (default: the first)")
    parser.add_argument("--ticket-fractions", type=float, nargs="+", default=list(TICKET_FRACTIONS))
    parser.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rewind-epochs", type=int, nargs="+", default=[0], metavar="R",
                        help="tickets start from θ₀ (0) or from W at the end of epoch R and train "
                             "the remaining epochs (Frankle et al.'s rewinding); default 0")
    parser.add_argument("--scratch", action="store_true",
                        help="also train the support's conv widths from scratch with SGD (fmnist)")
    parser.add_argument("--random-units", action="store_true",
                        help="also retrain each ticket's random-filters control (same count per layer)")
    parser.add_argument("--scratch-widths", nargs="*", default=[], metavar="A-B-C",
                        help="also train FMNIST-CNN-S with these conv widths from scratch (SGD)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the report from the cached runs (train nothing)")
    parser.add_argument("--limit", type=int, default=0, help="first N examples (smoke tests)")
    parser.add_argument("--work", default=os.path.join(bench.WORK_DIR, "parity"))
    parser.add_argument("--out", default=None,
                        help="default docs/research/reports/PARITY[_RESNET20][_E<epochs> unless 3].md")
    args = parser.parse_args(argv)
    bad = [f for f in args.ticket_fractions if not 0.0 < f <= 1.0]
    if bad:
        parser.error(f"--ticket-fractions must lie in (0, 1]; received {bad}")
    for recipe in args.recipes + ([args.ticket_recipe] if args.ticket_recipe else []):
        try:
            parse_recipe(recipe)
        except ValueError as err:
            parser.error(str(err))
    args.out = args.out or parity_report.default_out(args.model, args.epochs)
    args.ticket_recipe = args.ticket_recipe or args.recipes[0]
    args.ticket_structure = args.ticket_structure or args.structures[0]
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1; received {args.epochs}")
    bad = [r for r in args.rewind_epochs if not 0 <= r < args.epochs]
    if bad:
        parser.error(f"--rewind-epochs must lie in [0, --epochs={args.epochs}); received {bad}")
    for spec in args.scratch_widths:
        parts = spec.split("-")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--scratch-widths takes conv1-conv2-conv3 positive widths; received {spec!r}")
    if args.scratch_widths and args.model != "fmnist":
        parser.error("--scratch-widths is for --model fmnist")
    args.command = "python -m bench.parity " + " ".join(argv if argv is not None else sys.argv[1:])
    parity_report.remember_command(args)
    results = run(args)
    with open(os.path.join(args.work, f"results_{args.model}_e{args.epochs}.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = parity_report.to_markdown(results, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    _log(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()

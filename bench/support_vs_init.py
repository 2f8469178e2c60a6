r"""How much of DessiLBI's filter support is already decided by θ₀'s filter norms.

    python -m bench.support_vs_init --model resnet20 --seeds 0 1
    python -m bench.support_vs_init --model fmnist --seeds 0 1

A diagnostic for `bench/parity.py`'s filter recipes: the run walks the path
under the shared protocol (`bench/protocol.py`, E = 10: the first epoch is
the warm-up) until `WStarFinetune(units_fraction=ρ, trim=True)` fixes the
support, and stops there. For each coupled conv layer l with n_l filters, k_l
of them in supp Γ, it reports the overlap of supp Γ with the k_l filters of
largest initial norm ‖W_g(0)‖₂,

    overlap_l = |supp_l ∩ top_{k_l}(‖W_g(0)‖)| / k_l      (chance: k_l / n_l),

and Spearman's rank correlation of ‖V_g‖ (the quantity the prox
thresholds: Γ_g ≠ 0 ⇔ ‖V_g‖ > λ_l) with ‖W_g(0)‖ and with ‖W_g(t)‖.

Why: V moves by (α/μ)(W − Γ), so before a unit enters, V_g is the
α-weighted time integral of W_g/μ. Behind a BatchNormalization the
network's function does not depend on ‖W_g‖, the gradient is orthogonal
to W_g, and without weight decay ‖W_g‖ only grows by O(α²‖∇‖²) a step:
‖V_g‖ then ranks the filters close to how θ₀ ranks them, whatever they
learned. A plain ReLU CNN has no such invariance.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bench import logger, protocol
from tf_dessilbi.masks import unit_mask_of, unit_norms

_log = logger("support_vs_init")


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom else float("nan")


def layer_stats(w0, w, v, support) -> dict:
    """The overlap and rank correlations of one layer (arrays: initial kernel, kernel, V, mask)."""
    n0, nw, nv = unit_norms(w0), unit_norms(w), unit_norms(v)
    kept = unit_mask_of(support, (-1,))
    k, n = int(kept.sum()), kept.size
    top = np.argsort(-n0, kind="stable")[:k]
    overlap = float(np.isin(top, np.flatnonzero(kept)).sum() / k) if k else float("nan")
    return {"kept": k, "units": n, "overlap_init_topk": overlap, "chance": k / n,
            "spearman_v_init": _spearman(nv, n0), "spearman_v_now": _spearman(nv, nw)}


def run(model_name: str, seed: int, recipe: str, epochs: int) -> dict:
    import keras

    import tf_dessilbi as tfd
    from bench import parity
    from tf_dessilbi.dessilbi import finetune, structures
    from tf_dessilbi.dessilbi import fork as fork_lib

    settings = parity.parse_recipe(recipe)
    hparams = {**parity.HPARAMS, **settings["hparams"]}
    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs)
    model = parity.build(model_name, seed)
    initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    optimizer = tfd.DessiLBI(learning_rate=protocol.lr_schedule(data.steps_per_epoch, epochs),
                             structure=structures.named_structure("filter", model), **hparams)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ft = finetune.WStarFinetune(fork_lib.Fork(units=settings["units_fraction"], check_every=1,
                                              trim=settings["trim"]))
    out = {}

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if ft.started_at_step is None or out:
                return
            for variable, _ in optimizer.coupled_variables():
                out[variable.path] = layer_stats(
                    initial[variable.path], keras.ops.convert_to_numpy(variable),
                    keras.ops.convert_to_numpy(optimizer.v(variable)),
                    keras.ops.convert_to_numpy(optimizer.support(variable)))
            self.model.stop_training = True

    model.fit(data.train, epochs=epochs, steps_per_epoch=data.steps_per_epoch,
              callbacks=[ft, Stop()], verbose=0)
    return {"model": model_name, "seed": seed, "recipe": recipe, "step": ft.started_at_step,
            "layers": out}


def summary(result) -> str:
    layers = result["layers"].values()
    kept = sum(r["kept"] for r in layers)
    units = sum(r["units"] for r in layers)
    w = [r["kept"] for r in layers]  # weight the per-layer numbers by the filters kept
    mean = lambda key: float(np.average([r[key] for r in layers], weights=w))  # noqa: E731
    return (f"{result['model']} seed {result['seed']} ({result['recipe']}, support fixed at step "
            f"{result['step']}, {kept}/{units} filters): overlap with θ₀'s top-k norms "
            f"{mean('overlap_init_topk'):.2f} (chance {mean('chance'):.2f}); Spearman ‖V_g‖ vs "
            f"‖W_g(0)‖ {mean('spearman_v_init'):.2f}, vs ‖W_g(t)‖ {mean('spearman_v_now'):.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("fmnist", "resnet20"), default="resnet20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", default=None,
                        help="a bench.parity recipe with uX (default: the model's parity recipe)")
    parser.add_argument("--epochs", type=int, default=10, help="the protocol's E (sets the schedule)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    from bench import parity

    recipe = args.recipe or ("unitinit+lam0.45+u0.5+trim" if args.model == "resnet20"
                             else "init+lam0.5+u0.5+trim")
    if not parity.parse_recipe(recipe)["units_fraction"]:
        parser.error(f"--recipe needs a units fraction (uX); received {recipe!r}")
    results = []
    for seed in args.seeds:
        results.append(run(args.model, seed, recipe, args.epochs))
        _log(summary(results[-1]))
    if args.out:  # atomic: a killed run leaves the previous file or none
        tmp = f"{args.out}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)
    return results


if __name__ == "__main__":
    main()

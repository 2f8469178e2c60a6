"""Aggregation over seeds: mean ± sample std of every (accuracy, weights kept)
point and of the DessiLBI support path, and the config-drift note.
"""

from __future__ import annotations

import math
import statistics

from bench.accuracy.config import CONFIG, load_config


def mean_std(values):
    """``{"mean", "std" (sample, 0 for one value), "n"}`` of the non-NaN `values`, or None."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def summarize(per_seed) -> dict:
    """Mean ± std over seeds of every (accuracy, fraction kept) point."""
    rows = {}

    def add(key, accs, kept):
        rows[key] = {"acc": mean_std(accs), "kept": mean_std(kept)}

    epochs = len(per_seed[0]["sgd"]["acc"])
    add("SGD (dense)", [s["sgd"]["acc"][-1] for s in per_seed], [1.0] * len(per_seed))
    trained = [s["sgd"]["acc"][-1] for s in per_seed if s["sgd"]["acc"][-1] >= 0.2]
    if trained and len(trained) < len(per_seed):
        add(f"SGD (dense), the {len(trained)} of {len(per_seed)} seeds that did not diverge",
            trained, [1.0] * len(trained))
    for e in range(epochs):
        tag = "end" if e == epochs - 1 else f"epoch {e + 1}"
        add(f"DessiLBI dense W ({tag})", [s["dessilbi"]["acc_w"][e] for s in per_seed],
            [1.0] * len(per_seed))
        add(f"DessiLBI W* ({tag})", [s["dessilbi"]["acc_w_star"][e] for s in per_seed],
            [s["dessilbi"]["support"][e]["weight_fraction"] for s in per_seed])
    for epoch in per_seed[0]["early_tickets"]:
        rs = [s["early_tickets"][epoch] for s in per_seed]
        add(f"early ticket (supp Γ at epoch {epoch}), retrained",
            [r["accuracy"] for r in rs], [r["weight_fraction"] for r in rs])
    if all("acc" in s["cs"] for s in per_seed):
        last = [s["cs"]["rounds"][-1] for s in per_seed]
        if all("val_accuracy_hard" in r for r in last):
            add("CS search model, hard mask, before ticket retraining",
                [r["val_accuracy_hard"] for r in last], [r["weight_fraction"] for r in last])
        add("CS ticket", [s["cs"]["acc"] for s in per_seed],
            [s["cs"]["weight_fraction"] for s in per_seed])
    if all("results" in s["tfmot"] for s in per_seed):
        for name in per_seed[0]["tfmot"]["results"]:
            rs = [s["tfmot"]["results"][name] for s in per_seed]
            add(f"TF-MOT magnitude @ {name}", [r["acc"] for r in rs],
                [r["weight_fraction"] for r in rs])
    path = {}
    for s in per_seed:
        for p in s["dessilbi"]["path"]:
            path.setdefault(p["step"], []).append(p)
    return {
        "rows": rows,
        "path": [
            {"step": step,
             "filters_kept": mean_std([p["filters_kept"] for p in ps]),
             "units_kept": mean_std([p["units_kept"] for p in ps]),
             "weight_fraction": mean_std([p["weight_fraction"] for p in ps])}
            for step, ps in sorted(path.items())
        ],
        "filters_total": per_seed[0]["dessilbi"]["support"][-1]["filters_total"],
        "units_total": per_seed[0]["dessilbi"]["support"][-1]["units_total"],
    }


def config_drift(results: dict) -> str:
    """A sentence when the benchmark's config changed since these results were made."""
    quick = bool(results["config"].get("train_limit"))  # --quick caps the data
    try:
        now = load_config(quick=quick)[0].optimizer.to_dict()
    except Exception:  # noqa: BLE001
        return ""
    used = results["config"]["optimizer"]
    changed = {k: (used.get(k), v) for k, v in now.items() if used.get(k) != v}
    if not changed:
        return ""
    return (f"`tf_dessilbi/configs/{CONFIG}` changed after this run started; these results use "
            + ", ".join(f"{k}={a!r}" for k, (a, b) in changed.items())
            + " where the config now says "
            + ", ".join(f"{k}={b!r}" for k, (a, b) in changed.items())
            + ". Re-run `python -m bench.run` to refresh.")

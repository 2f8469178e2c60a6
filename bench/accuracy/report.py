"""The accuracy benchmark's report: markdown tables and the two figures
(accuracy vs weights kept; DessiLBI's support along training).
"""

from __future__ import annotations

import bench
from bench.accuracy.summary import config_drift


def format_mean_std(x, scale=100.0, digits=2) -> str:
    """``"mean ± std"`` of a `bench.accuracy.summary.mean_std` result, times `scale`."""
    if x is None:
        return "n/a"
    return f"{scale * x['mean']:.{digits}f} ± {scale * x['std']:.{digits}f}"


def to_markdown(results: dict) -> str:
    """The accuracy-vs-sparsity section of ``bench/RESULTS.md``."""
    c = results["config"]
    s = results["summary"]
    n = len(results["seeds"])
    lines = [
        f"Config: {results['config_source']}; {c['num_epochs']} epochs, batch {c['batch_size']}, "
        f"optimizer `{c['optimizer']}`, schedule `{c['schedule']}`; the same epochs and "
        f"learning-rate schedule for every contender (TF-MOT gets the identical per-step "
        f"learning rates). {n} seeds (0…{n - 1}); mean ± sample std. "
        + (f"Quick mode: {c['train_limit']} training / {c['eval_limit']} test images."
           if c["train_limit"] else "Full Fashion-MNIST: 60,000 training / 10,000 test images.")
        + f" Wall time {results['time_s'] / 60:.1f} min.",
        "",
    ]
    drift = config_drift(results)
    if drift:
        lines += [f"**Note:** {drift}", ""]
    lines += [
        bench.md_table(
            ("model", "test accuracy %", "weights kept %"),
            [(k, format_mean_std(r["acc"]), format_mean_std(r["kept"]))
             for k, r in s["rows"].items()],
        ),
        "",
        "Weights kept = nonzero entries of the conv and dense kernels (all of them coupled "
        "or pruned alike), out of "
        f"{results['seeds'][0]['dessilbi']['support'][-1]['layers'] and sum(v[3] for v in results['seeds'][0]['dessilbi']['support'][-1]['layers'].values()):,}.",
    ]
    cs = results["seeds"][0]["cs"]
    if "settings" in cs:
        lines.append(f"\nCS ticket search (`tf_dessilbi.TicketSearch`), gate settings from "
                     f"{cs['settings']['source']}: `{ {k: v for k, v in cs['settings'].items() if k != 'source'} }`; "
                     "SGD with the same learning-rate schedule in every round and for the ticket.")
    tf = results["seeds"][0]["tfmot"]
    if "schedule" in tf:
        lines.append(f"\nTF-MOT {tf.get('tfmot')} on tf_keras {tf.get('tf_keras')} (separate process): "
                     f"`prune_low_magnitude` on every Conv2D/Dense, `{tf['schedule']}`, SGD with the "
                     "same per-step learning rates; accuracy of the stripped model.")
    for seed in results["seeds"]:
        for key in ("cs", "tfmot"):
            if "error" in seed[key]:
                lines.append(f"\n- seed {seed['seed']} {key}: {seed[key]['error'][:500]}")
    last = results["seeds"][0]["dessilbi"]["support"][-1]["layers"]
    lines += ["", "DessiLBI support at the end, seed 0 (per layer):", "",
              bench.md_table(("layer", "units kept", "weights kept"),
                             [(k, f"{v[0]}/{v[1]}", f"{v[2]}/{v[3]} ({100 * v[2] / v[3]:.2f} %)")
                              for k, v in last.items()])]
    return "\n".join(lines)


def path_markdown(results: dict) -> str:
    """The DessiLBI support path (about 12 samples), mean ± std over seeds."""
    s = results["summary"]
    path = s["path"]
    if not path:
        return "no support path recorded"
    pick = path[:: max(len(path) // 12, 1)]
    if pick[-1] is not path[-1]:
        pick.append(path[-1])
    return bench.md_table(
        ("step", f"conv filters in supp Γ (of {s['filters_total']})",
         f"units in supp Γ (of {s['units_total']})", "weights in supp Γ %"),
        [(p["step"], format_mean_std(p["filters_kept"], 1, 1),
          format_mean_std(p["units_kept"], 1, 1), format_mean_std(p["weight_fraction"], 100, 3))
         for p in pick],
    )


def plot(results: dict, accuracy_png: str, path_png: str) -> None:
    """Writes the accuracy-vs-kept and the support-path figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    styles = [("SGD", "k", "s"), ("DessiLBI dense", "tab:blue", "o"),
              ("DessiLBI W*", "tab:blue", "D"), ("early ticket", "tab:green", "^"),
              ("CS", "tab:red", "*"), ("TF-MOT", "tab:gray", "v")]
    floor = 0.01  # % kept; an empty support is drawn here (log axis)
    for name, r in s["rows"].items():
        if r["acc"] is None or r["kept"] is None:
            continue
        colour, marker = "tab:purple", "x"
        for prefix, c, m in styles:
            if name.startswith(prefix):
                colour, marker = c, m
        early = "(epoch" in name
        kept = max(100 * r["kept"]["mean"], floor)
        label = name + (" [0 kept: drawn at 0.01 %]" if 100 * r["kept"]["mean"] < floor else "")
        ax.errorbar(kept, 100 * r["acc"]["mean"],
                    xerr=min(100 * r["kept"]["std"], kept * 0.9), yerr=100 * r["acc"]["std"],
                    fmt=marker, color=colour, capsize=3, label=label, markersize=7,
                    alpha=0.45 if early else 1.0, mfc="none" if early else colour)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("weights kept (% of conv + dense kernels, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, FMNIST-CNN-S, {results['config']['num_epochs']} epochs, "
                 f"{len(results['seeds'])} seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(accuracy_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = [p["step"] for p in s["path"]]
    for key, label, total, colour in (
        ("filters_kept", "conv filters in supp Γ", s["filters_total"], "tab:blue"),
        ("units_kept", "all units (filters + neurons) in supp Γ", s["units_total"], "tab:orange"),
    ):
        mean = [p[key]["mean"] / total * 100 for p in s["path"]]
        std = [p[key]["std"] / total * 100 for p in s["path"]]
        ax.plot(steps, mean, color=colour, label=f"{label} (of {total})")
        ax.fill_between(steps, [m - d for m, d in zip(mean, std)],
                        [m + d for m, d in zip(mean, std)], color=colour, alpha=0.2)
    wf = [p["weight_fraction"]["mean"] * 100 for p in s["path"]]
    ax.plot(steps, wf, color="tab:green", label="weights in supp Γ")
    spe = results["seeds"][0]["steps_per_epoch"]
    for e in range(1, results["config"]["num_epochs"]):
        ax.axvline(e * spe, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("training step (dashed: epoch boundaries)")
    ax.set_ylabel("% in the support of Γ")
    ax.set_title("DessiLBI support along training (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)

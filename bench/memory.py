"""Bytes of optimizer state per model parameter: SGD, Adam, DessiLBI.

Counts the optimizer's own variables after it is built for the model
(slots such as momentum, Adam's moments, DessiLBI's V — Γ is computed from V — plus scalars
such as the iteration counter, learning rate, κ, μ, λ).

    python -m bench.memory [--json out.json]
"""

from __future__ import annotations


import bench

bench.quiet_tf()


def _nbytes(variable) -> int:
    import numpy as np

    size = int(np.prod(variable.shape)) if len(variable.shape) else 1
    return size * np.dtype(variable.dtype).itemsize


def measure(model, optimizer) -> dict:
    optimizer.build(model.trainable_variables)
    params = sum(_nbytes(v) // 4 for v in model.trainable_variables)
    variables = list(optimizer.variables)
    total = sum(_nbytes(v) for v in variables)
    per_param = [v for v in variables if len(v.shape)]
    slot_bytes = sum(_nbytes(v) for v in per_param)
    return {
        "model_params": params,
        "optimizer_variables": len(variables),
        "optimizer_bytes": total,
        "bytes_per_param": total / params,
        "slot_bytes_per_param": slot_bytes / params,
    }


def run(quick: bool = False) -> dict:
    import keras

    import tf_dessilbi
    from bench.accuracy.config import dessilbi_hparams
    from tf_dessilbi import models

    hp = dessilbi_hparams()["optimizer"]
    factories = {"FMNIST-CNN-S": models.fmnist_cnn_s}
    resnet20 = models.resnet20
    if not quick:
        factories["ResNet-20"] = lambda: resnet20(input_shape=(32, 32, 3), num_classes=10)
    optimizers = {
        "SGD (momentum 0.9)": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        "SGD (no momentum)": lambda: keras.optimizers.SGD(0.1),
        "Adam": lambda: keras.optimizers.Adam(1e-3),
        "DessiLBI (momentum 0.9)": lambda: tf_dessilbi.DessiLBI(**hp),
        "DessiLBI (no momentum)": lambda: tf_dessilbi.DessiLBI(**{**hp, "momentum": 0.0}),
    }
    out = {"models": {}, "notes": {}}
    if quick:
        out["notes"]["ResNet-20"] = "skipped in quick mode"
    for mname, factory in factories.items():
        rows = {}
        for oname, make in optimizers.items():
            model = factory()
            optimizer = make()
            rows[oname] = measure(model, optimizer)
            if hasattr(optimizer, "coupled_variables"):
                coupled = sum(
                    int(__import__("numpy").prod(v.shape))
                    for v, _ in optimizer.coupled_variables()
                )
                rows[oname]["coupled_fraction"] = coupled / rows[oname]["model_params"]
            keras.utils.clear_session()
        out["models"][mname] = rows
    return out


def to_markdown(results: dict) -> str:
    lines = [
        "Bytes of optimizer variables (all of `optimizer.variables`, float32) divided "
        "by the number of trainable model parameters. Per-parameter slots only in the "
        "second column (scalars excluded). DessiLBI keeps V only for coupled "
        "kernels (fraction of parameters in the last column; Γ = κ·prox(V) is "
        "computed where needed), so its cost is 4 B (momentum) + 4 B × coupled fraction.",
        "",
    ]
    for mname, rows in results["models"].items():
        lines.append(f"**{mname}** ({next(iter(rows.values()))['model_params']:,} parameters)")
        lines.append("")
        lines.append(bench.md_table(
            ("optimizer", "bytes / param (all)", "bytes / param (slots)",
             "optimizer variables", "coupled fraction"),
            [(o, f"{r['bytes_per_param']:.3f}", f"{r['slot_bytes_per_param']:.3f}",
              r["optimizer_variables"],
              f"{r['coupled_fraction']:.3f}" if "coupled_fraction" in r else "")
             for o, r in rows.items()]))
        lines.append("")
    for k, v in results.get("notes", {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def main(argv=None):
    bench.part_main(__doc__, run, to_markdown, 'small smoke run', argv)


if __name__ == "__main__":
    main()

"""Continuous Sparsification ticket search on Fashion-MNIST vs dense SGD.

FMNIST-CNN-S (all five conv/dense layers gated per weight, s₀ = 0,
λ = 1e-8, β_final = 200 annealed per step): 2 search rounds of E epochs
(rewind epoch 1), then the rewound ticket trained E epochs. Dense baseline:
the same model trained E epochs with the same optimizer (SGD lr 0.02,
Nesterov momentum 0.9; lr 0.1 diverges on this net without normalization,
dense included). Test accuracy on the 10,000 test images.

    python -m bench.cs_search [--quick] [--json out.json]
"""

from __future__ import annotations

import time

import bench

bench.quiet_tf()

LR = 0.02


def _settings(quick: bool) -> dict:
    if quick:
        return {"epochs": 2, "rounds": 2, "rewind_epoch": 1, "train_limit": 1280, "test_limit": 500}
    return {"epochs": 3, "rounds": 2, "rewind_epoch": 1, "train_limit": None, "test_limit": None}


def _optimizer():
    import keras

    return keras.optimizers.SGD(LR, momentum=0.9, nesterov=True)


def run(quick: bool = False) -> dict:
    import keras

    import tf_dessilbi
    from tf_dessilbi.training.data import fashion_mnist_datasets
    from tf_dessilbi.models import fmnist_cnn_s

    s = _settings(quick)
    train, test = fashion_mnist_datasets(128, train_limit=s["train_limit"], test_limit=s["test_limit"])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(0)
    t0 = time.time()
    dense = fmnist_cnn_s()
    dense.compile(optimizer=_optimizer(), loss=loss, metrics=["accuracy"])
    dense.fit(train, epochs=s["epochs"], verbose=0)
    dense_eval = dense.evaluate(test, verbose=0, return_dict=True)
    dense_s = time.time() - t0

    keras.utils.set_random_seed(0)
    t0 = time.time()
    search = tf_dessilbi.TicketSearch(
        fmnist_cnn_s, _optimizer, rounds=s["rounds"], epochs_per_round=s["epochs"],
        rewind_epoch=s["rewind_epoch"], final_beta=200.0, penalty=1e-8, per_step=True,
        loss=loss,
    )
    result = search.run(train, test)
    cs_s = time.time() - t0
    report = tf_dessilbi.sparsity_report(result.model)
    conv = [r for r in report if r.layer.startswith("conv")]
    stripped = tf_dessilbi.strip(result.model)
    stripped.compile(loss=loss, metrics=["accuracy"])
    stripped_eval = stripped.evaluate(test, verbose=0, return_dict=True)
    return {
        "settings": s,
        "lr": LR,
        "dense": {"test_accuracy": dense_eval["accuracy"], "wall_s": dense_s},
        "rounds": result.rounds,
        "ticket": {
            "test_accuracy": result.ticket_metrics["accuracy"],
            "stripped_test_accuracy": stripped_eval["accuracy"],
            "weight_fraction": report.weight_fraction,
            "conv_weight_fraction": sum(r.weights_kept for r in conv) / sum(r.weights_total for r in conv),
            "layers": {r.layer: r.weight_fraction for r in report},
            "wall_s": cs_s,
        },
    }


def to_markdown(results: dict) -> str:
    if "error" in results:
        return results["error"]
    s = results["settings"]
    t = results["ticket"]
    data = "full" if s["train_limit"] is None else f"{s['train_limit']} train / {s['test_limit']} test"
    lines = [
        f"FMNIST-CNN-S, Fashion-MNIST ({data}), SGD lr {results['lr']} Nesterov 0.9, batch 128. "
        f"CS: {s['rounds']} rounds × {s['epochs']} epochs, rewind epoch {s['rewind_epoch']}, "
        f"β_final 200 per step, λ 1e-8, s₀ 0, ticket trained {s['epochs']} epochs.",
        "",
        "| model | weights kept (all gated) | conv weights kept | test accuracy | wall s |",
        "|---|---:|---:|---:|---:|",
        f"| dense SGD | 100% | 100% | {100 * results['dense']['test_accuracy']:.2f}% | {results['dense']['wall_s']:.0f} |",
        f"| CS ticket | {100 * t['weight_fraction']:.2f}% | {100 * t['conv_weight_fraction']:.2f}% | "
        f"{100 * t['test_accuracy']:.2f}% (stripped: {100 * t['stripped_test_accuracy']:.2f}%) | {t['wall_s']:.0f} |",
        "",
        "| search round | weights kept | test acc. soft mask | test acc. hard mask |",
        "|---|---:|---:|---:|",
    ]
    for r in results["rounds"]:
        lines.append(
            f"| {r['round']} | {100 * r['weight_fraction']:.2f}% | "
            f"{100 * r.get('val_accuracy_soft', float('nan')):.2f}% | {100 * r.get('val_accuracy_hard', float('nan')):.2f}% |"
        )
    lines += ["", "Per layer kept by the ticket: " + ", ".join(
        f"{name} {100 * f:.1f}%" for name, f in t["layers"].items())]
    return "\n".join(lines)


def main(argv=None):
    bench.part_main(__doc__, run, to_markdown, '1,280 training images, 2-epoch rounds', argv)


if __name__ == "__main__":
    main()

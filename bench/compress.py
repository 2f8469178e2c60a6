"""Compressing a trained model to a MACs budget: every method against Torch-Pruning 1.6.

    python -m bench.compress [--targets 0.5 0.3] [--methods l1 dessilbi tp_l1 ...]
                             [--epochs 3] [--seed 0] [--latency] [--out bench/COMPRESS.md]

"The user's model" is the protocol's ResNet-20 trained dense with SGD for
E = 10 epochs (`bench.compress_dense`, saved once). Each method compresses it
to a fraction of its MACs (as `ShrinkReport` counts them) with the same
fine-tune budget (``--epochs`` passes over the protocol's batches, SGD
Nesterov 0.9, cosine from ``--lr`` to 0), and the result is shrunk:

* ``l1``, ``l2``, ``bn``, ``taylor``: `tf_dessilbi.Pruner` one-shot (global
  ranking, family-mean normalized), then the fine-tune;
* ``l1_iter``: `Pruner` with 3 iterative steps, one epoch of fine-tune each;
* ``dessilbi``: `DessiLBIWarmStart` (path over one epoch at α = ``--lr``),
  forked when supp Γ reaches the budget, trimmed, shrunk, then SGD for the
  rest of the budget;
* ``tp_l1``, ``tp_taylor``: Torch-Pruning's `MetaPruner` (global pruning,
  `GroupMagnitudeImportance(p=1)` / `GroupTaylorImportance`) on a PyTorch
  port of the same trained network (`bench.compress_torch`), its own
  fine-tune loop over the same batches and schedule.

Every run is cached in ``<WORK_DIR>/compress/`` (`protocol.run_cached`);
``--latency`` times the shrunk Keras models against the dense one as
SavedModel and TFLite at batch 1 and 128 (`bench.serving`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import bench

bench.quiet_tf()

from bench import compress_dense  # noqa: E402
from bench import protocol  # noqa: E402

_log = bench.logger("compress")
METHODS = ("l1", "dessilbi", "tp_l1", "taylor", "tp_taylor", "bn", "l2", "l1_iter")
LABELS = {
    "dense": "dense (SGD, E = 10)",
    "l1": "tf_dessilbi Pruner, filter L1, one-shot",
    "l2": "tf_dessilbi Pruner, filter L2, one-shot",
    "bn": "tf_dessilbi Pruner, BN γ (slimming), one-shot",
    "taylor": "tf_dessilbi Pruner, Taylor (Molchanov 2019), one-shot",
    "l1_iter": "tf_dessilbi Pruner, filter L1, 3 iterative steps",
    "dessilbi": "tf_dessilbi DessiLBI warm start → fork at budget",
    "tp_l1": "Torch-Pruning 1.6, group L1 (global)",
    "tp_taylor": "Torch-Pruning 1.6, group Taylor (global)",
}


def _work():
    return os.path.join(bench.WORK_DIR, "compress")


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _load_dense(args):
    import keras

    path = compress_dense.train_dense(args.dense_epochs, args.seed, args.limit)
    return keras.saving.load_model(path), path


def _fine_tune(model, data, steps, total, offset, lr):
    """Fits ``steps`` protocol batches (from batch ``offset``) on a cosine from ``lr`` over ``total``."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, max(1, total), alpha=0.0)

    class Shifted(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(keras.ops.cast(step, "int64") + offset)

        def get_config(self):
            return {"initial_learning_rate": lr, "decay_steps": total, "offset": offset}

    model.compile(optimizer=keras.optimizers.SGD(Shifted(), momentum=protocol.MOMENTUM, nesterov=True),
                  loss=_loss(), metrics=["accuracy"])
    history = model.fit(data.train.skip(offset), steps_per_epoch=steps, epochs=1, verbose=0)
    return [float(v) for v in history.history["loss"]]


def _evaluate(model, data) -> float:
    model.compile(loss=_loss(), metrics=["accuracy"])
    return float(model.evaluate(data.test, verbose=0)[1])


def _finish(small, report, data, result, name):
    result.update(
        accuracy=_evaluate(small, data), macs=report.macs_after, params=int(small.count_params()),
        widths=[int(r.units_after) for r in report.rows if r.kind == "Conv2D"])
    path = os.path.join(_work(), f"{name}.keras")
    small.compile()  # the fine-tune's optimizer is not saved
    small.save(path)
    result["model_path"] = path
    return result


def run_keras(method, target, args, dense, name) -> dict:
    import keras

    import tf_dessilbi

    keras.utils.clear_session()
    if method == "dessilbi" and args.epochs == 0:
        raise ValueError("dessilbi needs a fine-tune budget (its path runs in it): --epochs >= 1")
    data = protocol.load_data(args.seed, max(1, args.epochs), train_limit=args.limit or None,
                              test_limit=args.limit or None)
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    total = args.epochs * data.steps_per_epoch
    cost = tf_dessilbi.compress.CostModel(model)
    t0 = time.perf_counter()
    result = {"method": method, "target": target}
    if method == "dessilbi":
        ws = tf_dessilbi.DessiLBIWarmStart(model, macs=target, path_steps=data.steps_per_epoch,
                                           learning_rate=args.lr, round_to=args.round_to)
        model.compile(optimizer=ws.optimizer, loss=_loss())
        history = model.fit(data.train, steps_per_epoch=total, epochs=1, callbacks=[ws.fork], verbose=0)
        fork = ws.fork.fork_step or total
        small, report = ws.shrink()
        result.update(fork_step=fork, lambda_=ws.lambda_, mu=ws.mu,
                      support_history=ws.fork.history, path_loss=history.history["loss"],
                      accuracy_at_fork=_evaluate(small, data))
        result["train_loss"] = _fine_tune(small, data, total - fork, total, fork, args.lr) if fork < total else []
    else:
        importance = {"l1_iter": "l1"}.get(method, method)
        steps = 3 if method == "l1_iter" else 1
        pruner = tf_dessilbi.Pruner(model, importance, macs=target, iterative_steps=steps,
                                    round_to=args.round_to)
        scoring = data.batches(args.seed, 8)
        per_step = total // steps
        losses = []
        for i in range(steps):
            small = pruner.step(scoring)
            if i == 0:
                result["accuracy_before_fine_tune"] = _evaluate(small, data)
            n = per_step if i < steps - 1 else total - per_step * (steps - 1)
            if n > 0:
                losses += _fine_tune(small, data, n, total, i * per_step, args.lr)
        result["train_loss"] = losses
        report = pruner.reports[-1]  # MACs after: absolute, the last step's shrunk model
    result["wall_s"] = time.perf_counter() - t0
    result = _finish(small, report, data, result, name)
    result.update(macs_ratio=result["macs"] / cost.macs_dense, params_ratio=result["params"] / cost.params_dense)
    _log(f"{method} {target}: accuracy {result['accuracy']:.4f}, MACs {result['macs_ratio']:.3f}x, "
         f"params {result['params_ratio']:.3f}x ({result['wall_s']:.0f} s)")
    return result


def run_torch(method, target, args, dense) -> dict:
    from bench import compress_torch

    data = protocol.load_data(args.seed, max(1, args.epochs), train_limit=args.limit or None,
                              test_limit=args.limit or None)
    result = compress_torch.run_tp(dense, data, method.split("_", 1)[1], target, args.epochs,
                                   args.lr, args.seed, args.round_to)
    result["target"] = target
    return result


def run(args) -> dict:
    import keras

    dense, path = _load_dense(args)
    work = _work()
    tag = f"e{args.epochs}_s{args.seed}_r{args.round_to}" + (f"_limit{args.limit}" if args.limit else "")
    data = protocol.load_data(args.seed, 1, train_limit=args.limit or None, test_limit=args.limit or None)
    out = {"dense": {"accuracy": _evaluate(dense, data), "params": int(dense.count_params()),
                     "path": path}, "runs": {}, "args": vars(args)}
    import tf_dessilbi

    out["dense"]["macs"] = tf_dessilbi.compress.CostModel(dense).macs_dense
    for target in args.targets:
        for method in args.methods:
            name = f"{method}_{target}_{tag}"
            fn = ((lambda: run_torch(method, target, args, dense)) if method.startswith("tp_")
                  else (lambda: run_keras(method, target, args, dense, name)))
            try:
                out["runs"][name] = protocol.run_cached(work, name, fn)
            except Exception as e:  # noqa: BLE001 - one failing contender is reported, not fatal
                _log(f"{name} failed: {type(e).__name__}: {e}")
                out["runs"][name] = {"method": method, "target": target, "error": f"{type(e).__name__}: {e}"}
            keras.utils.clear_session()
    if args.latency:
        out["latency"] = protocol.run_cached(work, f"latency_{tag}", lambda: latency(out, args))
    return out


def latency(out, args) -> dict:
    """SavedModel and TFLite latency of each shrunk model and the dense one, batch 1 and 128."""
    import keras

    from bench import serving

    work = os.path.join(_work(), "serving")
    os.makedirs(work, exist_ok=True)
    models = {"dense": keras.saving.load_model(out["dense"]["path"], compile=False)}
    for name, r in out["runs"].items():
        if r.get("model_path"):
            models[name] = keras.saving.load_model(r["model_path"], compile=False)
    res = {}
    for batch in (1, 128):
        x = np.random.RandomState(0).randn(batch, 28, 28, 1).astype("float32")
        sm = {n: serving.saved_model(m, work, f"{n}_sm")[0] for n, m in models.items()}
        tfl = {}
        for n, m in models.items():
            interp = serving.interpreter(serving.tflite(m, work, n), x.shape)
            tfl[n] = interp
        calls = {f"sm:{n}": (lambda f=f: f(x)) for n, f in sm.items()}
        calls.update({f"tfl:{n}": (lambda f=f: f(x)) for n, f in tfl.items()})
        timing = serving.alternate_calls(calls, blocks=args.latency_blocks, per_block=5 if batch == 128 else 20)
        for key, t in timing.items():
            res[f"{key}:b{batch}"] = t["median_ms"]
    return res


def to_markdown(out) -> str:
    dense = out["dense"]
    lat = out.get("latency", {})
    lines = [f"Dense ResNet-20 (protocol, SGD E = {out['args']['dense_epochs']}, seed {out['args']['seed']}): "
             f"**{100 * dense['accuracy']:.2f} %**, {dense['macs']:,} MACs, {dense['params']:,} parameters.",
             "", "| target MACs | method | accuracy | Δ vs dense | MACs | params | before fine-tune | "
             "SavedModel b1 / b128 (× dense) | TFLite b1 / b128 (× dense) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def lat_cell(kind, name):
        vals = []
        for b in (1, 128):
            a, d = lat.get(f"{kind}:{name}:b{b}"), lat.get(f"{kind}:dense:b{b}")
            vals.append(f"{a:.2f} ms ({a / d:.2f}×)" if a and d else "—")
        return " / ".join(vals)

    for name, r in out["runs"].items():
        label = LABELS.get(r.get("method"), r.get("method"))
        if "error" in r:
            lines.append(f"| {r['target']}× | {label} | failed: {r['error'][:80]} | | | | | | |")
            continue
        before = r.get("accuracy_before_fine_tune", r.get("accuracy_at_fork"))
        lines.append(
            f"| {r['target']}× | {label} | {100 * r['accuracy']:.2f} % | "
            f"{100 * (r['accuracy'] - dense['accuracy']):+.2f} | {r['macs_ratio']:.3f}× | "
            f"{r['params_ratio']:.3f}× | {'—' if before is None else f'{100 * before:.2f} %'} | "
            f"{lat_cell('sm', name) if not r['method'].startswith('tp_') else 'n/a (PyTorch)'} | "
            f"{lat_cell('tfl', name) if not r['method'].startswith('tp_') else 'n/a (PyTorch)'} |")
    if lat:
        lines += ["", f"Dense latency: SavedModel {lat.get('sm:dense:b1', 0):.2f} / "
                      f"{lat.get('sm:dense:b128', 0):.2f} ms, TFLite {lat.get('tfl:dense:b1', 0):.2f} / "
                      f"{lat.get('tfl:dense:b128', 0):.2f} ms (batch 1 / 128, medians, 2 shared CPU cores)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=3,
                        help="fine-tune budget (epochs); 0: one-shot accuracy without fine-tune")
    parser.add_argument("--dense-epochs", type=int, default=protocol.EPOCHS)
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tune peak learning rate")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (smoke runs)")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--latency-blocks", type=int, default=6)
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    out = run(args)
    text = to_markdown(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

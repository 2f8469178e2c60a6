"""The step-time part of `bench.sparse_compare`: every Keras 3 contender's `fit`, side by side.

One process, blocks of ``block`` steps of each contender alternated over
``rounds`` rounds (odd rounds reversed); the median per-step wall and CPU
time ratio to dense SGD, with the quartiles.
"""

from __future__ import annotations

import statistics
import time

import bench
from bench import parity_recipe
from bench import protocol

# sparse_compare's DessiLBI (λ apart), read here without importing sparse_compare (which imports this).
DESSILBI = {k: v for k, v in parity_recipe.HPARAMS.items() if k != "lambda_"}
_log = bench.logger("sparse_compare")


def timing_run(rounds: int, block: int, limit: int = 0) -> dict:
    """Per-step wall and CPU time of every Keras 3 contender's fit, alternating blocks of ``block`` steps."""
    import keras

    import tf_dessilbi as tfd
    from bench import mask_methods
    from tf_dessilbi.sparse import snip

    keras.utils.clear_session()
    data, ds = mask_methods.timing_data(block, limit)
    steps = (rounds + 2) * block
    contenders = {}
    for name in ("dense", "gmp", "set", "rigl_erk"):
        model, cbs = mask_methods.make_contender(name, 0.9, 0, data, steps, timing=True)
        protocol.compile_model(model, block, rounds + 2)
        contenders[name] = (model, cbs)
    fixed = tfd.mask_model(protocol.build_model(0),
                           snip.snip_mask(protocol.build_model(0), data.batches(0, 1), 0.9,
                                          num_batches=1))
    contenders["fixed mask (SNIP/GraSP/IMP)"] = (protocol.compile_model(fixed, block, rounds + 2), [])
    gated = tfd.gate_model(protocol.build_model(0), granularity="weight", gate_init=0.0,
                           penalty=1e-8)
    contenders["cs"] = (protocol.compile_model(gated, block, rounds + 2), [
        tfd.callbacks.GateTemperature(final_beta=200.0, epochs=rounds + 2, steps_per_epoch=block)])
    lbi = protocol.build_model(0)
    lbi.compile(optimizer=tfd.DessiLBI(learning_rate=protocol.lr_schedule(block, rounds + 2),
                                       lambda_=3.0, structure="elementwise", **DESSILBI),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    contenders["dessilbi"] = (lbi, [])
    names = list(contenders)

    def run_block(name):
        model, cbs = contenders[name]
        c0, t0 = time.process_time(), time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=block, callbacks=cbs, verbose=0)
        return (time.perf_counter() - t0) / block, (time.process_time() - c0) / block

    for name in names:
        run_block(name)
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            w, c = run_block(name)
            wall[name].append(w)
            cpu[name].append(c)
        _log(f"timing round {i + 1}/{rounds}")

    def stats(values, base):
        ratios = sorted(a / b for a, b in zip(values, base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        return [statistics.median(ratios), q[0], q[2]]

    return {name: {"ms": 1000 * statistics.median(wall[name]), "wall": stats(wall[name], wall["dense"]),
                   "cpu": stats(cpu[name], cpu["dense"]), "rounds": rounds, "block": block}
            for name in names}

"""The Continuous Sparsification ticket of the accuracy benchmark (`tf_dessilbi.TicketSearch`).

Gate settings come from ``tf_dessilbi/configs/fmnist_cs.py`` (schema defaults when it
does not load); every round and the ticket use the run's SGD schedule.
"""

from __future__ import annotations

import os
import time

import bench
from bench.accuracy.config import sgd_config


def load_cs_gates():
    """The gate settings of ``tf_dessilbi/configs/fmnist_cs.py`` (or the schema defaults)."""
    from tf_dessilbi.training import config_lib

    path = os.path.join(bench.REPO_ROOT, "tf_dessilbi", "configs", "fmnist_cs.py")
    try:
        return config_lib.load_config(path).gates, "`tf_dessilbi/configs/fmnist_cs.py`"
    except Exception as e:  # noqa: BLE001
        return config_lib.base_config().gates, f"schema defaults ({type(e).__name__}: {e})"


def cs_ticket(config, data, steps_per_epoch: int) -> dict:
    """A Continuous Sparsification ticket (`tf_dessilbi.TicketSearch`), or ``{"error": why}``.

    Search: ``gates.rounds`` rounds of ``num_epochs`` epochs with the run's
    SGD schedule; the ticket is then trained ``num_epochs`` epochs from the
    rewind point, again with the same schedule (a fresh optimizer per fit).
    """
    import keras

    from tf_dessilbi import TicketSearch, models
    from tf_dessilbi.training import components as train

    gates, source = load_cs_gates()
    sgd = sgd_config(config)
    epochs = config.num_epochs
    keras.utils.set_random_seed(config.seed)
    t0 = time.time()
    try:
        search = TicketSearch(
            lambda: models.fmnist_cnn_s(input_shape=data.input_shape, num_classes=data.num_classes),
            lambda: train.build_optimizer(sgd, None, steps_per_epoch),
            rounds=int(gates.rounds),
            epochs_per_round=epochs,
            rewind_epoch=min(int(gates.rewind_epoch), epochs),
            final_beta=float(gates.final_beta),
            penalty=float(gates.penalty),
            per_step=bool(gates.per_step),
            ticket_epochs=epochs,
            granularity=gates.granularity,
            gate_init=float(gates.gate_init),
        )
        result = search.run(data.train, data.eval, steps_per_epoch=steps_per_epoch)
    except Exception as e:  # noqa: BLE001
        return {"error": f"failed: TicketSearch: {type(e).__name__}: {e}"}
    return {
        "acc": float(result.ticket_metrics.get("accuracy", float("nan"))),
        "weight_fraction": float(result.weight_fraction),
        "rounds": result.rounds,
        "settings": {"source": source, "rounds": int(gates.rounds), "epochs_per_round": epochs,
                     "rewind_epoch": min(int(gates.rewind_epoch), epochs),
                     "final_beta": float(gates.final_beta), "penalty": float(gates.penalty),
                     "granularity": gates.granularity, "gate_init": float(gates.gate_init),
                     "per_step": bool(gates.per_step), "ticket_epochs": epochs},
        "time_s": time.time() - t0,
    }

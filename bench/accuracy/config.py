"""The accuracy benchmark's configuration: the Fashion-MNIST DessiLBI config,
the early-ticket epochs, the SGD variant of the config and the per-step
learning-rate table handed to tf_keras.
"""

from __future__ import annotations

import os

import bench


log = bench.logger("accuracy")  # a progress line on stderr, time-stamped


CONFIG = "fmnist_dessilbi_protocol_e3.py"  # the protocol of bench/protocol.py at E = 3
CLI_CONFIG = "fmnist_dessilbi.py"  # the CLI's default: the hyperparameters of the step-time parts


def load_config(quick: bool, name: str = CONFIG):
    """The DessiLBI config ``tf_dessilbi/configs/<name>`` for Fashion-MNIST (and where it came from).

    ``name`` defaults to `CONFIG`, the accuracy benchmark's protocol config;
    `dessilbi_hparams` reads `CLI_CONFIG`.
    """
    from tf_dessilbi.training import config_lib

    path = os.path.join(bench.REPO_ROOT, "tf_dessilbi", "configs", name)
    config = None
    if os.path.exists(path):
        try:
            config = config_lib.load_config(path)
            source = f"`tf_dessilbi/configs/{name}`"
        except Exception as e:  # noqa: BLE001 - a config being edited
            why = f"tf_dessilbi/configs/{name} failed to load: {type(e).__name__}: {e}"
    else:
        why = f"tf_dessilbi/configs/{name} not there yet"
    if config is None:
        config = config_lib.base_config()
        source = f"`tf_dessilbi.training.config_lib.base_config()` ({why})"
    config.data.name = "fashion_mnist"
    config.model.name = "fmnist_cnn_s"
    config.optimizer.name = "dessilbi"
    config.batch_size = 128
    if quick:
        config.num_epochs = 2
        config.fork.last_epochs = min(config.fork.last_epochs, 1)
        config.data.train_limit = 512
        config.data.eval_limit = 500
    return config, source


def early_ticket_epochs(config) -> list:
    """The (at most two) epochs whose supp Γ is retrained as an early ticket."""
    epochs = [e for e in tuple(config.early_tickets.epochs) if e < config.num_epochs]
    return sorted(epochs)[:2] or [1, 2]


def lr_table(config, steps_per_epoch: int) -> list:
    """The learning rate at every step of the run (to give tf_keras the same schedule)."""
    import keras

    from tf_dessilbi.training import components as train

    lr = train.learning_rate_schedule(config, steps_per_epoch)
    total = config.num_epochs * steps_per_epoch
    if callable(lr):
        return [float(keras.ops.convert_to_numpy(lr(s))) for s in range(total)]
    return [float(lr)] * total


def sgd_config(config):
    """A copy of `config` with the SGD optimizer (same momentum and schedule)."""
    c = config.copy_and_resolve_references()
    c.optimizer.name = "sgd"
    return c


def dessilbi_hparams() -> dict:
    """DessiLBI keyword arguments from the Fashion-MNIST config.

    Reads ``tf_dessilbi/configs/fmnist_dessilbi.py`` (via `load_config`)
    so the benchmarks and the configs never disagree.

    Returns:
        ``{"source": str, "optimizer": {DessiLBI kwargs, lr as a float},
        "structure": config.dessilbi.structure}``.
    """
    config, source = load_config(quick=False, name=CLI_CONFIG)
    o, d = config.optimizer, config.dessilbi
    opt = {
        "learning_rate": float(o.learning_rate),
        "kappa": float(d.kappa),
        "mu": float(d.mu),
        "lambda_": float(d.lambda_),
        "momentum": float(o.momentum),
        "nesterov": bool(o.nesterov),
        "lambda_scaling": d.lambda_scaling,
    }
    return {"source": source, "optimizer": opt, "structure": d.structure}

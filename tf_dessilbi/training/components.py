"""The components of a training run, picked by name from small dicts.

`STRATEGIES` (``config.strategy``), the learning-rate schedules
(``config.schedule.name``), the optimizers (``config.optimizer.name``) and
the models (``config.model.name``, via `tf_dessilbi.models.MODELS`). The
sparsity methods (gating, masks, ...) are in `tf_dessilbi.training.methods`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_dessilbi import models as models_lib
from tf_dessilbi.dessilbi.joint_groups import joint_unit_groups
from tf_dessilbi.dessilbi.optimizer import DessiLBI
from tf_dessilbi.training import dessilbi_config

STRATEGIES = {
    "default": lambda config: tf.distribute.get_strategy(),
    "mirrored": lambda config: _mirrored_strategy(),
    "multi_worker": lambda config: tf.distribute.MultiWorkerMirroredStrategy(),
    "tpu": lambda config: _tpu_strategy(config.tpu_address),
}


def _mirrored_strategy():
    """All local GPUs, or all logical CPU devices on a machine without GPUs.

    On CPUs the gradients are reduced through one device: collective ops
    gain nothing there, and their process-global instance keys collide when
    one process builds several strategies (as tests do).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )


def _tpu_strategy(address: str):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker job."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def learning_rate_schedule(config, steps_per_epoch: int):
    """The learning rate (float or schedule) described by ``config.schedule``."""
    lr = config.optimizer.learning_rate
    s = config.schedule
    total = config.num_epochs * steps_per_epoch
    if s.name == "constant":
        return lr
    if s.name == "cosine":
        warmup = int(s.warmup_epochs * steps_per_epoch)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr,
            decay_steps=max(total - warmup, 1),
            alpha=s.final_fraction,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    if s.name == "step":
        epochs = list(range(s.step_epochs, config.num_epochs, s.step_epochs))
    else:
        epochs = list(s.boundaries)
    if not epochs:
        return lr
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[e * steps_per_epoch for e in epochs],
        values=[lr * s.decay_factor**i for i in range(len(epochs) + 1)],
    )


def _structure(config, model):
    from tf_dessilbi.dessilbi import structures

    return structures.named_structure(config.dessilbi.structure, model)


def build_optimizer(config, model, steps_per_epoch: int):
    """SGD or DessiLBI from ``config.optimizer`` (``config.dessilbi``) and ``config.schedule``."""
    o = config.optimizer
    common = dict(
        learning_rate=learning_rate_schedule(config, steps_per_epoch),
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay or None,
        clipnorm=o.clipnorm or None,
    )
    if o.name == "sgd":
        return keras.optimizers.SGD(**common)
    return DessiLBI(
        **dessilbi_config.dessilbi_kwargs(config),
        structure=_structure(config, model),
        unit_groups=joint_unit_groups(model) if o.joint_groups else None,  # deprecated
        **common,
    )


def build_model(config, input_shape, num_classes) -> keras.Model:
    """The dense model named by ``config.model.name``."""
    kwargs = dict(input_shape=input_shape, num_classes=num_classes)
    if config.model.weight_decay:
        kwargs["weight_decay"] = config.model.weight_decay
    return models_lib.get_model(config.model.name, **kwargs)


def evaluate_model(model, dataset, steps) -> dict:
    """``{"loss", "accuracy"}`` of a compiled model on `dataset`."""
    loss, accuracy = model.evaluate(dataset, steps=steps or None, verbose=0)[:2]
    return {"loss": float(loss), "accuracy": float(accuracy)}

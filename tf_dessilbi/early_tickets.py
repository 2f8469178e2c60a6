"""Winning tickets at early epochs: retrain the support of Γ found early.

The DessiLBI paper's experiment (Fu et al., ICML 2020, §5 "lottery"): the
filters that enter supp(Γ) early in training form a sparse subnetwork that,
retrained from the initial (or slightly rewound) weights with its mask fixed,
reaches nearly the accuracy of the dense run ("gamma_epoch 35" of 200 in the
authors' CIFAR scripts).

* `SupportSnapshots` (a callback) saves the support of Γ at chosen epochs to
  ``<dir>/support_epoch<E>.npz``, and the weights at a rewind epoch.
* `retrain_ticket` resets a model to the saved weights, applies the mask and
  trains it with the mask held fixed (a kernel constraint applied by the
  optimizer after every update).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import keras
import numpy as np

from tf_dessilbi.sparsity import unwrap_optimizer


def support_masks(model: keras.Model, optimizer) -> dict:
    """``{kernel_path: bool mask}`` of supp(Γ) for every coupled kernel."""
    optimizer = unwrap_optimizer(optimizer)
    masks = {}
    for variable in model.trainable_variables:
        support = optimizer.support(variable)
        if support is not None:
            masks[variable.path] = keras.ops.convert_to_numpy(support)
    return masks


class SupportSnapshots(keras.callbacks.Callback):
    """Saves supp(Γ) at the end of the given (1-based) epochs.

    Args:
        directory: where ``support_epoch<E>.npz`` files go.
        epochs: the epochs to snapshot.
        rewind_epoch: also save all weights at the end of this epoch to
            ``weights_epoch<E>.npz`` (0: none; the initial weights are saved
            by the caller before training).
    """

    def __init__(self, directory: str, epochs: Sequence[int], rewind_epoch: int = 0):
        super().__init__()
        self.directory = directory
        self.epochs = set(int(e) for e in epochs)
        self.rewind_epoch = int(rewind_epoch)

    def on_epoch_end(self, epoch, logs=None):
        epoch += 1
        os.makedirs(self.directory, exist_ok=True)
        if epoch in self.epochs:
            masks = support_masks(self.model, self.model.optimizer)
            np.savez(support_file(self.directory, epoch), **masks)
        if epoch == self.rewind_epoch:
            save_weights(weights_file(self.directory, epoch), self.model)


def support_file(directory: str, epoch: int) -> str:
    return os.path.join(directory, f"support_epoch{epoch}.npz")


def load_support(directory: str, epoch: int) -> dict:
    """The ``{kernel_path: bool mask}`` saved by `SupportSnapshots` at `epoch`."""
    with np.load(support_file(directory, epoch)) as data:
        return {key: data[key] for key in data.files}


def weights_file(directory: str, epoch: int) -> str:
    return os.path.join(directory, f"weights_epoch{epoch}.npz")


def save_weights(filename: str, model: keras.Model) -> None:
    """All model weights, in `model.weights` order, to ``.npz``."""
    np.savez(filename, *[keras.ops.convert_to_numpy(w) for w in model.weights])


def load_weights(filename: str) -> list:
    with np.load(filename) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


class _FixedMask(keras.constraints.Constraint):
    """Keeps a kernel at zero outside a fixed mask (applied after each update)."""

    def __init__(self, mask):
        self.mask = np.asarray(mask)

    def __call__(self, w):
        return w * keras.ops.cast(self.mask, w.dtype)


def apply_fixed_masks(model: keras.Model, masks: dict) -> None:
    """Zeroes each masked kernel outside its mask and keeps it so in training.

    Raises:
        ValueError: a mask names no model variable, or has the wrong shape.
    """
    by_path = {v.path: v for v in model.trainable_variables}
    for path, mask in masks.items():
        variable = by_path.get(path)
        if variable is None:
            raise ValueError(
                f"Ticket mask for {path!r} matches no trainable variable of "
                f"{model.name!r}; variables: {sorted(by_path)[:12]}"
            )
        if tuple(mask.shape) != tuple(variable.shape):
            raise ValueError(
                f"Ticket mask for {path!r} has shape {mask.shape}, the "
                f"variable {tuple(variable.shape)}."
            )
        constraint = _FixedMask(mask)
        variable.assign(constraint(variable))
        variable.constraint = constraint


def retrain_ticket(
    build_model: Callable[[], keras.Model],
    start_weights: list,
    masks: dict,
    train_ds,
    eval_ds,
    epochs: int,
    steps_per_epoch: int,
    make_optimizer: Callable[[], keras.optimizers.Optimizer],
    eval_steps: Optional[int] = None,
    jit_compile: bool = False,
    verbose: int = 0,
) -> dict:
    """Trains the masked subnetwork from `start_weights`; returns its results.

    Args:
        build_model: returns a fresh model of the trained architecture (call
            it inside the distribution strategy's scope).
        start_weights: the weights to start from (initial or rewound), in
            ``model.weights`` order.
        masks: ``{kernel_path: bool mask}`` (from `support_masks`).
        train_ds: training dataset (repeating).
        eval_ds: evaluation dataset.
        epochs: training epochs.
        steps_per_epoch: batches per epoch.
        make_optimizer: returns a fresh optimizer (e.g. SGD with the run's
            learning rate schedule).
        eval_steps: evaluation batches (None: all).
        jit_compile: compile with XLA. Defaults to `False`.
        verbose: Keras verbosity. Defaults to `0`.

    Returns:
        ``{"accuracy", "loss", "weights_kept", "weights_total"}`` of the
        retrained ticket on `eval_ds`.
    """
    model = build_model()
    model.set_weights(start_weights)
    # Paths differ between two builds only by Keras' unique-name suffixes,
    # so match the masks to this model by variable order.
    source_paths = list(masks)
    model_paths = [v.path for v in model.trainable_variables]
    if not set(source_paths) <= set(model_paths):
        raise ValueError(
            f"Ticket masks {source_paths[:4]}… do not match the variables of "
            f"the rebuilt model {model_paths[:4]}…; build it with the same "
            "layer names."
        )
    apply_fixed_masks(model, masks)
    model.compile(
        optimizer=make_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose
    )
    loss, accuracy = model.evaluate(eval_ds, steps=eval_steps, verbose=0)[:2]
    kept = sum(int(np.sum(m)) for m in masks.values())
    total = sum(int(np.size(m)) for m in masks.values())
    return {
        "accuracy": float(accuracy),
        "loss": float(loss),
        "weights_kept": kept,
        "weights_total": total,
    }

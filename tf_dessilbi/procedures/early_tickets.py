"""Winning tickets at early epochs: retrain the support of Γ found early.

The DessiLBI paper's experiment (Fu et al., ICML 2020, §5 "lottery"): the
filters that enter supp(Γ) early in training form a sparse subnetwork that,
retrained from the initial (or slightly rewound) weights with its mask fixed,
reaches nearly the accuracy of the dense run ("gamma_epoch 35" of 200 in the
authors' CIFAR scripts).

* `SupportSnapshots` (a callback) saves the support of Γ at chosen epochs to
  ``<dir>/support_epoch<E>.npz``, and the weights at a rewind epoch.
* `ticket_with_controls` retrains a ticket and, under the same recipe and
  budget, the two controls of Ma et al. (2021) — the same mask from a random
  re-initialization, a random mask with the same layer-wise densities — and
  returns the verdict (`tf_dessilbi.procedures.sanity`).
* `retrain_ticket` resets a model to the saved weights, wraps its masked
  layers in `tf_dessilbi.layers.MaskedLayer` (the package's one fixed-mask
  mechanism; the layers' own constraints are left alone) and trains it with
  the mask held fixed. A support that is empty in some layer is reported as
  such (``"empty_layers"``) and not retrained: that subnetwork outputs a
  constant.

Masks are `tf_dessilbi.masks.Mask` values keyed by layer and weight name, so
they match a rebuilt model of the same architecture whatever Keras' unique
variable-path suffixes.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import keras
import numpy as np

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.layers.masked import mask_model


def support_masks(model: keras.Model, optimizer) -> masks_lib.Mask:
    """supp(Γ) of every coupled kernel, as a `Mask`."""
    return masks_lib.OptimizerSupport(optimizer).mask(model)


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
            support_masks(self.model, self.model.optimizer).save(support_file(self.directory, epoch))
        if epoch == self.rewind_epoch:
            save_weights(weights_file(self.directory, epoch), self.model)


def support_file(directory: str, epoch: int) -> str:
    return os.path.join(directory, f"support_epoch{epoch}.npz")


def load_support(directory: str, epoch: int) -> masks_lib.Mask:
    """The support `Mask` saved by `SupportSnapshots` at `epoch`."""
    return masks_lib.Mask.load(support_file(directory, epoch))


def weights_file(directory: str, epoch: int) -> str:
    return os.path.join(directory, f"weights_epoch{epoch}.npz")


def save_weights(filename: str, model: keras.Model) -> None:
    """All model weights, in `model.weights` order, to ``.npz``."""
    np.savez(filename, *[keras.ops.convert_to_numpy(w) for w in model.weights])


def load_weights(filename: str) -> list:
    with np.load(filename) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _start(build_model, start_weights, masks):
    """``(model at start_weights, resolved masks, counts)``; raises when the masks do not fit."""
    model = build_model()
    model.set_weights(start_weights)
    masks = masks_lib.resolve(masks, model)
    masks_lib.apply_to(masks, model)  # raises on keys or shapes that do not fit
    counts = {
        "weights_kept": masks.weights_kept,
        "weights_total": masks.weights_total,
        "empty_layers": sorted(k.split("/")[0] for k, m in masks.weights.items() if not m.any()),
    }
    return model, masks, counts


def _empty_support_words(empty_layers, masks) -> str:
    """Which layers a mask empties; an empty support says so instead of naming every layer."""
    layers = {k.split("/")[0] for k in masks.weights}
    if len(empty_layers) > 1 and set(empty_layers) == layers:
        return f"the support is empty (all {len(layers)} masked layers keep no weight)"
    return f"layer(s) {', '.join(empty_layers)} keep no weight"


def retrain_ticket(
    build_model: Callable[[], keras.Model],
    start_weights: list,
    masks: masks_lib.Mask,
    train_ds,
    eval_ds,
    epochs: int,
    steps_per_epoch: int,
    make_optimizer: Callable[[], keras.optimizers.Optimizer],
    eval_steps: Optional[int] = None,
    jit_compile: bool = False,
    verbose: int = 0,
    keep_model: bool = False,
) -> dict:
    """Trains the masked subnetwork from `start_weights`; returns its results.

    Args:
        build_model: returns a fresh model of the trained architecture (call
            it inside the distribution strategy's scope).
        start_weights: the weights to start from (initial or rewound), in
            ``model.weights`` order.
        masks: the ticket's `Mask` (from `support_masks` / `load_support`).
        train_ds: training dataset (repeating).
        eval_ds: evaluation dataset.
        epochs: training epochs.
        steps_per_epoch: batches per epoch.
        make_optimizer: returns a fresh optimizer (e.g. SGD with the run's
            learning rate schedule).
        eval_steps: evaluation batches (None: all).
        jit_compile: compile with XLA. Defaults to `False`.
        verbose: Keras verbosity. Defaults to `0`.
        keep_model: also return the trained masked model as ``"model"``.
            Defaults to `False`.

    Returns:
        ``{"accuracy", "loss", "weights_kept", "weights_total",
        "empty_layers"}`` of the retrained ticket on `eval_ds`; when a layer
        keeps nothing, ``accuracy`` and ``loss`` are None and nothing is
        trained.

    Raises:
        ValueError: the masks do not fit the rebuilt model.
    """
    model, masks, counts = _start(build_model, start_weights, masks)
    if counts["empty_layers"]:
        return {"accuracy": None, "loss": None, **counts}
    model = mask_model(model, masks)
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
    result = {"accuracy": float(accuracy), "loss": float(loss), **counts}
    if keep_model:
        result["model"] = model
    return result


def ticket_with_controls(
    build_model: Callable[[], keras.Model],
    start_weights: list,
    masks: masks_lib.Mask,
    train_ds,
    eval_ds,
    epochs: int,
    steps_per_epoch: int,
    make_optimizer: Callable[[], keras.optimizers.Optimizer],
    dense_accuracy: float,
    *,
    seed: int = 0,
    tolerance: float = 0.005,
    margin: float = 0.0,
    eval_steps: Optional[int] = None,
    callbacks=(),
) -> dict:
    """An early ticket and its two lottery-ticket controls, with the verdict.

    The ticket (``masks`` from ``start_weights``), the same mask from a fresh
    initialization (drawn after ``keras.utils.set_random_seed(seed + 1)``)
    and a random mask with the ticket's layer-wise densities (from
    ``start_weights``) are each trained ``epochs × steps_per_epoch`` steps
    with a fresh ``make_optimizer()`` (`tf_dessilbi.procedures.sanity.Recipe`).

    Args:
        build_model, start_weights, masks, train_ds, eval_ds, epochs,
            steps_per_epoch, make_optimizer, eval_steps: as `retrain_ticket`.
        dense_accuracy: the accuracy the ticket must match (the dense run's).
        seed: seeds the controls. Defaults to `0`.
        tolerance, margin: see `tf_dessilbi.procedures.sanity.SanityResult`.
        callbacks: extra `fit` callbacks of every training run.

    Returns:
        ``{"ticket": {"accuracy", "loss"}, "sanity": SanityResult.to_dict(),
        "verdict", "winning", "weights_kept", "weights_total",
        "empty_layers"}``. A mask that empties a layer is not trained:
        ``ticket`` and ``sanity`` are None and the verdict says which layers.

    Raises:
        ValueError: the masks do not fit the model, a bad argument, or a
            ``build_model`` that seeds itself (the re-initialization control
            would then be the ticket).
    """
    from tf_dessilbi.procedures import sanity as sanity_lib

    recipe = sanity_lib.Recipe(build_model, make_optimizer, train_ds, eval_ds, epochs,
                               steps_per_epoch, eval_steps=eval_steps, callbacks=callbacks)
    dense_accuracy = float(dense_accuracy)
    model, masks, out = _start(build_model, start_weights, masks)
    if out["empty_layers"]:
        return {**out, "ticket": None, "sanity": None, "winning": False,
                "verdict": "not retrained: " + _empty_support_words(out["empty_layers"], masks)}
    keras.utils.set_random_seed(int(seed) + 1)  # what the re-initialization control will draw
    probe = [keras.ops.convert_to_numpy(v) for v in build_model().weights]
    if len(probe) == len(start_weights) and all(
            np.array_equal(a, np.asarray(b)) for a, b in zip(probe, start_weights)):
        raise ValueError(
            "ticket_with_controls(): `build_model()` returned the start weights after "
            "keras.utils.set_random_seed(seed + 1): it sets the random seed itself, so the "
            "'random re-initialization' control would retrain the ticket. Build without "
            "seeding (the controls seed it)."
        )
    # θ_k in the recipe's variable order (the masked model's non-mask variables).
    state = [np.array(keras.ops.convert_to_numpy(v))
             for v in sanity_lib.Recipe.state(mask_model(model, masks))]
    _, ticket = recipe.train(masks, weights=state)
    sanity = sanity_lib.run_sanity_checks(recipe, masks, state, dense_accuracy,
                                          ticket["accuracy"], seed=seed, tolerance=tolerance,
                                          margin=margin)
    return {**out, "ticket": ticket, "sanity": sanity.to_dict(), "winning": sanity.winning,
            "verdict": sanity.verdict}

"""Sanity checks for lottery tickets (Ma et al., NeurIPS 2021).

Ma, Yuan, Wu, Rabbani, Foroosh, Fraser, Gu, Wang, "Sanity checks for
lottery tickets: does your winning ticket really win the jackpot?"
(arXiv 2107.00166). A sparse subnetwork (mask m, starting weights θ_k) is a
*winning ticket* only if, trained under the same recipe and budget,

1. it matches the dense network: acc(m, θ_k) ≥ acc(dense) − tolerance;
2. it beats the same mask with a random re-initialization θ':
   acc(m, θ_k) > acc(m, θ') + margin;
3. it beats a random mask m̃ with the same layer-wise densities, trained
   from the same θ_k: acc(m, θ_k) > acc(m̃, θ_k) + margin.

`Recipe` is that fixed recipe (IMP trains its rounds with it too);
`random_mask_like` builds m̃; `run_sanity_checks` trains both controls with
the recipe that trained the ticket and returns a `SanityResult` whose ``verdict`` reads
"winning ticket: yes" or "winning ticket: no (...)" with the margins.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib


def first_batch(data, name: str):
    """The first batch of ``data``; a clear error when there is none."""
    if data is None:
        raise ValueError(f"`{name}` must be a dataset of (x, y) batches. Received: {name}=None")
    for batch in data:
        return batch
    raise ValueError(f"`{name}` is an empty dataset: no batch to train or evaluate on.")


class Recipe:
    """One training recipe, the same for every round and every control.

    ``train(mask, weights, seed)``: build a fresh model (after
    ``keras.utils.set_random_seed(seed)`` when given), wrap it with
    `tf_dessilbi.layers.mask_model` and the mask, load ``weights`` (the
    non-mask variables, as from `state`), compile with a fresh
    ``make_optimizer()``, fit ``epochs × steps_per_epoch`` steps, evaluate.
    """

    def __init__(self, build_model: Callable, make_optimizer: Callable, train_data, eval_data,
                 epochs: int, steps_per_epoch: int, *, loss=None, eval_steps=None,
                 callbacks=(), strategy=None, verbose: int = 0):
        if not callable(build_model):
            raise TypeError(f"`build_model` must be callable() -> keras.Model. Received: {build_model!r}")
        if not callable(make_optimizer):
            raise TypeError(
                f"`make_optimizer` must be callable() -> optimizer. Received: {make_optimizer!r}"
            )
        self.build_model = build_model
        self.make_optimizer = make_optimizer
        self.train_data = train_data
        self.eval_data = eval_data
        self.epochs = _validate.positive_int("epochs_per_round", epochs)
        self.steps_per_epoch = _validate.positive_int("steps_per_epoch", steps_per_epoch)
        self.eval_steps = None if eval_steps is None else _validate.positive_int("eval_steps", eval_steps)
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.callbacks = list(callbacks or [])
        self.strategy = strategy
        self.verbose = verbose

    def _scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @staticmethod
    def state(model) -> list:
        """The model's variables other than the fixed masks (what rewinding restores)."""
        from tf_dessilbi.layers import MaskedLayer

        mask_ids = {id(w.weight_mask) for w in masks_lib.find_wrappers(model, MaskedLayer)}
        return [v for v in model.weights if id(v) not in mask_ids]

    def build(self, mask=None, weights=None, seed=None) -> keras.Model:
        from tf_dessilbi.layers import mask_model

        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        with self._scope():
            model = self.build_model()
            _validate.model(model, "build_model")
            model = mask_model(model, mask)
            if weights is not None:
                variables = self.state(model)
                if len(variables) != len(weights):
                    raise ValueError(
                        f"Rewinding: the model has {len(variables)} variables, the saved state {len(weights)}."
                    )
                for variable, value in zip(variables, weights):
                    variable.assign(value)
            model.compile(optimizer=self.make_optimizer(), loss=self.loss, metrics=["accuracy"])
        return model

    def fit(self, model, extra_callbacks=()):
        model.fit(self.train_data, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                  callbacks=self.callbacks + list(extra_callbacks), verbose=self.verbose)

    def evaluate(self, model) -> dict:
        result = model.evaluate(self.eval_data, steps=self.eval_steps, verbose=0, return_dict=True)
        return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}

    def train(self, mask=None, weights=None, seed=None, extra_callbacks=()):
        """``(model, {"loss", "accuracy"})`` of one training run (see the class docstring)."""
        model = self.build(mask, weights, seed)
        self.fit(model, extra_callbacks)
        return model, self.evaluate(model)


def random_mask_like(mask: masks_lib.Mask, seed: int = 0, units: bool = False) -> masks_lib.Mask:
    """A uniformly random mask with exactly the same kept count in every weight.

    Args:
        mask: the ticket's `Mask` (its ``weights``; unit masks are dropped:
            a random mask of the same layer-wise density is elementwise).
        seed: NumPy seed. Defaults to `0`.
        units: draw whole output units instead (the last axis: conv
            filters, dense neurons): in every weight as many units as the
            ticket has with a kept weight, at random, each kept whole. The
            like-for-like control of a structured ticket (the same widths,
            other filters); the kept count matches when the ticket keeps
            whole units (group supports). Defaults to `False`.

    Returns:
        A `Mask` with, for every key, ``m̃.sum() == m.sum()`` at random places
        (``units``: the same number of whole units at random places).

    Raises:
        TypeError: ``mask`` is not a `Mask`.
        ValueError: the mask has no weight entries.
    """
    if not isinstance(mask, masks_lib.Mask):
        raise TypeError(f"random_mask_like() needs a tf_dessilbi.masks.Mask. Received: {mask!r}")
    if not mask.weights:
        raise ValueError("random_mask_like() needs a mask with weight entries; this one has none.")
    seed = _validate.integer("seed", seed, minimum=0)
    units = _validate.boolean("units", units)
    rng = np.random.default_rng(seed)
    weights = {}
    for key, m in mask.weights.items():
        if units:
            count = int(masks_lib.unit_mask_of(m, (-1,)).sum())
            chosen = np.zeros(m.shape[-1], bool)
            chosen[rng.choice(m.shape[-1], size=count, replace=False)] = True
            weights[key] = np.broadcast_to(chosen, m.shape).copy()
            continue
        flat = np.zeros(m.size, bool)
        flat[rng.choice(m.size, size=int(m.sum()), replace=False)] = True
        weights[key] = flat.reshape(m.shape)
    return masks_lib.Mask(weights)


def layer_densities(mask: masks_lib.Mask) -> dict:
    """``{key: kept / total}`` of every weight entry of a mask."""
    return {k: float(m.mean()) for k, m in mask.weights.items()}


@dataclasses.dataclass
class SanityResult:
    """The accuracies of the ticket, the dense model and the two controls.

    Attributes:
        dense_accuracy: the dense model, same recipe and budget.
        ticket_accuracy: the ticket (mask m from θ_k).
        reinit_accuracy: mask m from a random re-initialization.
        random_mask_accuracy: a random mask of the same layer-wise
            densities from θ_k.
        tolerance: how far below the dense accuracy a ticket may be and
            still "match" it.
        margin: by how much the ticket must beat each control.
    """

    dense_accuracy: float
    ticket_accuracy: float
    reinit_accuracy: float
    random_mask_accuracy: float
    tolerance: float = 0.005
    margin: float = 0.0
    density: Optional[float] = None
    layer_density: dict = dataclasses.field(default_factory=dict)
    random_layer_density: dict = dataclasses.field(default_factory=dict)

    @property
    def margin_vs_dense(self) -> float:
        return self.ticket_accuracy - self.dense_accuracy

    @property
    def margin_vs_reinit(self) -> float:
        return self.ticket_accuracy - self.reinit_accuracy

    @property
    def margin_vs_random_mask(self) -> float:
        return self.ticket_accuracy - self.random_mask_accuracy

    @property
    def matches_dense(self) -> bool:
        return self.margin_vs_dense >= -self.tolerance

    @property
    def beats_reinit(self) -> bool:
        return self.margin_vs_reinit > self.margin

    @property
    def beats_random_mask(self) -> bool:
        return self.margin_vs_random_mask > self.margin

    @property
    def winning(self) -> bool:
        return self.matches_dense and self.beats_reinit and self.beats_random_mask

    @property
    def verdict(self) -> str:
        margins = (
            f"ticket − dense {100 * self.margin_vs_dense:+.2f} pts, "
            f"ticket − reinit {100 * self.margin_vs_reinit:+.2f} pts, "
            f"ticket − random mask {100 * self.margin_vs_random_mask:+.2f} pts"
        )
        if self.winning:
            return f"winning ticket: yes ({margins})"
        failed = [
            name for name, ok in (
                (f"does not match dense within {100 * self.tolerance:.2f} pts", self.matches_dense),
                ("does not beat the random re-initialization", self.beats_reinit),
                ("does not beat the random mask", self.beats_random_mask),
            ) if not ok
        ]
        return f"winning ticket: no ({'; '.join(failed)}; {margins})"

    def to_dict(self) -> dict:
        """Plain, JSON-able data: accuracies, margins, checks and the verdict."""
        result = dataclasses.asdict(self)
        result.update(
            margin_vs_dense=self.margin_vs_dense,
            margin_vs_reinit=self.margin_vs_reinit,
            margin_vs_random_mask=self.margin_vs_random_mask,
            matches_dense=self.matches_dense,
            beats_reinit=self.beats_reinit,
            beats_random_mask=self.beats_random_mask,
            winning=self.winning,
            verdict=self.verdict,
        )
        return result


def run_sanity_checks(
    recipe,
    mask: masks_lib.Mask,
    start_weights,
    dense_accuracy: float,
    ticket_accuracy: float,
    *,
    seed: int = 0,
    tolerance: float = 0.005,
    margin: float = 0.0,
) -> SanityResult:
    """Trains the two controls of a ticket and judges it.

    Args:
        recipe: what trained the ticket: an object with
            ``train(mask, weights=None, seed=None) -> (model, eval dict)``
            (`Recipe`); ``weights=None`` means a
            fresh initialization drawn after ``keras.utils.set_random_seed(seed)``.
        mask: the ticket's mask m.
        start_weights: θ_k, the weights the ticket was trained from.
        dense_accuracy: the dense model's accuracy under the same recipe.
        ticket_accuracy: the ticket's accuracy.
        seed: seeds the re-initialization (``seed + 1``) and the random mask
            (``seed``). Defaults to `0`.
        tolerance: see `SanityResult`. Defaults to `0.005` (half a point).
        margin: see `SanityResult`. Defaults to `0`.

    Returns:
        A `SanityResult`.
    """
    tolerance = _validate.non_negative("tolerance", tolerance)
    margin = _validate.non_negative("margin", margin)
    seed = _validate.integer("seed", seed, minimum=0)
    _, reinit = recipe.train(mask, weights=None, seed=seed + 1)
    logging.info("sanity check: same mask, random re-initialization: %.4f", reinit["accuracy"])
    random_mask = random_mask_like(mask, seed)
    _, random_eval = recipe.train(random_mask, weights=start_weights)
    logging.info("sanity check: random mask, same densities: %.4f", random_eval["accuracy"])
    return SanityResult(
        dense_accuracy=float(dense_accuracy),
        ticket_accuracy=float(ticket_accuracy),
        reinit_accuracy=float(reinit["accuracy"]),
        random_mask_accuracy=float(random_eval["accuracy"]),
        tolerance=tolerance,
        margin=margin,
        density=mask.density,
        layer_density=layer_densities(mask),
        random_layer_density=layer_densities(random_mask),
    )

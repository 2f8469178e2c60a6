"""Iterative magnitude pruning with rewinding, and its sanity checks.

Frankle & Carbin, "The lottery ticket hypothesis", ICLR 2019; rewinding:
Frankle, Dziugaite, Roy & Carbin, "Linear mode connectivity and the lottery
ticket hypothesis", ICML 2020. With θ₀ the initial weights and θ_k the
weights after k epochs of the dense run (k = ``rewind_epoch``; k = 0 is the
original reset to θ₀):

::

    round 0:  train the dense network from θ₀ for E epochs (saving θ_k)
    round r:  m_r = m_{r−1} minus the p·|m_{r−1}| smallest |W| (p = prune_fraction,
              over the whole network or per layer), W ← θ_k, train E epochs with m_r fixed

until ``rounds`` prunings or the ``target_sparsity`` (the last round prunes
just down to it). ``milestones`` are sparsities a round also stops at exactly
(p is cut short there), so one run yields tickets at, e.g., 80 % and 90 %;
``sanity_at`` runs the controls at some of them as well as at the end. Every round is trained by the same `Recipe` (a fresh
optimizer from ``make_optimizer``, E epochs of ``steps_per_epoch`` steps);
the dense round is the baseline of the sanity checks of Ma et al. (2021),
which the same driver then runs under the same budget
(`tf_dessilbi.procedures.sanity`). A round that would empty a layer is not
trained: the procedure stops and reports the layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi.procedures import sanity as sanity_lib
from tf_dessilbi.sparse import snip
from tf_dessilbi.sparse import topk

SCOPES = topk.SCOPES


# ------------------------------------------------------------- the pruning
def prune_remaining(magnitudes, kept, fraction: float, scope: str = "global",
                    minimum_kept=None) -> dict:
    """Removes the ``round(p · remaining)`` kept weights of smallest |W|.

    Args:
        magnitudes: ``{key: array}`` (the trained weights; absolute values used).
        kept: ``{key: bool array}``, the current mask m_{r−1}.
        fraction: p ∈ (0, 1), the share of the *remaining* weights removed.
        scope: ``"global"`` (one ranking, p of the network's remaining
            weights) or ``"layer"`` (p of each layer's). Defaults to `"global"`.
        minimum_kept: never keep fewer than this (an int for ``"global"``,
            ``{key: int}`` for ``"layer"``): the target of the last round.

    Returns:
        ``{key: bool array}``, a subset of ``kept``.
    """
    fraction = _validate.real("prune_fraction", fraction, minimum=0.0, maximum=1.0,
                              min_open=True, max_open=True)
    scope = _validate.one_of("scope", scope, SCOPES)
    scores = {k: np.abs(np.asarray(magnitudes[k], np.float64)) for k in kept}
    remaining = {k: int(np.sum(m)) for k, m in kept.items()}
    if scope == "layer":
        counts = {}
        for k, r in remaining.items():
            target = r - topk.kept_count(r, fraction)
            floor = 0 if minimum_kept is None else int(minimum_kept[k])
            counts[k] = min(r, max(target, floor))
        chosen = topk.topk_masks(scores, 1.0, candidates=kept, counts=counts)
    else:
        total = sum(remaining.values())
        keep = total - topk.kept_count(total, fraction)
        keep = min(total, max(keep, int(minimum_kept or 0)))
        size = sum(int(np.size(m)) for m in kept.values())
        chosen = topk.topk_masks(scores, keep / size, scope="global", candidates=kept)
    return {k: np.asarray(keras.ops.convert_to_numpy(m), bool) for k, m in chosen.items()}


def write_run(workdir: str, name: str, summary: dict, mask: masks_lib.Mask) -> dict:
    """Saves a procedure's mask (``mask.npz``) and summary (``<name>.json``) in ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    mask.save(os.path.join(workdir, "mask.npz"))
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


# -------------------------------------------------------------- the recipe
Recipe = sanity_lib.Recipe  # the one recipe of every round and every control


class _Snapshot(keras.callbacks.Callback):
    """Saves the model's state (no masks) at the end of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.weights = [np.array(keras.ops.convert_to_numpy(v)) for v in Recipe.state(self.model)]


# -------------------------------------------------------------- the result
@dataclasses.dataclass
class IMPRound:
    """One trained round: 0 is the dense network."""

    index: int
    weights_kept: int
    weights_total: int
    layer_density: dict
    eval: dict

    @property
    def density(self) -> float:
        return self.weights_kept / max(self.weights_total, 1)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), density=self.density, sparsity=1.0 - self.density)


@dataclasses.dataclass
class IMPResult:
    """What `iterative_magnitude_pruning` found.

    Attributes:
        rounds: every trained round (0: dense), in order.
        mask: the ticket's mask (the last trained round's).
        model: the ticket, trained (the last round's model).
        rewind_weights: θ_k, the state every round started from.
        empty_layers: layers the next round would have emptied (then not
            trained; the procedure stopped there). Empty when none.
        sanity: the Ma et al. checks (None when not run).
        milestones: ``{sparsity: round index}`` for every milestone reached.
        milestone_sanity: ``{sparsity: SanityResult}`` for the ``sanity_at``
            milestones (the controls of the ticket of that round).
    """

    rounds: list
    mask: masks_lib.Mask
    model: keras.Model
    rewind_weights: list
    rewind_epoch: int
    prune_fraction: float
    scope: str
    empty_layers: list = dataclasses.field(default_factory=list)
    sanity: Optional[sanity_lib.SanityResult] = None
    milestones: dict = dataclasses.field(default_factory=dict)
    milestone_sanity: dict = dataclasses.field(default_factory=dict)

    def milestone_eval(self, sparsity: float) -> dict:
        """The evaluation of the ticket of the round that stopped at milestone ``sparsity``."""
        if sparsity not in self.milestones:
            raise ValueError(f"`sparsity` {sparsity!r} is not a reached milestone; reached: "
                             f"{sorted(self.milestones)}")
        return self.rounds[self.milestones[sparsity]].eval

    @property
    def dense_eval(self) -> dict:
        return self.rounds[0].eval

    @property
    def ticket_eval(self) -> dict:
        return self.rounds[-1].eval

    @property
    def sparsity(self) -> float:
        return 1.0 - self.rounds[-1].density

    def to_dict(self) -> dict:
        """Plain data (JSON-able): rounds, ticket, sanity verdict."""
        return {
            "rounds": [r.to_dict() for r in self.rounds],
            "dense_eval": self.dense_eval,
            "ticket_eval": self.ticket_eval,
            "sparsity": self.sparsity,
            "rewind_epoch": self.rewind_epoch,
            "prune_fraction": self.prune_fraction,
            "scope": self.scope,
            "empty_layers": list(self.empty_layers),
            "sanity": None if self.sanity is None else self.sanity.to_dict(),
            "verdict": None if self.sanity is None else self.sanity.verdict,
            "milestones": {f"{m:g}": i for m, i in self.milestones.items()},
            "milestone_sanity": {f"{m:g}": r.to_dict() for m, r in self.milestone_sanity.items()},
        }


def _round_record(index, mask: masks_lib.Mask, evaluation) -> IMPRound:
    return IMPRound(index, mask.weights_kept, mask.weights_total,
                    sanity_lib.layer_densities(mask), evaluation)


# -------------------------------------------------------------- the driver
def _check_milestones(milestones, sanity_at, target_sparsity):
    """Sorted, validated ``milestones`` and ``sanity_at`` (a subset of them)."""
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise TypeError(f"`milestones` must be a sequence of sparsities. Received: "
                        f"milestones={milestones!r}")
    if isinstance(sanity_at, (str, bytes)) or not hasattr(sanity_at, "__iter__"):
        raise TypeError(f"`sanity_at` must be a sequence of milestones. Received: "
                        f"sanity_at={sanity_at!r}")
    checked = sorted({_validate.real("milestones", m, minimum=0.0, maximum=1.0, min_open=True,
                                     max_open=True) for m in milestones})
    if checked and target_sparsity is None:
        raise ValueError(f"`milestones` needs `target_sparsity`. Received: milestones={milestones!r}")
    if checked and checked[-1] >= target_sparsity:
        raise ValueError(
            f"`milestones` must be below target_sparsity={target_sparsity}. "
            f"Received: milestones={milestones!r}"
        )
    at = sorted({float(m) for m in sanity_at})
    unknown = [m for m in at if m not in checked]
    if unknown:
        raise ValueError(f"`sanity_at` must be a subset of milestones={checked}. "
                         f"Received: sanity_at={list(sanity_at)!r}")
    return checked, at


def iterative_magnitude_pruning(
    build_model: Callable,
    make_optimizer: Callable,
    train_data,
    eval_data,
    *,
    epochs_per_round: int,
    steps_per_epoch: int,
    rounds: Optional[int] = None,
    target_sparsity: Optional[float] = None,
    prune_fraction: float = 0.2,
    scope: str = "global",
    rewind_epoch: int = 0,
    sanity_checks: bool = True,
    milestones=(),
    sanity_at=(),
    tolerance: float = 0.005,
    margin: float = 0.0,
    seed: Optional[int] = 0,
    loss=None,
    eval_steps: Optional[int] = None,
    callbacks=(),
    strategy=None,
    verbose: int = 0,
) -> IMPResult:
    """IMP with rewinding, then the sanity checks (see the module docstring).

    Args:
        build_model: ``() -> keras.Model`` (a fresh dense model; Functional
            or Sequential, logits out).
        make_optimizer: ``() -> optimizer`` (a fresh one per training run).
        train_data: repeating ``(x, y)`` batches.
        eval_data: ``(x, y)`` batches for the accuracies.
        epochs_per_round: E, epochs of every training run.
        steps_per_epoch: steps of an epoch.
        rounds: number of prunings R (give this or ``target_sparsity``).
        target_sparsity: prune until this fraction of the weights is removed.
        prune_fraction: p, the share of remaining weights removed per round.
            Defaults to `0.2`.
        scope: ``"global"`` or ``"layer"``. Defaults to `"global"`.
        rewind_epoch: k: 0 resets to θ₀, k ≥ 1 to the weights after epoch k
            of the dense run. Defaults to `0`.
        sanity_checks: train the random-reinit and random-mask controls.
            Defaults to True.
        milestones: sparsities in (0, target_sparsity) a round stops at
            exactly (that round removes fewer than p of the remaining
            weights), e.g. ``(0.8,)`` with a 0.9 target: tickets at both.
            Defaults to none.
        sanity_at: milestones at which the two controls are trained too
            (each costs two more trainings). Defaults to none.
        tolerance: see `sanity.SanityResult`.
        margin: see `sanity.SanityResult`.
        seed: ``keras.utils.set_random_seed(seed)`` before θ₀ is drawn (and
            ``seed + 1`` for the re-initialization control); None leaves the
            global seed alone. Defaults to `0`.
        loss: ``loss(y, logits)``. Defaults to sparse CE from logits.
        eval_steps: evaluation batches (None: the whole ``eval_data``).
        callbacks: extra `fit` callbacks for every training run.
        strategy: a `tf.distribute` strategy to build and compile under.
        verbose: `fit` verbosity. Defaults to `0`.

    Returns:
        An `IMPResult`.

    Raises:
        ValueError / TypeError: a bad argument or an empty dataset, before
            anything is trained.
    """
    if (rounds is None) == (target_sparsity is None):
        raise ValueError(
            "Give exactly one of `rounds` and `target_sparsity`. "
            f"Received: rounds={rounds!r}, target_sparsity={target_sparsity!r}"
        )
    if rounds is not None:
        rounds = _validate.positive_int("rounds", rounds)
    else:
        target_sparsity = _validate.real("target_sparsity", target_sparsity, minimum=0.0,
                                         maximum=1.0, min_open=True, max_open=True)
    prune_fraction = _validate.real("prune_fraction", prune_fraction, minimum=0.0, maximum=1.0,
                                    min_open=True, max_open=True)
    scope = _validate.one_of("scope", scope, SCOPES)
    epochs_per_round = _validate.positive_int("epochs_per_round", epochs_per_round)
    rewind_epoch = _validate.integer("rewind_epoch", rewind_epoch, minimum=0)
    if rewind_epoch >= epochs_per_round:
        raise ValueError(
            f"`rewind_epoch` must be < epochs_per_round={epochs_per_round}. "
            f"Received: rewind_epoch={rewind_epoch}"
        )
    sanity_checks = _validate.boolean("sanity_checks", sanity_checks)
    milestones, sanity_at = _check_milestones(milestones, sanity_at, target_sparsity)
    _validate.non_negative("tolerance", tolerance)
    _validate.non_negative("margin", margin)
    if seed is not None:
        seed = _validate.integer("seed", seed, minimum=0)
    recipe = Recipe(build_model, make_optimizer, train_data, eval_data, epochs_per_round,
                    steps_per_epoch, loss=loss, eval_steps=eval_steps, callbacks=callbacks,
                    strategy=strategy, verbose=verbose)
    sanity_lib.first_batch(train_data, "train_data")
    sanity_lib.first_batch(eval_data, "eval_data")

    # Round 0: the dense network from θ₀ (a masked model with full masks).
    model = recipe.build(None, None, seed)
    keys = [k for k, _, _ in snip.scored_weights(model, "iterative_magnitude_pruning")]
    theta0 = [np.array(keras.ops.convert_to_numpy(v)) for v in recipe.state(model)]
    snapshot = _Snapshot(rewind_epoch)
    recipe.fit(model, [snapshot] if rewind_epoch else [])
    rewind = theta0 if rewind_epoch == 0 else snapshot.weights
    mask = masks_lib.FixedMasks().mask(model)
    history = [_round_record(0, mask, recipe.evaluate(model))]
    logging.info("IMP round 0 (dense): accuracy %.4f", history[0].eval["accuracy"])

    totals = {k: int(mask.weights[k].size) for k in keys}

    def floor_at(sparsity):
        if scope == "global":
            return topk.kept_count(sum(totals.values()), 1.0 - sparsity)
        return {k: topk.kept_count(n, 1.0 - sparsity) for k, n in totals.items()}

    def above(kept, floor):  # kept has more weights than the floor allows
        if scope == "global":
            return sum(int(m.sum()) for m in kept.values()) > floor
        return any(int(kept[k].sum()) > floor[k] for k in keys)

    floor = None if target_sparsity is None else floor_at(target_sparsity)
    empty = []
    index = 0
    reached, milestone_masks = {}, {}
    while True:
        kept = {k: mask.weights[k] for k in keys}
        for m in milestones:  # the round just trained stopped at m
            if m not in reached and index > 0 and not above(kept, floor_at(m)):
                reached[m] = index
                milestone_masks[m] = mask
        if rounds is not None and index >= rounds:
            break
        if target_sparsity is not None:
            if scope == "global" and sum(int(m.sum()) for m in kept.values()) <= floor:
                break
            if scope == "layer" and all(int(kept[k].sum()) <= floor[k] for k in keys):
                break
        magnitudes = {k: keras.ops.convert_to_numpy(v)
                      for k, _, v in snip.scored_weights(model, "iterative_magnitude_pruning")}
        pending = [m for m in milestones if m not in reached and above(kept, floor_at(m))]
        new = prune_remaining(magnitudes, kept, prune_fraction, scope,
                              floor_at(pending[0]) if pending else floor)
        empty = [k.split("/")[0] for k, m in new.items() if not m.any()]
        if empty:
            logging.warning(
                "IMP round %d would empty layer(s) %s: stopping; the ticket is round %d's.",
                index + 1, empty, index,
            )
            break
        index += 1
        mask = masks_lib.Mask(new)
        model, evaluation = recipe.train(mask, rewind)
        history.append(_round_record(index, mask, evaluation))
        logging.info("IMP round %d: %.2f%% kept, accuracy %.4f",
                     index, 100 * history[-1].density, evaluation["accuracy"])

    result = IMPResult(history, mask, model, rewind, rewind_epoch, prune_fraction, scope, empty,
                       milestones=reached)
    for m in sanity_at:
        if m in reached:
            i = reached[m]
            result.milestone_sanity[m] = sanity_lib.run_sanity_checks(
                recipe, milestone_masks[m], rewind, history[0].eval["accuracy"],
                history[i].eval["accuracy"], seed=seed or 0, tolerance=tolerance, margin=margin,
            )
            logging.info("IMP at %g: %s", m, result.milestone_sanity[m].verdict)
    if sanity_checks and index > 0:
        result.sanity = sanity_lib.run_sanity_checks(
            recipe, mask, rewind, history[0].eval["accuracy"], history[-1].eval["accuracy"],
            seed=seed or 0, tolerance=tolerance, margin=margin,
        )
        logging.info("IMP: %s", result.sanity.verdict)
    return result


# -------------------------------------------------------------- CLI hook
def run(config, workdir: str, data, strategy, build_optimizer) -> dict:
    """CLI hook: IMP on ``config.model.name`` with ``config.sparse``'s settings.

    Reads ``config.sparse``: ``target_sparsity`` (or ``rounds`` > 0),
    ``prune_fraction``, ``scope``, ``rewind_epoch``, ``sanity_checks``,
    ``tolerance`` and, when present, ``milestones`` / ``sanity_at``
    (sequences); epochs per round = ``config.num_epochs``. Writes
    ``imp.json`` and the ticket's ``mask.npz`` to ``workdir``.
    ``build_optimizer(config, model, steps_per_epoch)`` builds the SGD
    (the training package's, passed in by its ``METHODS`` table: procedures
    sit below training).
    """
    from tf_dessilbi import models as models_lib
    from tf_dessilbi.sparsity import sparsity_report

    if config.optimizer.name != "sgd":
        raise ValueError(
            f"IMP trains with SGD: config.optimizer.name must be 'sgd'. "
            f"Received: {config.optimizer.name!r}"
        )

    s = config.sparse
    steps = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    result = iterative_magnitude_pruning(
        lambda: models_lib.get_model(config.model.name, input_shape=data.input_shape,
                                     num_classes=data.num_classes),
        lambda: build_optimizer(config, None, steps),
        data.train, data.eval,
        epochs_per_round=config.num_epochs, steps_per_epoch=steps,
        rounds=s.rounds or None, target_sparsity=None if s.rounds else s.target_sparsity,
        prune_fraction=s.prune_fraction, scope=s.scope, rewind_epoch=s.rewind_epoch,
        sanity_checks=s.sanity_checks, tolerance=s.tolerance, seed=config.seed,
        milestones=tuple(s.get("milestones", ()) or ()), sanity_at=tuple(s.get("sanity_at", ()) or ()),
        eval_steps=config.eval_steps or None, strategy=strategy, verbose=config.verbose,
    )
    summary = result.to_dict()
    summary["eval"] = result.ticket_eval
    summary["sparsity"] = sparsity_report(result.model).to_dict()  # its MaskedLayer masks
    return write_run(workdir, "imp", summary, result.mask)

"""`Pruner`: a trained Keras model, an importance and a budget → shrunk models, one step at a time.

Torch-Pruning's shape (``MetaPruner(model, example_inputs, importance,
pruning_ratio, iterative_steps, round_to)``; ``pruner.step()``) over this
package's pieces: the removable channel groups and the cost counter of
`shrink` (`groups.CostModel`), an importance (`importance`), a budget
(`budget`) and `shrink` for the physical removal. Each `step` scores the
current model's groups, removes the fewest lowest-scored ones that bring its
cost to this step's target and returns the shrunk model (a new plain Keras
model; the one given is left unchanged). Fine-tune it between steps (prune →
fine-tune → prune …); the last step meets the budget, as counted by
`ShrinkReport` on the shrunk model (checked, not estimated).

Targets of the iterative steps fall linearly from the dense cost to the
budget: step i of n aims at (1 − (1 − b)·i/n) × dense.
"""

from __future__ import annotations

from typing import Iterable, Optional

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _validate
from tf_dessilbi import walk
from tf_dessilbi.compress import budget as budget_lib
from tf_dessilbi.compress import groups as groups_lib
from tf_dessilbi.compress import importance as importance_lib


class Pruner:
    """Structured pruning of a trained model to a MACs or parameter budget.

    Args:
        model: a trained, built Sequential or Functional model `shrink` can
            cut. It is never modified.
        importance: an `importance.Importance` or a name: ``"l1"``, ``"l2"``
            (filter norms), ``"bn"`` (BatchNorm γ, network slimming),
            ``"taylor"`` (first-order Taylor, needs ``data`` at each step).
            Defaults to `"l1"`.
        macs: the budget as a fraction of ``model``'s MACs (as
            `ShrinkReport` counts them), in (0, 1]. Give this or ``params``.
        params: the budget as a fraction of ``model``'s parameters.
        iterative_steps: number of prune steps to reach the budget. Defaults to `1`.
        allocation: ``"global"`` (one ranking over the model) or
            ``"uniform"`` (every layer family loses the same fraction).
            Defaults to `"global"`.
        normalize: divide scores by their family's mean before a global
            ranking. Defaults to `True`.
        round_to: each layer family keeps a multiple of this many channels
            (or all). Defaults to `1`.
        min_units: fewest channels a family keeps. Defaults to `1`.
        keep: names of layers kept whole (inputs and outputs). Defaults to `()`.

    Raises:
        TypeError, ValueError: a bad argument (named, with its value), or a
            model `shrink` cannot reason about.

    Example:

    ```python
    pruner = tf_dessilbi.Pruner(model, "l1", macs=0.5, round_to=4)
    small = pruner.step()          # MACs ≤ 0.5× model's, as ShrinkReport counts
    small.compile(optimizer="sgd", loss=loss)
    small.fit(train, epochs=3)
    ```
    """

    def __init__(self, model, importance="l1", *, macs=None, params=None, iterative_steps: int = 1,
                 allocation: str = "global", normalize: bool = True, round_to: int = 1,
                 min_units: int = 1, keep: Iterable[str] = ()):
        _validate.model(model, "Pruner")
        walk.check_graph_model(model, "Pruner")
        self.importance = importance_lib.get(importance)
        self.iterative_steps = _validate.positive_int("iterative_steps", iterative_steps)
        self.allocation = _validate.one_of("allocation", allocation, budget_lib.ALLOCATIONS)
        self.normalize = _validate.boolean("normalize", normalize)
        self.round_to = _validate.positive_int("round_to", round_to)
        self.min_units = _validate.positive_int("min_units", min_units)
        self.keep = (keep,) if isinstance(keep, str) else tuple(keep)
        cost_model = groups_lib.CostModel(model, self.keep)
        self.kind, self.target = budget_lib.target_of(cost_model, macs, params)
        self.fraction = macs if macs is not None else params
        self.dense_cost = (cost_model.macs_dense, cost_model.params_dense)
        self.model = model
        self.current_step = 0
        self.reports = []

    def step_target(self, step: int) -> float:
        """The absolute target of (1-based) ``step``: linear from dense to the budget."""
        dense = self.dense_cost[0 if self.kind == "macs" else 1]
        fraction = 1.0 - (1.0 - float(self.fraction)) * step / self.iterative_steps
        return self.target if step >= self.iterative_steps else fraction * dense

    def plan(self, model=None, data=None, target: Optional[float] = None) -> dict:
        """``{producer layer: bool[units]}`` (True = keep) meeting ``target`` (default: the next step's).

        The masks are a `tf_dessilbi.masks.UnitMasks` source for `shrink`.
        """
        model = self.model if model is None else model
        target = self.step_target(self.current_step + 1) if target is None else float(target)
        removed, _ = self._plan(model, data, target)
        return removed[1].unit_masks(removed[0])

    def _plan(self, model, data, target):
        if self.importance.needs_data and data is None:
            raise ValueError(f"{self.importance!r} scores on data: pass `data` (a dataset of "
                             f"(x, y) batches). Received: data=None")
        cost_model = groups_lib.CostModel(model, self.keep)
        scores = self.importance(model, cost_model, data)
        if self.allocation == "global":
            scores = importance_lib.normalized(scores, cost_model, self.normalize)
        order = budget_lib.removal_order(scores, cost_model, self.allocation)
        removed, cost = budget_lib.plan(cost_model, order, self.kind, target, self.round_to,
                                        self.min_units)
        return (removed, cost_model, order), cost

    def step(self, data=None) -> keras.Model:
        """Prunes the current model (the last step's result, fine-tuned or not) to the next target.

        Returns:
            The shrunk model; ``self.reports[-1]`` is its `ShrinkReport`
            (against the model this step started from). After the last step
            calling again raises.
        """
        if self.current_step >= self.iterative_steps:
            raise ValueError(f"All {self.iterative_steps} steps are done; the budget is met.")
        target = self.step_target(self.current_step + 1)
        (removed, cost_model, order), _ = self._plan(self.model, data, target)
        small, report = shrink_to(self.model, cost_model, order, removed, self.kind, target,
                                  self.round_to, self.min_units, self.keep)
        which = 0 if self.kind == "macs" else 1
        real = (report.macs_after, report.params_after)[which]
        logging.info("Pruner step %d/%d: %s %d → %d (%.3f× dense).", self.current_step + 1,
                     self.iterative_steps, self.kind, (report.macs_before, report.params_before)[which],
                     real, real / self.dense_cost[which])
        self.current_step += 1
        self.reports.append(report)
        self.model = small
        return small

    def ratio(self, model=None) -> tuple:
        """``(MACs, parameters)`` of ``model`` (default: the current one) as fractions of the dense model's."""
        cost_model = groups_lib.CostModel(self.model if model is None else model, self.keep)
        return (cost_model.macs_dense / self.dense_cost[0], cost_model.params_dense / self.dense_cost[1])


def shrink_to(model, cost_model, order, removed, kind, target, round_to=1, min_units=1, keep=()):
    """``shrink(model)`` without the groups ``removed`` (a `budget.plan`), checked against ``target``.

    `shrink` may add a bias where it folds a removed channel's constant (more
    parameters than `CostModel` counts) or remove more (unconsumed
    channels); the shrunk model's own `ShrinkReport` decides: while it is
    over ``target``, the next group of ``order`` goes too.

    Returns:
        ``(shrunk model, ShrinkReport)``.
    """
    from tf_dessilbi.shrink import api as shrink_api

    which = 0 if kind == "macs" else 1
    k = int(np.isin(order, removed).nonzero()[0].max() + 1) if len(removed) else 0
    while True:
        masks = cost_model.unit_masks(removed)
        small, report = shrink_api.shrink(model, masks, min_units=min_units, keep=keep,
                                          return_report=True)
        real = (report.macs_after, report.params_after)[which]
        if real <= target or k >= len(order):
            break
        k += 1
        removed = budget_lib.removed_at(cost_model, order, k, round_to, min_units)
    if real > target:
        raise ValueError(f"shrink() left {real:,} {kind} over the target {target:,.0f}.")
    return small, report

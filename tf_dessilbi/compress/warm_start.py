"""DessiLBI from trained weights: V and the path speed set so supp Γ grows over the trained network.

Started cold (V = Γ = 0), DessiLBI's coupling ‖W − Γ‖²/(2μ) pulls every
trained filter toward Γ = 0 while the path rebuilds the support from
nothing. `DessiLBIWarmStart` starts it where the trained network is.

Derivation (one channel group G of `groups.CostModel`: its producer units'
kernel columns W_G, n_G = ‖W_G‖₂; the optimizer couples G jointly, threshold
λ_G = λ·√|G| with ``lambda_scaling="none"``). DessiLBI's step is::

    W ← W − κα(d + (W − Γ)/μ),  V ← V + (α/μ)(W − Γ),  Γ = κ·prox_λ(V)

1. *Groups that stay* (the best groups filling ``initial`` × the budget, by
   ``importance``) start in the support with Γ_G = W_G: the group prox gives
   Γ_G = κ(‖V_G‖ − λ_G)·V_G/‖V_G‖, so V_G = (n_G/κ + λ_G)·W_G/n_G. Then
   W − Γ = 0: the coupling leaves the trained filters alone.
2. *Groups outside* (Γ_G = 0) follow, loss aside, W_G(t) = q^t·W_G with
   q = 1 − κα/μ, and V_G(t) = V_G(0) + (α/μ)Σ_{s<t} W_G(s) =
   V_G(0) + (1 − q^t)·W_G/κ. Starting V_G(0) = a_G·W_G/n_G, G enters supp Γ
   when a_G + (1 − q^t)·n_G/κ > λ_G. To make G enter at step t_G we set
   a_G = λ_G − (1 − q^{t_G})·n_G/κ (≥ 0 by the choice of λ below).
3. *The schedule*: the groups the budget keeps beyond the initial support,
   in ``importance`` order, get t_G = T·i/m (i = 1..m, T = ``path_steps``),
   so the support reaches the budget after T steps if the loss were flat;
   groups past the budget continue the same spacing. The loss gradient
   moves this order: a group the loss keeps growing enters earlier, one it
   lets decay enters later or never. λ is the smallest value with every
   a_G ≥ 0 up to T (it only offsets V and the threshold together).
4. *The path speed*: μ = κα/(1 − e^{−ρ/T}), so an outside group's W shrinks
   by e^{−ρ} (``decay`` ρ) over the T steps: the network has already lost
   most of what removing it will take when the fork comes.

`BudgetFork` (a callback) watches supp Γ every ``check_every`` steps and
stops training when the support's MACs (or parameters), counted as
`ShrinkReport` counts them, reach the budget. `DessiLBIWarmStart.shrink` then
trims the support to the budget exactly (ranking groups by ‖V_G‖/λ_G, which
is > 1 exactly in the support) and removes the rest with `shrink`: the
model W* = W on the trimmed support, physically smaller, ready to fine-tune.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import keras
import numpy as np

from tf_dessilbi import _validate
from tf_dessilbi import walk
from tf_dessilbi.compress import budget as budget_lib
from tf_dessilbi.compress import groups as groups_lib
from tf_dessilbi.compress import importance as importance_lib
from tf_dessilbi.compress import pruner as pruner_lib


class DessiLBIWarmStart:
    """A DessiLBI optimizer warm-started on a trained model, its budget fork and the final shrink.

    Args:
        model: a trained, built graph model `shrink` can cut. Its weights are
            read here; fitting it with `optimizer` trains it in place.
        macs: the budget as a fraction of ``model``'s MACs (pass exactly
            one of ``macs`` and ``params``).
        params: the budget as a fraction of ``model``'s parameters.
        path_steps: T, the steps over which the support is scheduled to grow
            to the budget.
        learning_rate: α, constant along the path. Defaults to `0.01`.
        kappa: κ. Defaults to `1.0`.
        momentum: the optimizer's momentum. Defaults to `0.9`.
        nesterov: Nesterov momentum. Defaults to `True`.
        decay: ρ, the e-folds by which an outside group shrinks over T steps
            (sets μ). Defaults to `1.0`.
        initial: the fraction of the budget the initial support fills, in
            [0, 1). Defaults to `0.5`.
        importance: ranks the groups for the initial support and the
            schedule (`Pruner`'s names or an `Importance`). Defaults to `"l2"`
            (n_G, the quantity the path integrates).
        round_to: as `Pruner`'s. Defaults to `1`.
        min_units: as `Pruner`'s. Defaults to `1`.
        keep: as `Pruner`'s. Defaults to `()`.
        check_every: steps between the fork's support checks. Defaults to `10`.
        data: (x, y) batches to score on, for an importance that needs data
            (``"taylor"``). Defaults to `None`.

    Example:

    ```python
    ws = tf_dessilbi.DessiLBIWarmStart(model, macs=0.5, path_steps=468)
    model.compile(optimizer=ws.optimizer, loss=loss)
    model.fit(train, epochs=1, callbacks=[ws.fork])   # stops when supp Γ meets the budget
    small = ws.shrink()                                # W* on the support, MACs ≤ 0.5×
    ```
    """

    def __init__(self, model, *, macs=None, params=None, path_steps: int, learning_rate: float = 0.01,
                 kappa: float = 1.0, momentum: float = 0.9, nesterov: bool = True, decay: float = 1.0,
                 initial: float = 0.5, importance="l2", round_to: int = 1, min_units: int = 1,
                 keep: Iterable[str] = (), check_every: int = 10, data=None):
        from tf_dessilbi.dessilbi.optimizer import DessiLBI

        _validate.model(model, "DessiLBIWarmStart")
        self.path_steps = _validate.positive_int("path_steps", path_steps)
        self.learning_rate = _validate.positive("learning_rate", learning_rate)
        self.kappa = _validate.positive("kappa", kappa)
        self.decay = _validate.positive("decay", decay)
        self.initial = _validate.fraction("initial", initial)
        self.round_to = _validate.positive_int("round_to", round_to)
        self.min_units = _validate.positive_int("min_units", min_units)
        self.check_every = _validate.positive_int("check_every", check_every)
        self.keep = (keep,) if isinstance(keep, str) else tuple(keep)
        imp = importance_lib.get(importance)
        self.cost_model = cm = groups_lib.CostModel(model, self.keep)
        self.kind, self.target = budget_lib.target_of(cm, macs, params)
        self.model = model

        kernels = {layer.name: (layer, var) for layer, var, _ in walk.sparsifiable(model)}
        names = sorted({n for g in cm.groups for n, _ in g.producers})
        structure = {}
        for name in names:
            layer, var = kernels[name]
            kind = "neuron" if isinstance(layer, keras.layers.Dense) else "filter"
            structure["^" + re.escape(var.path) + "$"] = kind
        self._paths = {name: kernels[name][1].path for name in names}
        unit_groups = [[[self._paths[n], int(u)] for n, u in g.producers]
                       for g in cm.groups if len(g.producers) > 1] or None

        # The schedule (steps 1-3 of the module docstring).
        scores = importance_lib.normalized(imp(model, cm, data), cm)
        order = budget_lib.removal_order(scores, cm, "global")
        removed_final, _ = budget_lib.plan(cm, order, self.kind, self.target, self.round_to,
                                           self.min_units)
        removed_start = np.arange(len(cm.groups))
        if self.initial > 0:
            try:
                removed_start, _ = budget_lib.plan(cm, order, self.kind, self.target * self.initial,
                                                   self.round_to, self.min_units)
            except ValueError:  # the initial budget is below the smallest model: start empty
                pass
        keep_order = [int(g) for g in order[::-1]]  # most important first
        removed_start, removed_final = set(removed_start.tolist()), set(removed_final.tolist())
        queue = [g for g in keep_order if g in removed_start and g not in removed_final]
        later = [g for g in keep_order if g in removed_final]
        m = max(1, len(queue))
        times = {g: self.path_steps * (i + 1) / m for i, g in enumerate(queue)}
        times.update({g: self.path_steps * (1 + (i + 1) / m) for i, g in enumerate(later)})
        self.entry_steps = times

        self.mu = self.kappa * self.learning_rate / (1.0 - math.exp(-self.decay / self.path_steps))
        q = 1.0 - self.kappa * self.learning_rate / self.mu
        weights = {name: np.asarray(keras.ops.convert_to_numpy(kernels[name][1]), np.float64)
                   for name in names}
        norm = np.array([math.sqrt(sum(float(np.sum(weights[n][..., u] ** 2)) for n, u in g.producers))
                         for g in cm.groups])
        size = np.array([len(g.producers) for g in cm.groups], np.float64)
        grown = {g: (1.0 - q ** t) * norm[g] / self.kappa for g, t in times.items()}
        due = [grown[g] / math.sqrt(size[g]) for g in queue] or [1e-3]
        self.lambda_ = float(max(due)) * (1.0 + 1e-6) or 1e-3

        self.optimizer = DessiLBI(
            learning_rate=self.learning_rate, kappa=self.kappa, mu=self.mu, lambda_=self.lambda_,
            momentum=momentum, nesterov=nesterov, structure=structure, lambda_scaling="none",
            unit_groups=unit_groups)
        self.optimizer.build(model.trainable_variables)
        v = {name: np.zeros_like(weights[name]) for name in names}
        for g, group in enumerate(cm.groups):
            lam = self.lambda_ * math.sqrt(size[g])
            if norm[g] == 0:
                continue
            if g not in times:  # in the initial support: Γ_G = W_G
                length = norm[g] / self.kappa + lam
            else:
                length = max(0.0, lam - grown[g])
            for n, u in group.producers:
                v[n][..., u] = weights[n][..., u] * (length / norm[g])
        for name in names:
            _assign_v(self.optimizer, kernels[name][1], v[name])
        self._norms_members = [(g, [(n, u) for n, u in group.producers]) for g, group in enumerate(cm.groups)]
        self.fork = BudgetFork(self)

    # ------------------------------------------------------------------ queries
    def group_ratios(self) -> np.ndarray:
        """‖V_G‖₂/λ_G per group: > 1 exactly for the groups in supp Γ."""
        v = {name: np.asarray(keras.ops.convert_to_numpy(self.optimizer.v(self._variable(name))),
                              np.float64) for name in self._paths}
        norms = {name: np.sqrt(np.sum(arr.reshape(-1, arr.shape[-1]) ** 2, axis=0))
                 for name, arr in v.items()}
        out = np.zeros(len(self.cost_model.groups))
        for g, members in self._norms_members:
            total = math.sqrt(sum(norms[n][u] ** 2 for n, u in members))
            out[g] = total / (self.lambda_ * math.sqrt(len(members)))
        return out

    def support_cost(self) -> tuple:
        """``(MACs, parameters)`` of the model keeping only the groups in supp Γ."""
        return self.cost_model.cost(np.flatnonzero(self.group_ratios() <= 1.0))

    def shrink(self):
        """W* on supp Γ trimmed (or topped up) to the budget, physically removed.

        Returns:
            ``(shrunk model, ShrinkReport)``.
        """
        cm = self.cost_model
        order = budget_lib.removal_order(self.group_ratios(), cm, "global")
        removed, _ = budget_lib.plan(cm, order, self.kind, self.target, self.round_to, self.min_units)
        return pruner_lib.shrink_to(self.model, cm, order, removed, self.kind, self.target,
                                    self.round_to, self.min_units, self.keep)

    def _variable(self, name):
        for layer, var, _ in walk.sparsifiable(self.model):
            if layer.name == name:
                return var
        raise KeyError(name)  # pragma: no cover


def _assign_v(optimizer, variable, value) -> None:
    """Sets DessiLBI's V of a coupled ``variable``."""
    optimizer.set_v(variable, value)


class BudgetFork(keras.callbacks.Callback):
    """Stops training once supp Γ's cost reaches the warm start's budget (the fork to W*).

    Attributes:
        fork_step: the step (1-based, of this fit) where it stopped, or None.
        history: ``[(step, MACs, parameters)]`` of the support at each check.
    """

    def __init__(self, warm_start: DessiLBIWarmStart):
        super().__init__()
        self.warm_start = warm_start
        self.step = 0
        self.fork_step = None
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        ws = self.warm_start
        if self.fork_step is not None or self.step % ws.check_every:
            return
        cost = ws.support_cost()
        self.history.append((self.step, int(cost[0]), int(cost[1])))
        if cost[0 if ws.kind == "macs" else 1] >= ws.target:
            self.fork_step = self.step
            self.model.stop_training = True

"""Importance of channel groups in a trained model: what to remove first (lowest score).

Each importance is a small callable ``importance(model, cost_model, data) ->
float64[groups]`` over the `groups.CostModel`'s groups (coupled channels are
scored together, Torch-Pruning's group importance), kept apart from budgets
and orchestration (`budget`, `pruner`):

* `Magnitude` (p = 1: Li et al. 2017's filter L1; p = 2): the p-norm of
  each member's fan-in kernel column ‖W[…, j]‖_p, reduced over the group's
  producer members (mean or sum);
* `BatchNormScale` (network slimming, Liu et al. 2017): |γ_c| of the group's
  BatchNormalization channels, reduced over them;
* `Taylor` (first order, Molchanov et al. 2019, eq. 8 with the group as S):
  I_S = (Σ_{s∈S} g_s·w_s)², g = ∂L/∂w on one mini-batch, averaged over
  ``num_batches`` mini-batches; S holds every kernel entry (and bias) of
  the group's producer units and the γ, β of its normalization channels,
  i.e. the first-order change of the loss when the whole group is zeroed.

`Pruner` ranks groups within a family (the groups of the same layers) by
these scores, and across families after dividing each score by its family's
mean (``normalize=True``, Torch-Pruning's ``normalizer="mean"``), so a layer
of large weights does not keep all its channels just for its scale.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_dessilbi import _validate
from tf_dessilbi import walk
from tf_dessilbi.dependency import handlers as handlers_lib

_REDUCTIONS = ("mean", "sum")


def _reduce(values, reduction):
    values = np.asarray(values, np.float64)
    return float(values.sum() if reduction == "sum" else values.mean())


def _layer_weights(model) -> dict:
    return {layer.name: handlers_lib.weights_of(layer) for layer in walk.layers(model)}


def _producer_columns(weights, name, unit):
    """The fan-in kernel column of producer unit ``unit`` (kernel ``(*k, in, out)``), flattened."""
    w = weights[name]
    key = "pointwise_kernel" if "pointwise_kernel" in w else "kernel"
    return w[key][..., unit].reshape(-1)


class Importance:
    """Base: ``__call__(model, cost_model, data=None) -> float64[len(cost_model.groups)]``."""

    needs_data = False

    def __call__(self, model, cost_model, data=None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Magnitude(Importance):
    """‖W[…, j]‖_p of the group's producer units, reduced over them.

    Args:
        p: 1 (filter L1, Li et al. 2017) or 2. Defaults to `1`.
        reduction: ``"mean"`` or ``"sum"`` over the group's producer units.
            Defaults to `"mean"`.
    """

    def __init__(self, p: int = 1, reduction: str = "mean"):
        if p not in (1, 2) or isinstance(p, bool):
            raise ValueError(f"`p` must be 1 or 2. Received: p={p!r}")
        self.p = int(p)
        self.reduction = _validate.one_of("reduction", reduction, _REDUCTIONS)

    def __call__(self, model, cost_model, data=None) -> np.ndarray:
        weights = _layer_weights(model)
        return np.array([
            _reduce([np.linalg.norm(_producer_columns(weights, n, u).astype(np.float64), self.p)
                     for n, u in g.producers], self.reduction)
            for g in cost_model.groups])

    def get_config(self) -> dict:
        return {"p": self.p, "reduction": self.reduction}


class BatchNormScale(Importance):
    """|γ_c| of the group's BatchNormalization channels (network slimming), reduced over them.

    A group without a BatchNormalization channel scores +inf (never removed
    by this importance).

    Args:
        reduction: ``"mean"`` or ``"sum"``. Defaults to `"mean"`.
    """

    def __init__(self, reduction: str = "mean"):
        self.reduction = _validate.one_of("reduction", reduction, _REDUCTIONS)

    def __call__(self, model, cost_model, data=None) -> np.ndarray:
        weights = _layer_weights(model)
        bn = {layer.name for layer in walk.layers(model)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.scale}
        if not bn:
            raise ValueError(f"BatchNormScale needs BatchNormalization layers with a scale γ; "
                             f"model {model.name!r} has none.")
        scores = []
        for g in cost_model.groups:
            gammas = [abs(float(weights[n]["gamma"][c])) for n, c in g.channelwise if n in bn]
            scores.append(_reduce(gammas, self.reduction) if gammas else np.inf)
        return np.array(scores)

    def get_config(self) -> dict:
        return {"reduction": self.reduction}


class Taylor(Importance):
    """First-order Taylor importance (Molchanov et al., CVPR 2019), per group.

    I_S = mean over mini-batches of (Σ_{s∈S} g_s·w_s)², S the group's
    producer kernel columns and biases and its normalization channels' γ, β.
    Gradients are taken in inference mode (BatchNormalization on its moving
    statistics), so scoring changes no variable. TensorFlow backend.

    Args:
        num_batches: mini-batches of ``data`` to average over. Defaults to `8`.
        loss: ``loss(y, logits)``; sparse categorical cross-entropy from
            logits when `None`. Defaults to `None`.
    """

    needs_data = True

    def __init__(self, num_batches: int = 8, loss=None):
        self.num_batches = _validate.positive_int("num_batches", num_batches)
        if loss is not None and not callable(loss):
            raise TypeError(f"`loss` must be callable or None. Received: loss={loss!r}")
        self.loss = loss

    def __call__(self, model, cost_model, data=None) -> np.ndarray:
        import tensorflow as tf

        from tf_dessilbi.sparse import snip

        snip.check_backend("Taylor")
        batches = snip.take_batches(data, self.num_batches, "Taylor")
        loss = self.loss or snip.default_loss()
        layers = {layer.name: layer for layer in walk.layers(model)}
        names = sorted({n for g in cost_model.groups for n, _ in g.producers + g.channelwise})
        variables = [(n, v.name.split("/")[-1], v) for n in names for v in layers[n].trainable_weights]
        total = np.zeros(len(cost_model.groups))
        for x, y in batches:
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=False))
            grads = tape.gradient(value, [v for _, _, v in variables])
            # per-unit Σ g·w of every weight, keyed (layer, weight name): last axis = unit/channel
            contrib = {}
            for (n, k, v), g in zip(variables, grads):
                if g is None:
                    continue
                gw = np.asarray(g, np.float64) * np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                contrib[(n, k)] = gw.reshape(-1, gw.shape[-1]).sum(axis=0)
            for i, g in enumerate(cost_model.groups):
                s = 0.0
                for n, u in list(g.producers) + list(g.channelwise):
                    s += sum(float(c[u]) for (ln, _), c in contrib.items() if ln == n)
                total[i] += s * s
        return total / len(batches)

    def get_config(self) -> dict:
        return {"num_batches": self.num_batches}


IMPORTANCES = {
    "l1": lambda: Magnitude(1),
    "l2": lambda: Magnitude(2),
    "bn": BatchNormScale,
    "taylor": Taylor,
}


def get(importance) -> Importance:
    """An `Importance` from an instance or a name of `IMPORTANCES`."""
    if isinstance(importance, Importance):
        return importance
    if isinstance(importance, str) and importance in IMPORTANCES:
        return IMPORTANCES[importance]()
    raise ValueError(f"`importance` must be an Importance or one of {sorted(IMPORTANCES)}. "
                     f"Received: importance={importance!r}")


def normalized(scores: np.ndarray, cost_model, normalize: bool = True) -> np.ndarray:
    """Scores divided by their family's mean (finite scores), for global ranking."""
    scores = np.asarray(scores, np.float64).copy()
    if not normalize:
        return scores
    for members in cost_model.families:
        s = scores[members]
        finite = s[np.isfinite(s)]
        mean = finite.mean() if finite.size else 0.0
        if mean > 0:
            scores[members] = s / mean
    return scores

"""Greedy forward selection of units from a trained network.

Ye, Gong, Nie, Zhu, Liu & Liu, "Good subnetworks provably exist: pruning
via greedy forward selection", ICML 2020. Layer by layer (input to output),
start from the empty unit set S = ∅ of the layer and repeat

::

    C  = a random sample of ``num_candidates`` units not in S
    j* = argmin_{j ∈ C} L_B(S ∪ {j})        (L_B: the loss on a mini-batch B)
    S  ← S ∪ {j*}

until L_B(S) ≤ L_B(full layer) + ``tolerance`` or |S| reaches the unit
budget; then the network with every layer's S is fine-tuned (weights not
re-initialized). The gap to the full network decays exponentially in |S|.

Variant implemented: the *mask* variant of the paper's deep-network code —
selection without replacement, a unit outside S removed whole (its kernel
column and its bias zeroed, so it outputs act(0)), and no 1/(n+1)
re-averaging of the layer's output (the rescaling of the mean-field
analysis); fine-tuning absorbs the scale. "Full" means the current network
with this layer whole (the earlier layers already pruned), so each layer
may cost at most ``tolerance``. Each selection step draws a fresh
mini-batch from ``data`` (the same one for all candidates of that step).

Producer layers only (Dense neurons, conv filters); the model's output
layers are never pruned (their units are the classes). The result is a
structural `tf_dessilbi.masks.Mask` ``units={layer: bool[units]}`` (what
`shrink` takes) and a copy of the model wrapped in `MaskedLayer` with that
mask broadcast over the kernels. TensorFlow backend.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.sparse import snip


# ------------------------------------------------------------------ layers
def _output_layer_names(model) -> set:
    names = set()
    for tensor in model.outputs:
        try:
            names.add(_compat.producing_operation(tensor).name)
        except AttributeError:
            pass
    return names


def selectable_layers(model: keras.Model, layers: Optional[Sequence[str]] = None) -> list:
    """The producer layers greedy selection prunes, in model order.

    Args:
        model: a built Functional / Sequential model.
        layers: layer names (None: every producer layer with a sparsifiable
            weight except the model's output layers).

    Raises:
        ValueError: an unknown name, a layer with no sparsifiable weight or
            no output units (not a producer), or nothing to select.
    """
    walk.check_graph_model(model, "greedy_forward_selection")
    producers = [
        layer for layer, _, spec in walk.sparsifiable(model)
        if spec.role == "producer" and spec.gateable
    ]
    if layers is None:
        outputs = _output_layer_names(model)
        chosen = [layer for layer in producers if layer.name not in outputs]
    else:
        if isinstance(layers, str) or not hasattr(layers, "__iter__"):
            raise TypeError(f"`layers` must be a sequence of layer names. Received: layers={layers!r}")
        layers = list(layers)
        if not all(isinstance(name, str) for name in layers):
            raise TypeError(f"`layers` must be a sequence of layer names. Received: layers={layers!r}")
        by_name = {layer.name: layer for layer in walk.layers(model)}
        producer_names = {layer.name for layer in producers}
        chosen = []
        for name in layers:
            if name not in by_name:
                raise ValueError(
                    f"`layers` names {name!r}, which is not a layer of model {model.name!r}. "
                    f"Producer layers: {sorted(producer_names)}"
                )
            if name not in producer_names:
                raise ValueError(
                    f"Layer {name!r} ({type(by_name[name]).__name__}) has no sparsifiable weight "
                    f"with output units to select. Producer layers: {sorted(producer_names)}"
                )
        outputs = sorted(set(layers) & _output_layer_names(model))
        if outputs:
            raise ValueError(
                f"`layers` names the output layer(s) {outputs} of model {model.name!r}: their "
                f"units are the model's outputs (class logits) and are never pruned. "
                f"Received: layers={list(layers)!r}")
        chosen = [layer for layer in producers if layer.name in set(layers)]
    if not chosen:
        raise ValueError(
            f"greedy_forward_selection() found no producer layer to select units of in "
            f"model {model.name!r} (the output layers are never pruned)."
        )
    return chosen


# ------------------------------------------------------------- the result
@dataclasses.dataclass
class GreedyStep:
    """One selection step: the candidates, their losses, the pick."""

    candidates: list
    losses: list
    chosen: int
    loss: float
    full_loss: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class GreedyResult:
    """What `greedy_forward_selection` found.

    Attributes:
        mask: ``Mask(units={layer: bool[units]})``, the structural mask.
        model: the masked copy (fine-tuned when asked).
        steps: ``{layer: [GreedyStep]}``, the selection trace.
        order: ``{layer: [unit indices in the order they were added]}``.
        unit_density: kept / total units of the selected layers.
        weight_density: kept / total weights of every masked kernel, counting
            as removed both the kernel slices of removed units and the
            following producer layer's inputs fed by them.
        full_eval, selected_eval, eval: ``{"loss", "accuracy"}`` of the
            trained network, after selection, after fine-tuning (None
            without ``eval_data``).
    """

    mask: masks_lib.Mask
    model: keras.Model
    steps: dict
    order: dict
    unit_density: float
    weight_density: float
    full_eval: Optional[dict] = None
    selected_eval: Optional[dict] = None
    eval: Optional[dict] = None

    def to_dict(self) -> dict:
        return {
            "units": {k: [int(i) for i in np.flatnonzero(v)] for k, v in self.mask.units.items()},
            "units_kept": {k: int(v.sum()) for k, v in self.mask.units.items()},
            "units_total": {k: int(v.size) for k, v in self.mask.units.items()},
            "order": {k: [int(i) for i in v] for k, v in self.order.items()},
            "steps": {k: [s.to_dict() for s in v] for k, v in self.steps.items()},
            "unit_density": self.unit_density,
            "weight_density": self.weight_density,
            "full_eval": self.full_eval,
            "selected_eval": self.selected_eval,
            "eval": self.eval,
        }


# ----------------------------------------------------------- the machinery
class _UnitSwitch:
    """Turns a wrapped layer's units on and off (kernel slices via the mask, bias zeroed)."""

    def __init__(self, wrapper, spec):
        self.wrapper = wrapper
        self.spec = spec
        shape = tuple(wrapper.weight_variable.shape)
        self.unit_shape = [shape[a] for a in spec.unit_axes]
        self.count = int(np.prod(self.unit_shape))
        self.expand = np.ones(len(shape), int)
        for axis, size in zip(spec.unit_axes, self.unit_shape):
            self.expand[axis] = size
        self.shape = shape
        self.bias = walk.bias_of(wrapper.layer)
        self.full_bias = None if self.bias is None else np.array(keras.ops.convert_to_numpy(self.bias))

    def set(self, units: np.ndarray) -> None:
        units = np.asarray(units, bool)
        self.wrapper.weight_mask.assign(np.broadcast_to(units.reshape(self.expand), self.shape))
        if self.bias is not None:
            self.bias.assign(np.where(units.reshape(self.full_bias.shape), self.full_bias, 0))


class _HoldBiases(keras.callbacks.Callback):
    """Keeps the biases of removed units at zero while fine-tuning (a removed unit stays removed)."""

    def __init__(self, holds):
        super().__init__()
        self.holds = [(b, keras.ops.convert_to_tensor(u.astype("float32"))) for b, u in holds]

    def on_train_batch_end(self, batch, logs=None):
        for bias, units in self.holds:
            bias.assign(bias * keras.ops.cast(units, bias.dtype))


def _input_rows(model, layer, units: dict):
    """Bool mask over ``layer``'s kernel input axis: inputs fed by a kept unit (None: unknown)."""
    spec = registry.layer_spec(layer)
    repeat = 1
    try:
        op = _compat.producing_operation(layer.input)
    except (AttributeError, ValueError):
        return None
    while True:
        op_spec = registry.layer_spec(op)
        if op_spec is None:
            return None
        if op_spec.role == "producer" and op.name in units:
            rows = np.tile(units[op.name], repeat)  # channels_last flatten: channel fastest
            return rows if rows.size == tuple(walk.find_weight(layer, spec.weight_name)[1].shape)[spec.input_axis] else None
        if op_spec.role == "flatten":
            repeat *= int(np.prod(op.input.shape[1:-1]))
        elif op_spec.role not in ("passthrough", "channelwise"):
            return None
        op = _compat.producing_operation(op.input)


def _weight_density(model, units: dict) -> float:
    kept = total = 0
    for layer, variable, spec in walk.sparsifiable(model):
        if not spec.gateable:
            continue
        m = np.ones(tuple(variable.shape), bool)
        if layer.name in units:
            expand = np.ones(m.ndim, int)
            for axis in spec.unit_axes:
                expand[axis] = m.shape[axis]
            m &= np.broadcast_to(units[layer.name].reshape(expand), m.shape)
        rows = _input_rows(model, layer, units) if spec.input_axis is not None else None
        if rows is not None:
            expand = np.ones(m.ndim, int)
            expand[spec.input_axis] = rows.size
            m &= np.broadcast_to(rows.reshape(expand), m.shape)
        kept += int(m.sum())
        total += int(m.size)
    return kept / max(total, 1)


def _evaluate(model, data, steps, loss):
    if data is None:
        return None
    model.compile(loss=loss, metrics=["accuracy"])
    result = model.evaluate(data, steps=steps, verbose=0, return_dict=True)
    return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}


# -------------------------------------------------------------- the driver
def greedy_forward_selection(
    model: keras.Model,
    data,
    *,
    num_candidates: int = 50,
    tolerance: float = 0.02,
    unit_budget: float = 1.0,
    layers: Optional[Sequence[str]] = None,
    loss=None,
    seed: int = 0,
    fine_tune_epochs: int = 0,
    steps_per_epoch: Optional[int] = None,
    make_optimizer: Optional[Callable] = None,
    eval_data=None,
    eval_steps: Optional[int] = None,
    verbose: int = 0,
) -> GreedyResult:
    """Selects units layer by layer, then fine-tunes (see the module docstring).

    Args:
        model: the trained network (left unchanged: the result is a copy).
        data: repeating ``(x, y)`` mini-batches (one per selection step, and
            the fine-tuning data).
        num_candidates: units sampled per step. Defaults to `50`.
        tolerance: stop a layer once L_B(S) ≤ L_B(full) + tolerance.
            Defaults to `0.02`.
        unit_budget: at most ``round(unit_budget · units)`` units per layer
            (at least 1), in (0, 1]. Defaults to `1.0`.
        layers: names of the layers to prune. Defaults to every producer
            layer but the output layers.
        loss: ``loss(y, logits)``. Defaults to sparse CE from logits.
        seed: NumPy seed of the candidate samples. Defaults to `0`.
        fine_tune_epochs: epochs of fine-tuning (0: none). Defaults to `0`.
        steps_per_epoch: steps per fine-tuning epoch (needed with
            ``fine_tune_epochs``).
        make_optimizer: ``() -> optimizer`` for fine-tuning (needed with
            ``fine_tune_epochs``).
        eval_data: ``(x, y)`` batches for the accuracies (optional).
        eval_steps: evaluation batches (None: all of ``eval_data``).
        verbose: fine-tuning `fit` verbosity. Defaults to `0`.

    Returns:
        A `GreedyResult`.

    Raises:
        ValueError / TypeError: a bad argument, a layer without units, an
            empty dataset, before anything is selected or trained.
    """
    import tensorflow as tf

    from tf_dessilbi.layers import MaskedLayer, mask_model

    snip.check_backend("greedy_forward_selection")
    num_candidates = _validate.positive_int("num_candidates", num_candidates)
    tolerance = _validate.non_negative("tolerance", tolerance)
    unit_budget = _validate.real("unit_budget", unit_budget, minimum=0.0, maximum=1.0, min_open=True)
    seed = _validate.integer("seed", seed, minimum=0)
    fine_tune_epochs = _validate.integer("fine_tune_epochs", fine_tune_epochs, minimum=0)
    if fine_tune_epochs:
        steps_per_epoch = _validate.positive_int("steps_per_epoch", steps_per_epoch)
        if not callable(make_optimizer):
            raise TypeError(
                "`make_optimizer` must be callable() -> optimizer when fine_tune_epochs > 0. "
                f"Received: make_optimizer={make_optimizer!r}"
            )
    chosen = selectable_layers(model, layers)
    snip.take_batches(data, 1, "greedy_forward_selection")  # refuses an empty dataset
    loss = loss or snip.default_loss()
    rng = np.random.default_rng(seed)

    masked = mask_model(model)
    wrappers = {w.layer.name: w for w in masks_lib.find_wrappers(masked, MaskedLayer)}
    switches = {layer.name: _UnitSwitch(wrappers[layer.name], registry.layer_spec(layer))
                for layer in chosen}
    full_eval = _evaluate(masked, eval_data, eval_steps, loss)

    @tf.function
    def batch_loss(x, y):
        return loss(y, masked(x, training=False))

    batches = iter(data)
    steps, order, units = {}, {}, {}
    for layer in chosen:
        switch = switches[layer.name]
        budget = max(1, int(math.floor(unit_budget * switch.count + 0.5)))
        selected = np.zeros(switch.count, bool)
        trace = []
        while selected.sum() < budget:
            x, y = next(batches)[:2]
            switch.set(np.ones(switch.count, bool))
            full = float(batch_loss(x, y))
            remaining = np.flatnonzero(~selected)
            candidates = np.sort(rng.choice(remaining, size=min(num_candidates, remaining.size),
                                            replace=False))
            losses = []
            for j in candidates:
                trial = selected.copy()
                trial[j] = True
                switch.set(trial)
                losses.append(float(batch_loss(x, y)))
            best = int(candidates[int(np.argmin(losses))])
            selected[best] = True
            trace.append(GreedyStep([int(c) for c in candidates], losses, best, min(losses), full))
            if min(losses) <= full + tolerance:
                break
        switch.set(selected)
        steps[layer.name] = trace
        order[layer.name] = [s.chosen for s in trace]
        units[layer.name] = selected
        logging.info("greedy selection: %s keeps %d/%d units (loss %.4f, full %.4f)",
                     layer.name, int(selected.sum()), switch.count, trace[-1].loss, trace[-1].full_loss)
    mask = masks_lib.Mask({}, units)
    for layer, _, kernel_mask in masks_lib.apply_to(mask, masked):  # the shared broadcast
        wrappers[layer.name].set_mask(kernel_mask)
    selected_eval = _evaluate(masked, eval_data, eval_steps, loss)
    final_eval = selected_eval
    if fine_tune_epochs:
        holds = [(s.bias, units[name]) for name, s in switches.items() if s.bias is not None]
        masked.compile(optimizer=make_optimizer(), loss=loss, metrics=["accuracy"])
        masked.fit(data, epochs=fine_tune_epochs, steps_per_epoch=steps_per_epoch,
                   callbacks=[_HoldBiases(holds)], verbose=verbose)
        final_eval = _evaluate(masked, eval_data, eval_steps, loss)
    kept_units = sum(int(u.sum()) for u in units.values())
    total_units = sum(int(u.size) for u in units.values())
    return GreedyResult(
        mask=mask, model=masked, steps=steps, order=order,
        unit_density=kept_units / total_units, weight_density=_weight_density(model, units),
        full_eval=full_eval, selected_eval=selected_eval, eval=final_eval,
    )


# -------------------------------------------------------------- CLI hook
def run(config, workdir: str, data, strategy, build_optimizer) -> dict:
    """CLI hook: train ``config.model.name`` densely, select units, fine-tune.

    The dense run takes ``config.num_epochs`` epochs (SGD from
    ``config.optimizer`` / ``config.schedule``); then ``config.sparse``:
    ``num_candidates``, ``tolerance``, ``unit_budget``,
    ``fine_tune_epochs`` (fine-tuning with a fresh optimizer of the same
    recipe). Writes ``greedy.json`` and ``mask.npz`` to ``workdir``.
    ``build_optimizer(config, model, steps_per_epoch)`` builds the SGD
    (the training package's, passed in by its ``METHODS`` table: procedures
    sit below training).
    """
    from tf_dessilbi import models as models_lib
    from tf_dessilbi.procedures.imp import write_run
    from tf_dessilbi.sparsity import sparsity_report

    if config.optimizer.name != "sgd":
        raise ValueError(
            "Greedy selection trains with SGD: config.optimizer.name must be 'sgd'. "
            f"Received: {config.optimizer.name!r}"
        )
    s = config.sparse
    steps = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    loss = snip.default_loss()
    with strategy.scope():
        model = models_lib.get_model(config.model.name, input_shape=data.input_shape,
                                     num_classes=data.num_classes)
        model.compile(optimizer=build_optimizer(config, model, steps), loss=loss, metrics=["accuracy"])
    model.fit(data.train, epochs=config.num_epochs, steps_per_epoch=steps, verbose=config.verbose)
    result = greedy_forward_selection(
        model, data.train, num_candidates=s.num_candidates, tolerance=s.tolerance,
        unit_budget=s.unit_budget, seed=config.seed, fine_tune_epochs=s.fine_tune_epochs,
        steps_per_epoch=steps, make_optimizer=lambda: build_optimizer(config, None, steps),
        eval_data=data.eval, eval_steps=config.eval_steps or None, verbose=config.verbose,
    )
    summary = result.to_dict()
    summary["eval"] = result.eval
    summary["sparsity"] = sparsity_report(result.model).to_dict()  # its MaskedLayer masks
    return write_run(workdir, "greedy", summary, result.mask)

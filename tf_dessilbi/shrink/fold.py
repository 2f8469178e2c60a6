"""Constant folding: removed units whose output is a constant, into the consumer's bias.

A removed unit's output is not always zero: a dead producer unit outputs
act(b_j), BatchNormalization turns a zero channel into β − γ·m/√(v+ε), and
zero padding makes a border. Where a kept unit of a consumer reads a removed
channel through a nonzero weight, the channel's value v there decides:

* *exact*: v is the same in the sparse model and in the reference (the model
  with the removed units' kernel, bias and BN γ/β zeroed), typically 0;
* *folded* (``fold_constants``): v is a constant c (same at every position
  and for every input) and the consumer is linear with no padding (Dense; a
  convolution with ``valid`` padding or a 1×…×1 kernel): Δb = Σ_r c_r ΣW[…, r, :]
  makes the result equal the *unzeroed* sparse model;
* *zeroed*: otherwise the result equals the reference, whose value z there
  is folded the same way (z = 0 usually needs nothing).

A class that is neither (z ≠ 0 not foldable) is kept whole instead.

The constants are read off the model itself: it is run (eagerly, on two
random inputs) once as it is and once with the removed units zeroed, and a
removed channel is constant where it does not vary over batch and positions.
A dead unit's output does not depend on the input (its kernel column is zero),
so two inputs suffice. The calls of a sub-model called more than once are
stacked, so a constant must be the same in every call to fold into the
shared layer's bias; a shared leaf layer is never folded into.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tf_dessilbi import _compat
from tf_dessilbi.dependency import handlers as handlers_lib

_TOLERANCE = 1e-6


@dataclasses.dataclass
class FoldPlan:
    """Bias changes per consumer, and which classes were folded, zeroed or must stay."""

    bias_delta: dict = dataclasses.field(default_factory=dict)  # {id(layer): array}
    folded: set = dataclasses.field(default_factory=set)
    zeroed: set = dataclasses.field(default_factory=set)
    pin: list = dataclasses.field(default_factory=list)


def run_graph(model, inputs, record) -> dict:
    """Runs a graph model eagerly; returns ``{tensor id: array}`` for the ids in ``record``."""
    store = {}
    _run(model, list(inputs), store, set(record))
    return store


def _run(model, flat_inputs, store, record):
    graph = _compat.functional_graph(model)
    values = {id(t): x for t, x in zip(graph.inputs, flat_inputs)}
    for tensor, value in zip(graph.inputs, flat_inputs):
        _keep(store, record, tensor, value)
    for node in _compat.graph_nodes(model):
        op = _compat.node_operation(node)
        args, kwargs = _compat.node_call_arguments(node, values)
        if _compat.is_graph_model(op):
            outs = _run(op, keras.tree.flatten(args), store, record)
        else:
            outs = keras.tree.flatten(op(*args, **kwargs))
        for tensor, value in zip(_compat.node_output_tensors(node), outs):
            values[id(tensor)] = value
            _keep(store, record, tensor, value)
    return [values[id(t)] for t in graph.outputs]


def _keep(store, record, tensor, value):
    """Records a value; a sub-model called twice stacks its calls along the batch axis."""
    if id(tensor) in record:
        value = np.asarray(keras.ops.convert_to_numpy(value))
        previous = store.get(id(tensor))
        store[id(tensor)] = value if previous is None else np.concatenate([previous, value])


def _constants(array) -> np.ndarray:
    """Per last-axis entry: its value if constant over every other axis, else NaN."""
    flat = array.reshape(-1, array.shape[-1]).astype(np.float64)
    first = flat[0]
    spread = flat.max(axis=0) - flat.min(axis=0)
    return np.where(spread <= _TOLERANCE * (1.0 + np.abs(first)), first, np.nan)


def _random_inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    inputs = []
    for tensor in _compat.functional_graph(model).inputs:
        shape = [2] + [2 if d is None else int(d) for d in tensor.shape[1:]]
        dtype = tensor.dtype or "float32"
        if np.issubdtype(np.dtype(dtype), np.integer) or dtype == "bool":  # ids, masks: 0 / 1
            inputs.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(dtype))
    return inputs


def _zeroed_weights(graph, weights, decision) -> dict:
    """``{id(layer): weights}`` with the removed units zeroed (every part of a layer in turn)."""
    zeroed = {}
    for info in graph.infos.values():
        if info.role == "producer":
            units = np.flatnonzero(~decision.kept(info.out_elems))
        elif info.role in ("depthwise", "channelwise"):
            units = np.flatnonzero(~decision.kept(info.in_elems))
        else:
            continue
        if len(units):
            key = id(info.layer)
            zeroed[key] = info.handler.zero_units(zeroed.get(key, weights[key]), units)
    return zeroed


def plan(graph, model, weights, decision, fold_constants: bool) -> FoldPlan:
    """Works out the bias changes (see the module docstring)."""
    roots, removed = decision.roots, decision.removed
    needs = []  # (edge index, rows needing a value)
    for index, (info, tid) in enumerate(graph.edges):
        w = weights[id(info.layer)]
        kept_out = np.flatnonzero(decision.kept(info.out_elems))
        rows = removed[roots[graph.labels[tid]]] & info.handler.rows_nonzero(w, kept_out)
        if rows.any():
            needs.append((index, rows))
    result = FoldPlan()
    if not needs:
        return result
    record = {graph.edges[i][1] for i, _ in needs if graph.edges[i][1] >= 0}
    inputs = _random_inputs(model)
    sparse = run_graph(model, inputs, record)
    zeroed_weights = _zeroed_weights(graph, weights, decision)
    layers = {id(info.layer): info.layer for info in graph.infos.values()}
    try:
        for key, w in zeroed_weights.items():
            handlers_lib.assign(layers[key], w)
        reference = run_graph(model, inputs, record)
    finally:
        for key in zeroed_weights:
            handlers_lib.assign(layers[key], weights[key])

    entries = {}  # class root -> [(edge index, row, c, z)]
    for index, rows in needs:
        tid = graph.edges[index][1]
        if tid < 0:  # attention heads: the reference gives a removed head 0
            width = len(graph.labels[tid])
            c, z = np.full(width, np.nan), np.zeros(width)
        else:
            c, z = _constants(sparse[tid]), _constants(reference[tid])
        classes = roots[graph.labels[tid]]
        for r in np.flatnonzero(rows):
            entries.setdefault(int(classes[r]), []).append((index, int(r), c[r], z[r]))

    def foldable(index):
        info = graph.edges[index][0]
        return info.handler.foldable(info.layer) and len(info.calls) == 1

    values = {}  # edge index -> array of values to fold
    for root, items in entries.items():
        def fits(which):
            return all(
                np.isfinite(item[which]) and (item[which] == 0 or foldable(item[0]))
                for item in items
            )

        same = all(
            np.isfinite(c) and abs(c - z) <= _TOLERANCE * (1 + abs(c)) for _, _, c, z in items
        )
        if same and fits(2):
            which = 2
        elif fold_constants and fits(2):
            which = 2
            result.folded.add(root)
        elif fits(3):
            which = 3
            result.zeroed.add(root)
        else:
            result.pin.append(root)
            continue
        for index, r, *vz in items:
            value = vz[which - 2]
            if value != 0:
                if which == 2:
                    result.folded.add(root)
                info, tid = graph.edges[index]
                values.setdefault(index, np.zeros(len(graph.labels[tid])))[r] = value
    for index, vector in values.items():
        info = graph.edges[index][0]
        delta = info.handler.fold(weights[id(info.layer)], vector)
        key = id(info.layer)
        result.bias_delta[key] = result.bias_delta.get(key, 0) + delta
    return result

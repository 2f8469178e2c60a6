"""Replays a graph model with every layer rebuilt at its new width.

Each leaf layer is recreated from its config (``units`` / ``filters`` set to
the kept count, a Reshape's target shape to the new channel count) and gets
its sliced weights; nested Sequential / Functional models are rebuilt the same
way and called in place, so Sequential stays Sequential and Functional stays
Functional, with the same layer and model names. Shared layers stay shared.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_dessilbi import _compat
from tf_dessilbi.dependency import handlers as handlers_lib


class Rebuilder:
    """Builds the shrunk model from a graph, a decision and the (masked) weights."""

    def __init__(self, graph, decision, weights, bias_delta):
        self.graph = graph
        self.decision = decision
        self.weights = weights
        self.bias_delta = bias_delta
        self.cache = {}
        self.pending = []  # (new layer, {weight name: array})

    def build(self, model):
        new = self._model(model)
        for layer, arrays in self.pending:
            handlers_lib.assign(layer, arrays)
        return new

    # ---------------------------------------------------------------- graph
    def _width(self, tensor) -> int:
        return int(self.decision.kept(self.graph.labels[id(tensor)]).sum())

    def _input(self, tensor):
        last = tensor.shape[-1]
        shape = tuple(tensor.shape[1:-1]) + (None if last is None else self._width(tensor),)
        return keras.Input(shape=shape, dtype=tensor.dtype, name=tensor.name)

    def _model(self, model):
        if id(model) in self.cache:
            return self.cache[id(model)]
        graph = _compat.functional_graph(model)
        if isinstance(model, keras.Sequential):
            layers = [self._layer_or_model(layer) for layer in model.layers]
            new = keras.Sequential([self._input(graph.inputs[0])] + layers, name=model.name)
        else:
            inputs = [self._input(t) for t in graph.inputs]
            values = {id(t): x for t, x in zip(graph.inputs, inputs)}
            for node in _compat.graph_nodes(model):
                op = self._layer_or_model(_compat.node_operation(node))
                args, kwargs = _compat.node_call_arguments(node, values)
                outs = keras.tree.flatten(op(*args, **kwargs))
                for tensor, value in zip(_compat.node_output_tensors(node), outs):
                    values[id(tensor)] = value
            outputs = [values[id(t)] for t in graph.outputs]
            new = keras.Model(
                _compat.pack_inputs(model, inputs),
                _compat.pack_outputs(model, outputs),
                name=model.name,
            )
        self.cache[id(model)] = new
        return new

    def _layer_or_model(self, op):
        if _compat.is_graph_model(op):
            return self._model(op)
        if not isinstance(op, keras.layers.Layer):
            return op  # a stateless keras.ops operation: called again as it is
        if id(op) not in self.cache:
            self.cache[id(op)] = self._layer(op)
        return self.cache[id(op)]

    # ---------------------------------------------------------------- layers
    def _layer(self, layer):
        info = self.graph.infos[id(layer)]
        w = self.weights.get(id(layer))
        if w is None:
            w = handlers_lib.weights_of(layer)
        if info.role == "opaque":  # left whole: same config, same weights
            new = _compat.layer_from_own_config(layer)
            self.pending.append((new, w))
            return new
        config = layer.get_config()
        kept = self.decision.kept
        if info.role == "inner":  # a block cut from inside (keras-hub's TransformerEncoder)
            config, w, _ = info.handler.cut_inner(config, w)
            new = layer.__class__.from_config(config)
            self.pending.append((new, w))
            return new
        if hasattr(info.handler, "cut_attention"):
            keep = {
                role: np.flatnonzero(kept(self.graph.infos[(id(layer), role)].in_elems))
                for role in ("query", "key", "value")
            }
            keep["heads"] = np.flatnonzero(kept(info.in_elems))
            keep["out"] = np.flatnonzero(kept(info.out_elems))
            config, w = info.handler.cut_attention(config, w, keep, self.bias_delta.get(id(layer)))
        elif info.role == "producer":
            config, w = info.handler.cut(
                config,
                w,
                np.flatnonzero(kept(info.in_elems)),
                np.flatnonzero(kept(info.out_elems)),
                self.bias_delta.get(id(layer)),
            )
        elif info.role in ("depthwise", "channelwise"):
            config, w = info.handler.cut(
                config, w, np.flatnonzero(kept(info.in_elems)), total=len(info.in_elems)
            )
        elif isinstance(layer, keras.layers.Reshape):
            out = info.calls[0][1][0]
            shape = self.graph.shapes[out]
            width = int(kept(self.graph.labels[out]).sum())
            config = dict(config)
            config["target_shape"] = tuple(shape[1:-1]) + (width,)
        new = layer.__class__.from_config(config)
        self.pending.append((new, w))
        return new

"""The channel dependency graph of a Keras graph model (DepGraph over Keras' nodes).

Every channel of every tensor in the model gets a label, an element of a
union-find structure. Two labels in the same class must be removed together
or not at all: the class is the unit of physical removal. The rules, per
layer role of `tf_dessilbi.registry`:

* producer (Dense, Conv, ConvTranspose, SeparableConv): fresh labels for its
  output units; its input rows are per-layer labels joined to the labels of
  every tensor it reads (a shared layer couples its callers);
* depthwise: output channel (c, m) joined to input channel c;
* channelwise (BatchNormalization, PReLU): per-channel labels joined to the
  input channels, output = input labels;
* passthrough (activations, pooling, dropout, padding, up-sampling): output =
  input labels;
* flatten, and a reshape to 1-D: entry i of the NHWC-flattened tensor takes
  the label of channel ``i mod C``, so a removed channel removes H·W inputs of
  the next Dense; a reshape keeping the channel axis is a passthrough;
* merge (Add, Subtract, Multiply, Average, Maximum, Minimum): channel j of
  every input joined (a channel goes only if it goes in every input);
* concatenate: labels concatenated (offsets) along the channel axis;
* nested Sequential / Functional sub-models: their graphs inlined, their
  inputs joined to the tensors they are called on;
* per-channel layers (Rescaling, Normalization, layer scale) are channelwise;
  GroupNormalization and grouped convolutions (`grouped`) join the channels
  of each group, so only whole groups go; element-wise `keras.ops` nodes
  (`ops`) pass labels through or merge them; MultiHeadAttention
  (`attention`) has its heads as internal units between q/k/v and its
  output projection; a Permute keeping the channel axis last passes through.

Classes that may never go are *pinned*: model inputs and outputs, the inputs
and outputs of layers in ``keep`` (and of layers whose channel mapping is
unknown: a reshape or permute that moves the channel axis, a per-channel
layer over another axis), the channels of a softmax, LayerNormalization or
UnitNormalization (they mix channels: removing one changes the others), and
a channel broadcast across a merge or met by a per-channel constant.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from tf_dessilbi import _compat
from tf_dessilbi import registry
from tf_dessilbi.dependency import attention as attention_lib
from tf_dessilbi.dependency import grouped  # noqa: F401  (registers the grouped cuts)
from tf_dessilbi.dependency import handlers as handlers_lib
from tf_dessilbi.dependency import ops as ops_lib

_MIXING_ACTIVATIONS = ("softmax", "log_softmax")
# Layers whose output channel depends on the other channels: theirs never go.
_MIXING_LAYERS = (
    keras.layers.LayerNormalization,
    keras.layers.UnitNormalization,
    keras.layers.Softmax,
)


class UnionFind:
    """Union-find over integer elements, created on demand."""

    def __init__(self):
        self.parent = []

    def new(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, element: int) -> int:
        parent = self.parent
        root = element
        while parent[root] != root:
            root = parent[root]
        while parent[element] != root:
            parent[element], element = root, parent[element]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_arrays(self, a, b) -> None:
        for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            self.union(x, y)

    def roots(self) -> np.ndarray:
        """The class (root) of every element, as an array."""
        return np.array([self.find(e) for e in range(len(self.parent))], dtype=np.int64)


@dataclasses.dataclass
class LayerInfo:
    """What the graph knows about one leaf layer (shared by all its calls)."""

    layer: keras.layers.Layer
    role: str
    handler: object = None
    in_elems: Optional[np.ndarray] = None  # producer input rows / per-channel labels
    out_elems: Optional[np.ndarray] = None  # producer / depthwise output units
    calls: list = dataclasses.field(default_factory=list)  # [(input tids, output tids)]
    keep: bool = False
    part: str = ""  # a part of a layer with several (an attention layer's "query" heads)


class Graph:
    """Labels for the channels of a model's tensors, and the layers that own them.

    Attributes:
        uf: the `UnionFind` over labels.
        labels: ``{tensor id: int array}``, one label per last-axis entry.
        shapes: ``{tensor id: shape tuple}``.
        infos: ``{id(layer): LayerInfo}`` for every leaf layer, in call order.
        pinned: labels whose classes may never be removed.
        edges: ``[(LayerInfo, tensor id)]``: a producer reading a tensor.
    """

    def __init__(self, model, keep=()):
        self.model = model
        self.keep = set(keep)
        self.uf = UnionFind()
        self.labels = {}
        self.shapes = {}
        self.infos = {}
        self.pinned = []
        self.edges = []
        self._models_seen = set()
        inputs = _compat.functional_graph(model).inputs
        for tensor in inputs:
            if tensor.shape[-1] is None:  # token ids, masks: (batch, length), nothing to cut
                self._set(tensor, np.zeros(0, np.int64))
                continue
            labels = self._fresh(tensor)
            self.pinned.extend(labels.tolist())
        self._walk(model)
        for tensor in _compat.functional_graph(model).outputs:
            self.pinned.extend(self.labels[id(tensor)].tolist())
        unknown = sorted(self.keep - {info.layer.name for info in self.infos.values()})
        if unknown:
            raise ValueError(
                f"`keep` names layers {unknown} that model {model.name!r} does not have."
            )

    # ------------------------------------------------------------- building
    def _fresh(self, tensor) -> np.ndarray:
        labels = self.uf.new(_channels(tensor))
        self._set(tensor, labels)
        return labels

    def _set(self, tensor, labels) -> None:
        self.labels[id(tensor)] = np.asarray(labels, dtype=np.int64)
        self.shapes[id(tensor)] = tuple(tensor.shape)

    def _walk(self, model) -> None:
        for node in _compat.graph_nodes(model):
            op = _compat.node_operation(node)
            ins = _compat.node_input_tensors(node)
            outs = _compat.node_output_tensors(node)
            if _compat.is_graph_model(op):
                self._submodel(op, ins, outs)
            elif getattr(op, "name", None) in self.keep:
                self._opaque(op, ins, outs)
            elif attention_lib.inner_handler(op) is not None:  # cut from inside, stream whole
                self._opaque(op, ins, outs)
                self.infos[id(op)].role = "inner"
                self.infos[id(op)].handler = attention_lib.inner_handler(op)
            elif isinstance(op, keras.layers.MultiHeadAttention):
                self._attention(op, node, ins, outs)
            elif isinstance(op, keras.layers.Layer):
                self._leaf(op, ins, outs)
            else:
                self._op(op, node, ins, outs)

    def _submodel(self, sub, ins, outs) -> None:
        graph = _compat.functional_graph(sub)
        if len(graph.inputs) != len(ins):
            raise ValueError(
                f"Nested model {sub.name!r} is called on {len(ins)} tensors but has "
                f"{len(graph.inputs)} inputs; shrink needs plain positional calls."
            )
        first = id(sub) not in self._models_seen
        for inner, outer in zip(graph.inputs, ins):
            if first:
                self._set(inner, self.labels[id(outer)])
            else:
                self.uf.union_arrays(self.labels[id(inner)], self.labels[id(outer)])
        if first:
            self._models_seen.add(id(sub))
            self._walk(sub)
        for inner, outer in zip(graph.outputs, outs):
            self._set(outer, self.labels[id(inner)])

    def _info(self, layer, role, handler) -> LayerInfo:
        info = self.infos.get(id(layer))
        if info is None:
            info = LayerInfo(layer, role, handler, keep=layer.name in self.keep)
            self.infos[id(layer)] = info
        return info

    def _leaf(self, layer, ins, outs) -> None:
        spec = registry.layer_spec(layer)
        handler = None if spec is None else (spec.cut or _default_cut(spec.role))
        if spec is None or (spec.role in ("producer", "depthwise", "channelwise") and handler is None):
            raise ValueError(_refusal(layer, type(layer).__name__, "layer"))
        _check_channels_last(layer)
        if hasattr(handler, "for_layer"):
            handler = handler.for_layer(layer)
        role = spec.role
        if role == "channelwise" and not _last_axis_only(layer, ins[0]):
            return self._opaque(layer, ins, outs)
        if role == "permute" and _moves_channels(layer):
            return self._opaque(layer, ins, outs)
        info = self._info(layer, role, handler)
        in_labels = [self.labels[id(t)] for t in ins]
        info.calls.append(([id(t) for t in ins], [id(t) for t in outs]))
        if role == "producer":
            if len(ins) != 1 or len(outs) != 1:
                raise ValueError(f"Layer {layer.name!r} must be called on one tensor.")
            info.handler.check(layer)
            if info.in_elems is None:
                info.in_elems = self.uf.new(len(in_labels[0]))
                info.out_elems = self.uf.new(_channels(outs[0]))
                groups = getattr(info.handler, "groups", 1)
                if groups > 1:  # a grouped conv: a group's inputs and outputs go together
                    self._join_groups(info.in_elems, groups, info.out_elems)
            self.uf.union_arrays(info.in_elems, in_labels[0])
            self._set(outs[0], info.out_elems)
            self.edges.append((info, id(ins[0])))
            if _activation_name(layer) in _MIXING_ACTIVATIONS:
                self.pinned.extend(info.out_elems.tolist())
        elif role == "depthwise":
            info.handler.check(layer)
            channels = len(in_labels[0])
            if info.in_elems is None:
                info.in_elems = self.uf.new(channels)
                info.out_elems = self.uf.new(_channels(outs[0]))
                multiplier = len(info.out_elems) // channels
                self.uf.union_arrays(np.repeat(info.in_elems, multiplier), info.out_elems)
            self.uf.union_arrays(info.in_elems, in_labels[0])
            self._set(outs[0], info.out_elems)
        elif role == "channelwise":
            if isinstance(layer, _MIXING_LAYERS):
                self.pinned.extend(in_labels[0].tolist())  # mixes channels
            if info.in_elems is None:
                info.in_elems = self.uf.new(len(in_labels[0]))
                if hasattr(info.handler, "groups"):  # GroupNormalization: whole groups
                    self._join_groups(info.in_elems, info.handler.groups(layer))
            self.uf.union_arrays(info.in_elems, in_labels[0])
            self._set(outs[0], info.in_elems)
        elif role in ("passthrough", "permute"):
            if _activation_name(layer) in _MIXING_ACTIVATIONS or isinstance(layer, _MIXING_LAYERS):
                self.pinned.extend(in_labels[0].tolist())
            for t in outs:
                self._set(t, in_labels[0])
        elif role in ("flatten", "reshape"):
            if not self._reshape(layer, ins[0], outs[0], in_labels[0]):
                del self.infos[id(layer)]
                return self._opaque(layer, ins, outs)
        elif role == "merge":
            self._merge(layer, in_labels, outs[0])
        elif role == "concatenate":
            rank = len(outs[0].shape)
            if layer.axis % rank == rank - 1:
                self._set(outs[0], np.concatenate(in_labels))
            else:
                self._merge(layer, in_labels, outs[0])
        elif role == "input":
            for t in outs:
                self._fresh(t)
        else:  # pragma: no cover - roles are validated by the registry
            raise ValueError(f"Unknown role {role!r} of layer {layer.name!r}.")

    def _op(self, op, node, ins, outs) -> None:
        """A `keras.ops` function recorded as a node (`tf_dessilbi.dependency.ops`)."""
        name = _compat.keras_op_name(op)
        kind = None if name is None else ops_lib.kind(name)
        if kind is None or len(outs) != 1 or not ins:
            raise ValueError(_refusal(op, name or type(op).__name__, "operation"))
        in_labels = [self.labels[id(t)] for t in ins]
        info = self._info(op, "op", None)
        info.calls.append(([id(t) for t in ins], [id(t) for t in outs]))
        width = _channels(outs[0])
        for value in _compat.node_constants(node):
            if np.ndim(value) and np.shape(value)[-1] > 1:  # a per-channel constant
                for labels in in_labels:
                    self.pinned.extend(labels.tolist())
        if kind == "passthrough" and len(in_labels[0]) == width:
            self._set(outs[0], in_labels[0])
        else:
            self._merge(op, in_labels, outs[0])

    def _attention(self, layer, node, ins, outs) -> None:
        """MultiHeadAttention (`tf_dessilbi.dependency.attention`): heads as internal units."""
        attention_lib.check(layer)
        args, kwargs = _compat.node_arguments(node)
        named = dict(zip(("query", "value", "key"), args))
        named.update({k: v for k, v in kwargs.items() if k in ("query", "value", "key")})
        if named.get("key") is None:
            named["key"] = named["value"]
        for t in ins:  # masks and other tensors: left as they are
            if all(t is not named[role] for role in attention_lib.ROLES):
                self.pinned.extend(self.labels[id(t)].tolist())
        info = self._info(layer, "producer", attention_lib.HEADS_INTO)
        info.calls.append(([id(named["query"])], [id(outs[0])]))
        if info.in_elems is None:
            heads = self.uf.new(int(layer.num_heads))
            info.in_elems = heads
            info.out_elems = self.uf.new(_channels(outs[0]))
            for role in attention_lib.ROLES:
                self.infos[(id(layer), role)] = LayerInfo(
                    layer, "producer", attention_lib.HEADS_FROM[role],
                    in_elems=self.uf.new(_channels(named[role])), out_elems=heads, part=role,
                )
        for role in attention_lib.ROLES:
            part = self.infos[(id(layer), role)]
            self.uf.union_arrays(part.in_elems, self.labels[id(named[role])])
            self.edges.append((part, id(named[role])))
        heads_tid = -len(self.edges) - 1  # the heads: a tensor the graph does not hold
        self.labels[heads_tid] = info.in_elems
        self.edges.append((info, heads_tid))
        self._set(outs[0], info.out_elems)

    def _join_groups(self, elems, groups, more=None) -> None:
        """Joins the labels of each of ``groups`` equal groups (and of ``more``'s group)."""
        size = len(elems) // groups
        step = None if more is None else len(more) // groups
        for g in range(groups):
            members = elems[g * size:(g + 1) * size].tolist()
            if more is not None:
                members += more[g * step:(g + 1) * step].tolist()
            for element in members[1:]:
                self.uf.union(members[0], element)

    def _opaque(self, layer, ins, outs) -> None:
        """A layer left whole (in ``keep``, or one whose channels cannot be mapped):
        its inputs and outputs pinned, its weights copied as they are."""
        for t in ins:
            self.pinned.extend(self.labels[id(t)].tolist())
        for t in outs:
            self.pinned.extend(self._fresh(t).tolist())
        info = self._info(layer, "opaque", None)
        info.calls.append(([id(t) for t in ins], [id(t) for t in outs]))

    def _reshape(self, layer, x, out, labels) -> bool:
        """Maps the labels through a flatten or a reshape; False when it mixes the channel axis."""
        in_shape, out_shape = tuple(x.shape), tuple(out.shape)
        channels = len(labels)
        if len(out_shape) == 2:  # NHWC flatten: entry i is channel i mod C
            size = out_shape[1]
            if size is None or size % channels:
                return False
            self._set(out, np.tile(labels, size // channels))
        elif out_shape[-1] == in_shape[-1]:
            self._set(out, labels)
        else:
            return False
        return True

    def _merge(self, layer, in_labels, out) -> None:
        width = max(len(lab) for lab in in_labels)
        full = [lab for lab in in_labels if len(lab) == width]
        for lab in in_labels:
            if len(lab) != width:  # broadcast across the merge
                self.pinned.extend(lab.tolist())
        for lab in full[1:]:
            self.uf.union_arrays(full[0], lab)
        self._set(out, full[0])

    # -------------------------------------------------------------- queries
    def producers(self) -> list:
        return [i for i in self.infos.values() if i.role == "producer"]


def _channels(tensor) -> int:
    size = tensor.shape[-1]
    if size is None:
        raise ValueError(
            f"shrink() needs a known channel (last) axis; tensor {tensor.name!r} has "
            f"shape {tuple(tensor.shape)}."
        )
    return int(size)


def _activation_name(layer) -> Optional[str]:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


def _refusal(op, class_name: str, what: str) -> str:
    """The message for a layer or op shrink cannot reason about: the layer first, then the way out."""
    name = getattr(op, "name", None)
    return (
        f"shrink() cannot reason about {what} {name!r} ({class_name}): it may mix channels. "
        f"Pass keep=[{name!r}] to leave it and the channels around it whole, or register "
        f"{class_name} once with tf_dessilbi.register_layer({class_name}, role=...) "
        f"(see the layer table, tf_dessilbi.registry)."
    )


def _default_cut(role):
    """The handler of a registered class without one: per-channel weights, or a Dense-like cut."""
    return {"channelwise": handlers_lib.CHANNELWISE, "producer": handlers_lib.PRODUCER}.get(role)


def _last_axis_only(layer, tensor) -> bool:
    """A per-channel layer works on the last axis only (``axis`` -1, or None: scalars)."""
    if not hasattr(layer, "axis") or isinstance(layer, _MIXING_LAYERS):
        return True
    axis = layer.axis
    if axis is None:
        return True
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(tensor.shape)
    if [int(a) % rank for a in axes] == [rank - 1]:
        return True
    if isinstance(layer, keras.layers.BatchNormalization):
        raise ValueError(
            f"shrink() needs BatchNormalization {layer.name!r} over the last axis; "
            f"it normalizes axis={axis!r}."
        )
    return False


def _moves_channels(layer) -> bool:
    """A Permute that moves the channel (last) axis."""
    dims = tuple(getattr(layer, "dims", ()))
    return not dims or dims[-1] != len(dims)


def _check_channels_last(layer) -> None:
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        raise ValueError(
            f"shrink() works on channels_last models; layer {layer.name!r} "
            f"({type(layer).__name__}) is channels_first."
        )

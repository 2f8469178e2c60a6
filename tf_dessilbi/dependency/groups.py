"""Dependency groups: the producer units that physical removal takes out together.

A group is one class of the channel dependency graph (`graph.Graph`) seen
from its producers: the output units (filters, neurons) of every producer
whose channels the class joins. In a plain stack each unit is a group of
one. A residual Add joins channel j of every branch it sums, so in
ResNet-20 the stem and the second conv of each stage-1 block form 16 groups
of 4 filters, and one of those filters leaves the exported model only
together with the other three (Torch-Pruning's dependency groups, Fang et
al., CVPR 2023). A group whose channel may never go (a model output, a
softmax, a layer in ``keep``, a channel broadcast across a merge) is not
removable.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from tf_dessilbi import walk
from tf_dessilbi.dependency import graph as graph_lib


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """One dependency group.

    Attributes:
        members: ``((layer name, unit index), ...)``: the producer units
            whose output channels are coupled, in the model's call order.
        removable: False when the channel may never leave the model.
    """

    members: tuple
    removable: bool

    def __len__(self) -> int:
        return len(self.members)


def unit_groups(model, keep: Iterable[str] = ()) -> list:
    """The dependency groups of ``model``'s producer units (`UnitGroup`, in call order).

    Every output unit of every producer layer (Dense, Conv, ConvTranspose,
    SeparableConv) lies in exactly one group.

    Args:
        model: a built Sequential or Functional model of layers in the layer
            table (strip `SparseGate` / `MaskedLayer` wrappers first).
        keep: names of layers kept whole (as `shrink`'s ``keep``).

    Raises:
        TypeError: not a graph model.
        ValueError: a layer the dependency graph cannot reason about, or a
            name in ``keep`` that is not a layer (as `shrink`).
    """
    walk.check_graph_model(model, "unit_groups")
    graph = graph_lib.Graph(model, tuple(keep))
    roots = graph.uf.roots()
    pinned = set(roots[np.asarray(graph.pinned, np.int64)].tolist())
    members = {}
    for info in (i for i in graph.producers() if not i.part):  # not attention heads
        for unit, root in enumerate(roots[info.out_elems].tolist()):
            members.setdefault(root, []).append((info.layer.name, unit))
    return [UnitGroup(tuple(group), root not in pinned) for root, group in members.items()]


def round_up_units(kept: int, total: int, round_to: int) -> int:
    """``kept`` raised to the next multiple of ``round_to``, at most ``total``: min(N, ⌈k/r⌉·r).

    The one rounding rule of ``round_to``, here at export and in
    `Fork(round_to=...)` when the fine-tune starts (0 stays 0).
    """
    return min(total, -(-kept // round_to) * round_to)

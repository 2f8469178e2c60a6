"""The removable channel groups of a model and what the model costs without some of them.

A *channel group* is one class of `shrink`'s channel dependency graph
(`tf_dessilbi.shrink.graph.Graph`) that a producer writes and that may leave
the model: the producer units (filters, neurons) whose channels are coupled
(one residual Add joins channel j of every branch it sums) and the
per-channel layers (BatchNormalization, PReLU) normalizing that channel.
`shrink` removes a group whole or not at all, so importance scores, budgets
and the DessiLBI warm start all work on these groups.

`CostModel` counts the MACs and parameters of the model with a set of groups
removed by *the same counter as* `ShrinkReport`: each layer is cut with its
own `shrink` handler (`handler.cut`) and costed with ``handler.macs`` on the
kept input/output shapes, exactly as `shrink`'s report does, without
rebuilding a model. Groups sharing the same producer layers form a *family*
(e.g. the 16 channels of ResNet-20's first residual stream); ``round_to``
acts per family.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from tf_dessilbi import walk
from tf_dessilbi.dependency import graph as graph_lib
from tf_dessilbi.dependency import handlers as handlers_lib


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """One removable group of coupled channels.

    Attributes:
        producers: ``((layer name, unit), ...)``: the producer units writing the channel.
        channelwise: ``((layer name, channel), ...)``: the BatchNormalization /
            PReLU channels normalizing it.
        family: index of the group's family (groups with the same producer layers).
    """

    producers: tuple
    channelwise: tuple
    family: int


class CostModel:
    """Groups of ``model`` and the MACs / parameters left when some are removed.

    Args:
        model: a built Sequential or Functional model of layers `shrink` can cut.
        keep: names of layers kept whole (as `shrink`'s ``keep``).

    Attributes:
        groups: the removable `ChannelGroup` list, in the model's call order.
        families: ``[[group index, ...], ...]``.
        macs_dense / params_dense: the model's own cost (as `ShrinkReport`'s
            ``macs_before`` / ``params_before``).
    """

    def __init__(self, model, keep: Iterable[str] = ()):
        walk.check_graph_model(model, "CostModel")
        self.graph = graph = graph_lib.Graph(model, tuple(keep))
        self._roots = roots = graph.uf.roots()
        pinned = set(roots[np.asarray(graph.pinned, np.int64)].tolist()) if graph.pinned else set()
        producers, channelwise = {}, {}
        for info in graph.infos.values():
            if info.role == "producer":
                for unit, root in enumerate(roots[info.out_elems].tolist()):
                    producers.setdefault(root, []).append((info.layer.name, unit))
            elif info.role == "channelwise" and info.in_elems is not None:
                for channel, root in enumerate(roots[info.in_elems].tolist()):
                    channelwise.setdefault(root, []).append((info.layer.name, channel))
        family_of, self.groups, self._group_roots = {}, [], []
        for root, members in producers.items():
            if root in pinned:
                continue
            signature = tuple(sorted({name for name, _ in members}))
            family = family_of.setdefault(signature, len(family_of))
            self.groups.append(ChannelGroup(tuple(members), tuple(channelwise.get(root, ())), family))
            self._group_roots.append(root)
        self._group_roots = np.asarray(self._group_roots, np.int64)
        self.families = [[] for _ in family_of]
        for index, group in enumerate(self.groups):
            self.families[group.family].append(index)
        self._weights = {key: handlers_lib.weights_of(info.layer) for key, info in graph.infos.items()
                         if info.role in ("producer", "depthwise", "channelwise")}
        self._params_other = int(model.count_params()) - sum(
            int(sum(a.size for a in w.values())) for w in self._weights.values())
        self.macs_dense, self.params_dense = self.cost(())

    def cost(self, removed) -> tuple:
        """``(MACs, parameters)`` of the model without the groups ``removed`` (indices).

        MACs are `ShrinkReport`'s (per sample, producers and depthwise layers);
        parameters count every weight of the model, as ``count_params``.
        A bias that `shrink` adds when it folds a removed channel's constant
        output into a consumer without one is not counted (`compress.Pruner`
        checks the shrunk model's own count).
        """
        gone = np.zeros(len(self._roots), bool)
        removed = np.asarray(list(removed), np.int64)
        if removed.size:
            gone[self._group_roots[removed]] = True
        gone_label = gone[self._roots]
        macs, params = 0, self._params_other
        for key, info in self.graph.infos.items():
            if key not in self._weights:
                continue
            w = self._weights[key]
            handler = info.handler
            if info.role == "producer":
                keep_out = np.flatnonzero(~gone_label[info.out_elems])
                keep_in = np.flatnonzero(~gone_label[info.in_elems])
                _, new_w = handler.cut(info.layer.get_config(), w, keep_in, keep_out)
            else:
                new_w = handler.cut(info.layer.get_config(), w, np.flatnonzero(~gone_label[info.in_elems]))[1]
            params += int(sum(a.size for a in new_w.values()))
            if info.role == "channelwise":
                continue
            for ins, outs in info.calls:
                in_shape, out_shape = self.graph.shapes[ins[0]], self.graph.shapes[outs[0]]
                new_in = in_shape[:-1] + (int((~gone_label[self.graph.labels[ins[0]]]).sum()),)
                new_out = out_shape[:-1] + (int((~gone_label[self.graph.labels[outs[0]]]).sum()),)
                macs += handler.macs(new_w, new_in, new_out)
        return int(macs), int(params)

    def unit_masks(self, removed) -> dict:
        """``{producer layer name: bool[units]}`` (True = keep) without the groups ``removed``."""
        out = {}
        for info in self.graph.producers():
            out[info.layer.name] = np.ones(len(info.out_elems), bool)
        for index in removed:
            for name, unit in self.groups[int(index)].producers:
                out[name][unit] = False
        return out

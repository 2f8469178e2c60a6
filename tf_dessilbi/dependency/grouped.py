"""Layers that work on groups of channels: grouped convolutions, GroupNormalization.

Both stay valid only when whole groups go, so the dependency graph couples
every channel of a group (`graph.Graph`) and the handlers here cut whole
groups:

* `GroupedHandler`: a convolution with ``groups = G > 1`` (ConvNeXt's and
  RegNet's depthwise and grouped convs written as ``Conv2D(groups=...)``).
  Its kernel is ``(*k, in/G, out)``: output unit o of group g = o // (out/G)
  reads input channels g·(in/G) … (g+1)·(in/G) − 1. Group g's input channels
  and output units form one class; a removed group leaves ``groups`` one
  smaller, its kernel columns and bias entries gone (the rows of the kept
  groups are unchanged). With in = out = G (a depthwise conv) a group is one
  channel, so channels go one by one.
* `GroupNormHandler`: GroupNormalization normalizes each group of C/G
  channels on its own, so removing a whole group leaves the others exact.
"""

from __future__ import annotations

import numpy as np

import keras

from tf_dessilbi import registry
from tf_dessilbi.dependency import handlers as handlers_lib


def group_slices(count: int, groups: int) -> list:
    """The index arrays of ``groups`` equal consecutive groups of ``count`` channels."""
    size = count // groups
    return [np.arange(g * size, (g + 1) * size) for g in range(groups)]


class GroupedHandler(handlers_lib.ProducerHandler):
    """A convolution with ``groups > 1``: kernel ``(*k, in/G, out)``, whole groups go."""

    def __init__(self, groups: int):
        self.groups = int(groups)

    def for_layer(self, layer):
        return self

    def _sizes(self, w):
        k = self._k(w)
        return k.shape[-2], k.shape[-1] // self.groups  # inputs, outputs per group

    def in_rows(self, w) -> int:
        return self._k(w).shape[-2] * self.groups

    def rows_nonzero(self, w, kept_out) -> np.ndarray:
        k = self._k(w)
        per_in, per_out = self._sizes(w)
        kept = np.zeros(k.shape[-1], bool)
        kept[np.asarray(kept_out, np.int64)] = True
        rows = np.zeros(self.in_rows(w), bool)
        flat = k.reshape(-1, per_in, k.shape[-1])
        for g in range(self.groups):
            cols = slice(g * per_out, (g + 1) * per_out)
            block = flat[:, :, cols][:, :, kept[cols]]  # (taps, in/G, kept outputs of g)
            rows[g * per_in:(g + 1) * per_in] = block.any(axis=(0, 2)) if block.size else False
        return rows

    def fold(self, w, values) -> np.ndarray:
        k = self._k(w).astype(np.float64)
        per_in, per_out = self._sizes(w)
        summed = k.reshape(-1, per_in, k.shape[-1]).sum(axis=0)  # (in/G, out)
        values = np.asarray(values, np.float64).reshape(self.groups, per_in)
        delta = np.zeros(k.shape[-1])
        for g in range(self.groups):
            cols = slice(g * per_out, (g + 1) * per_out)
            delta[cols] = values[g] @ summed[:, cols]
        return delta

    def cut(self, config, w, keep_in, keep_out, bias_delta=None):
        per_in, per_out = self._sizes(w)
        keep_out = np.asarray(keep_out, np.int64)
        kept_groups = len(keep_out) // per_out
        if len(keep_out) % per_out or len(keep_in) != kept_groups * per_in:
            raise ValueError(  # pragma: no cover - the graph couples whole groups
                f"A grouped convolution loses whole groups only; kept {len(keep_in)} inputs "
                f"and {len(keep_out)} outputs of groups of {per_in} → {per_out}."
            )
        config, out = super().cut(config, w, np.arange(per_in), keep_out, bias_delta)
        config["groups"] = kept_groups
        return config, out


class GroupNormHandler(handlers_lib.ChannelwiseHandler):
    """GroupNormalization: ``gamma`` / ``beta`` per channel, ``groups`` in the config."""

    def check(self, layer) -> None:
        axis = getattr(layer, "axis", -1)
        if axis not in (-1,) and not (isinstance(axis, int) and axis < 0):
            raise ValueError(
                f"shrink() needs GroupNormalization {layer.name!r} over the last axis; "
                f"it normalizes axis={axis!r}."
            )

    @staticmethod
    def groups(layer) -> int:
        return int(layer.groups)

    def cut(self, config, w, keep, total=None):
        config, out = super().cut(config, w, keep, total)
        size = total // config["groups"]
        config["groups"] = len(keep) // size
        return config, out


GROUP_NORM = GroupNormHandler()


handlers_lib.register_grouped(GroupedHandler)
registry.set_cut(keras.layers.GroupNormalization, GROUP_NORM)

"""MultiHeadAttention: whole heads and output units go, q/k/v input channels with them.

Keras' `MultiHeadAttention` holds four EinsumDense projections (`weight_keys`):

    query/kernel (d_q, H, d_k)   key/kernel (d_kv, H, d_k)   value/kernel (d_v, H, d_vh)
    attention_output/kernel (H, d_vh, d_out)                 biases without the input axis

A head h is one unit of the dependency graph, produced by three per-role
handlers (`HeadsFrom("query" | "key" | "value")`, each reading its input
tensor) and consumed by the output projection (`HeadsInto`, a producer of the
d_out output units reading the heads). Head h counts as dead when its value
kernel ``value/kernel[:, h, :]`` is zero: then its value is the constant
``value/bias[h]``, the reference (value bias zeroed as well) gives it 0, and
the head's output ``softmax(q kᵀ) v = 0`` whatever q and k are, so removing it
(its q, k, v slices and the output projection's rows together, ``num_heads``
one smaller) is exact. It also goes when the output projection reads nothing
from it (rows zero). Output unit o is dead when its column
``attention_output/kernel[:, :, o]`` is zero, as for a Dense.
"""

from __future__ import annotations

import numpy as np

from tf_dessilbi.dependency import handlers as handlers_lib

ROLES = ("query", "key", "value")
OUTPUT = "attention_output"


def check(layer) -> None:
    """Raises for the MultiHeadAttention variants the handlers do not cut."""
    if getattr(layer, "_use_gate", False) or layer.get_config().get("use_gate"):
        raise ValueError(
            f"shrink() does not cut the gated MultiHeadAttention {layer.name!r} "
            f"(use_gate=True); pass keep=[{layer.name!r}] to leave it whole."
        )
    if tuple(layer.get_config().get("attention_axes") or (1,)) not in ((1,), (-2,)):
        raise ValueError(
            f"shrink() cuts a MultiHeadAttention attending over one sequence axis; "
            f"{layer.name!r} has attention_axes={layer.get_config()['attention_axes']!r}. "
            f"Pass keep=[{layer.name!r}] to leave it whole."
        )


class HeadsFrom:
    """The heads as produced from one input (query, key or value): kernel ``(d, H, d_h)``."""

    def __init__(self, role: str):
        self.role = role

    def _k(self, w):
        return w[f"{self.role}/kernel"]

    def in_rows(self, w) -> int:
        return self._k(w).shape[0]

    def zero_columns(self, w) -> np.ndarray:
        k = self._k(w)
        if self.role != "value":  # a head is dead by its value alone
            return np.ones(k.shape[1], bool)
        return ~np.moveaxis(k, 1, 0).reshape(k.shape[1], -1).any(axis=1)

    def column_norms(self, w) -> np.ndarray:
        k = np.asarray(self._k(w), np.float64)
        if self.role != "value":
            return np.zeros(k.shape[1])
        return np.sqrt((np.moveaxis(k, 1, 0).reshape(k.shape[1], -1) ** 2).sum(axis=1))

    def rows_nonzero(self, w, kept_heads) -> np.ndarray:
        k = self._k(w)[:, np.asarray(kept_heads, np.int64), :]
        return k.reshape(k.shape[0], -1).any(axis=1)

    def foldable(self, layer) -> bool:
        return False  # attention is not linear in its inputs

    def zero_units(self, w, heads) -> dict:
        w = dict(w)
        for role in ROLES:
            for name in (f"{role}/kernel", f"{role}/bias"):
                if name in w:
                    w[name] = w[name].copy()
                    w[name][..., heads, :] = 0
        return w

    def macs(self, w, in_shape, out_shape) -> int:
        return 0  # counted once, by `HeadsInto`


class HeadsInto(handlers_lib.ProducerHandler):
    """The output projection, ``(H, d_vh, d_out)``: reads the heads, produces the output units."""

    kernel = f"{OUTPUT}/kernel"

    def _k(self, w):
        k = w[self.kernel]
        return k.reshape(k.shape[0], -1, k.shape[-1]).transpose(1, 0, 2)  # (d_vh, H, out)

    def foldable(self, layer) -> bool:
        return False  # a removed head's value is not read off the graph

    def cut_attention(self, config, w, keep: dict, bias_delta=None):
        """The config and weights with ``keep`` = {role: input channels, "heads", "out"}."""
        heads = np.asarray(keep["heads"], np.int64)
        out_units = np.asarray(keep["out"], np.int64)
        config = dict(config)
        config["num_heads"] = len(heads)
        config["output_shape"] = len(out_units)
        new = {}
        for role in ROLES:
            rows = np.asarray(keep[role], np.int64)
            new[f"{role}/kernel"] = w[f"{role}/kernel"][rows][:, heads]
            if f"{role}/bias" in w:
                new[f"{role}/bias"] = w[f"{role}/bias"][heads]
        new[self.kernel] = w[self.kernel][heads][..., out_units]
        bias = w.get(f"{OUTPUT}/bias")
        if bias is not None:
            if bias_delta is not None:
                bias = (bias.astype(np.float64) + bias_delta).astype(np.float32)
            new[f"{OUTPUT}/bias"] = bias[out_units]
        return config, new

    def zero_units(self, w, units) -> dict:
        w = dict(w)
        w[self.kernel] = w[self.kernel].copy()
        w[self.kernel][..., units] = 0
        if f"{OUTPUT}/bias" in w:
            w[f"{OUTPUT}/bias"] = w[f"{OUTPUT}/bias"].copy()
            w[f"{OUTPUT}/bias"][units] = 0
        return w

    def macs(self, w, in_shape, out_shape) -> int:
        """Projections and attention for one sample: query length T, key length S."""
        positions = int(np.prod(out_shape[1:-1], dtype=np.int64)) if len(out_shape) > 2 else 1
        heads, dv, _ = w[self.kernel].shape
        dk = w["query/kernel"].shape[-1]
        projections = sum(int(w[f"{r}/kernel"].size) for r in ROLES) + int(w[self.kernel].size)
        return projections * positions + heads * (dk + dv) * positions * positions


HEADS_FROM = {role: HeadsFrom(role) for role in ROLES}
HEADS_INTO = HeadsInto()


class EncoderFeedForward:
    """keras-hub's `TransformerEncoder`: its feed-forward neurons go, from inside the layer.

    Its residual stream passes LayerNormalization, so its inputs and outputs
    stay whole (pinned); inside, hidden neuron j of the feed-forward block is
    dead when its column of ``feedforward_intermediate_dense/kernel`` is zero
    (its output is act(b_j), 0 in the reference that zeroes b_j), and it
    goes with row j of ``feedforward_output_dense/kernel`` (``intermediate_dim``
    one smaller). Heads stay: the layer derives its key size from the width
    and ``num_heads``, so fewer heads would change the others.
    """

    inner = "feedforward_intermediate_dense"
    outer = "feedforward_output_dense"

    def dead(self, w) -> np.ndarray:
        return ~w[f"{self.inner}/kernel"].any(axis=0)

    def cut_inner(self, config, w):
        """``(config, weights, removed neurons)`` of the layer without its dead neurons."""
        dead = self.dead(w)
        keep = np.flatnonzero(~dead)
        if len(keep) == 0:  # min_units: the neuron with the largest |b_j|
            keep = np.array([int(np.argmax(np.abs(w.get(f"{self.inner}/bias", np.zeros(1)))))])
        config = dict(config)
        config["intermediate_dim"] = len(keep)
        w = dict(w)
        w[f"{self.inner}/kernel"] = w[f"{self.inner}/kernel"][:, keep]
        if f"{self.inner}/bias" in w:
            w[f"{self.inner}/bias"] = w[f"{self.inner}/bias"][keep]
        w[f"{self.outer}/kernel"] = w[f"{self.outer}/kernel"][keep]
        return config, w, np.setdiff1d(np.arange(len(dead)), keep)


# Layers of other packages cut from inside: {(top-level module, class name): handler}.
INNER_BLOCKS = {("keras_hub", "TransformerEncoder"): EncoderFeedForward()}


def inner_handler(layer):
    """The `INNER_BLOCKS` handler of a layer, or None."""
    cls = type(layer)
    return INNER_BLOCKS.get((cls.__module__.split(".")[0], cls.__name__))

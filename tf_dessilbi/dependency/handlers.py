"""How to cut one layer class: its output units, its input channels, its bias folding.

One small handler per layer family (Torch-Pruning's ``prune_out_channels`` /
``prune_in_channels`` table), attached to the classes of the layer table with
`registry.set_cut` when this module is imported. Handlers work on NumPy
copies of a layer's weights, ``{weight name: array}``, and on its config:

* `ProducerHandler` (Dense, Conv1D/2D/3D; kernel ``(*k, in, out)``),
  `TransposeHandler` (Conv*Transpose; kernel ``(*k, out, in)``),
  `SeparableHandler` (SeparableConv; depthwise ``(*k, in, m)``, pointwise
  ``(*1, in·m, out)``): output units and input rows;
* `DepthwiseHandler`: channel c and its m outputs go together;
* `ChannelwiseHandler` (BatchNormalization, PReLU): per-channel weights.

For a producer reading a removed input row r whose value is the constant
v_r everywhere, ``fold`` gives the bias change that keeps its output exact:
Dense ``Δb_o = Σ_r v_r W[r, o]``, a convolution with no padding
``Δb_o = Σ_r v_r Σ_k W[k, r, o]`` (padding would mix zeros into the border).
"""

from __future__ import annotations

import numpy as np

from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry


def _axis_take(array, index, axis):
    return np.take(array, np.asarray(index, dtype=np.int64), axis=axis)


def _padding_free(layer) -> bool:
    """True when a convolution never reads padding (valid, or a 1×…×1 kernel)."""
    padding = getattr(layer, "padding", "valid")
    size = getattr(layer, "kernel_size", (1,))
    return padding == "valid" or all(int(k) == 1 for k in size)


def _positions(shape) -> int:
    """Number of positions of a ``(batch, *spatial, channels)`` shape."""
    return int(np.prod([d for d in shape[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1


class ProducerHandler:
    """Dense and Conv1D/2D/3D: kernel ``(*k, in, out)``, bias ``(out,)``."""

    units_key = "filters"
    kernel = "kernel"

    def check(self, layer) -> None:
        pass

    def for_layer(self, layer):
        """The handler of this layer: a grouped convolution gets `grouped.GroupedHandler`."""
        groups = int(getattr(layer, "groups", 1) or 1)
        if groups == 1:
            return self
        return _GROUPED_HANDLER[0](groups)

    # The kernel seen as (*k, in, out).
    def _k(self, w):
        return w[self.kernel]

    def in_rows(self, w) -> int:
        return self._k(w).shape[-2]

    def column_norms(self, w) -> np.ndarray:
        return masks_lib.unit_norms(self._k(w))

    def zero_columns(self, w) -> np.ndarray:
        k = self._k(w)
        return ~k.reshape(-1, k.shape[-1]).any(axis=0)

    def rows_nonzero(self, w, kept_out) -> np.ndarray:
        k = self._k(w)[..., kept_out]
        k = np.moveaxis(k, -2, 0)
        return k.reshape(k.shape[0], -1).any(axis=1)

    def foldable(self, layer) -> bool:
        return _padding_free(layer)

    def fold(self, w, values) -> np.ndarray:
        k = self._k(w)
        summed = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)  # (in, out)
        return np.asarray(values, np.float64) @ summed.astype(np.float64)

    def cut(self, config, w, keep_in, keep_out, bias_delta=None):
        config = dict(config)
        key = self.units_key if self.units_key in config else "units"
        config[key] = len(keep_out)
        out = {}
        kernel = _axis_take(_axis_take(self._k(w), keep_in, -2), keep_out, -1)
        out[self.kernel] = self._put_kernel(kernel)
        bias = w.get("bias")
        if bias_delta is not None and np.any(bias_delta != 0):
            bias = (np.zeros(len(bias_delta), np.float32) if bias is None else bias)
            bias = (bias.astype(np.float64) + bias_delta).astype(np.float32)
            config["use_bias"] = True
        if bias is not None:
            out["bias"] = bias[np.asarray(keep_out, np.int64)]
        return config, out

    def _put_kernel(self, kernel):
        return kernel

    def zero_units(self, w, units) -> dict:
        w = dict(w)
        kernel = self._k(w).copy()
        kernel[..., units] = 0
        w[self.kernel] = self._put_kernel(kernel)
        if "bias" in w:
            w["bias"] = w["bias"].copy()
            w["bias"][units] = 0
        return w

    def macs(self, w, in_shape, out_shape) -> int:
        return int(self._k(w).size) * _positions(out_shape)


class TransposeHandler(ProducerHandler):
    """Conv*Transpose: Keras stores the kernel as ``(*k, out, in)``."""

    def _k(self, w):
        return np.swapaxes(w[self.kernel], -1, -2)

    def _put_kernel(self, kernel):
        return np.swapaxes(kernel, -1, -2)

    def foldable(self, layer) -> bool:
        return False  # output positions receive different numbers of taps

    def macs(self, w, in_shape, out_shape) -> int:
        return int(w[self.kernel].size) * _positions(in_shape)


class SeparableHandler(ProducerHandler):
    """SeparableConv: depthwise ``(*k, in, m)`` then pointwise ``(*1, in·m, out)``, one bias."""

    kernel = "pointwise_kernel"

    def in_rows(self, w) -> int:
        return w["depthwise_kernel"].shape[-2]

    def _paths(self, w, kept_out):
        """``(in, m)``: whether input c reaches a kept output through multiplier m."""
        dw = w["depthwise_kernel"]
        channels, mult = dw.shape[-2], dw.shape[-1]
        through_dw = dw.reshape(-1, channels, mult).any(axis=0)
        pw = w[self.kernel][..., kept_out].reshape(channels, mult, -1)
        return through_dw & pw.any(axis=-1)

    def rows_nonzero(self, w, kept_out) -> np.ndarray:
        return self._paths(w, kept_out).any(axis=1)

    def fold(self, w, values) -> np.ndarray:
        dw = w["depthwise_kernel"].astype(np.float64)
        channels, mult = dw.shape[-2], dw.shape[-1]
        dw_sum = dw.reshape(-1, channels, mult).sum(axis=0)  # (in, m)
        pw = w[self.kernel].astype(np.float64).reshape(channels * mult, -1)
        inter = (np.asarray(values, np.float64)[:, None] * dw_sum).reshape(-1)
        return inter @ pw

    def cut(self, config, w, keep_in, keep_out, bias_delta=None):
        dw = w["depthwise_kernel"]
        mult = dw.shape[-1]
        rows = (np.asarray(keep_in, np.int64)[:, None] * mult + np.arange(mult)).reshape(-1)
        reduced = dict(w)
        reduced[self.kernel] = _axis_take(w[self.kernel], rows, -2)
        config, out = super().cut(
            config, reduced, np.arange(len(rows)), keep_out, bias_delta
        )
        out["depthwise_kernel"] = _axis_take(dw, keep_in, -2)
        return config, out

    def macs(self, w, in_shape, out_shape) -> int:
        return (int(w["depthwise_kernel"].size) + int(w[self.kernel].size)) * _positions(out_shape)


class DepthwiseHandler:
    """DepthwiseConv: kernel ``(*k, channels, m)``, bias ``(channels·m,)``; in = out."""

    def check(self, layer) -> None:
        pass

    def cut(self, config, w, keep, total=None):
        keep = np.asarray(keep, np.int64)
        kernel = w["kernel"]
        mult = kernel.shape[-1]
        out = {"kernel": _axis_take(kernel, keep, -2)}
        if "bias" in w:
            out["bias"] = w["bias"].reshape(-1, mult)[keep].reshape(-1)
        return dict(config), out

    def zero_units(self, w, channels) -> dict:
        w = dict(w)
        mult = w["kernel"].shape[-1]
        w["kernel"] = w["kernel"].copy()
        w["kernel"][..., channels, :] = 0
        if "bias" in w:
            bias = w["bias"].copy().reshape(-1, mult)
            bias[channels] = 0
            w["bias"] = bias.reshape(-1)
        return w

    def macs(self, w, in_shape, out_shape) -> int:
        return int(w["kernel"].size) * _positions(out_shape)


class ChannelwiseHandler:
    """Per-channel layers: every weight's last axis is the channel axis (scalars stay).

    BatchNormalization, PReLU, Normalization, Rescaling, layer-scale weights.
    ``config_lists`` names config entries holding one value per channel
    (Normalization's ``mean``; Rescaling's ``scale`` when it is a list), sliced
    with the channels; ``width_key`` a config entry set to the kept count
    (ConvNeXt's ``LayerScale(projection_dim)``).
    """

    zeroed = ("gamma", "beta")

    def __init__(self, config_lists=(), width_key=None):
        self.config_lists = tuple(config_lists)
        self.width_key = width_key

    def check(self, layer) -> None:
        pass

    def cut(self, config, w, keep, total=None):
        keep = np.asarray(keep, np.int64)
        config = dict(config)
        for key in self.config_lists:
            value = config.get(key)
            if isinstance(value, (list, tuple)) and len(value) == (total or len(value)) > 1:
                config[key] = [value[i] for i in keep.tolist()]
        if self.width_key is not None and self.width_key in config:
            config[self.width_key] = len(keep)
        def per_channel(v):
            return np.ndim(v) > 0 and np.shape(v)[-1] == (total or np.shape(v)[-1]) > 1

        return config, {k: (_axis_take(v, keep, -1) if per_channel(v) else v) for k, v in w.items()}

    def zero_units(self, w, channels) -> dict:
        w = dict(w)
        for name in self.zeroed:
            if name in w:
                w[name] = w[name].copy()
                w[name][..., channels] = 0
        return w

    def macs(self, w, in_shape, out_shape) -> int:
        return 0


PRODUCER = ProducerHandler()
TRANSPOSE = TransposeHandler()
SEPARABLE = SeparableHandler()
DEPTHWISE = DepthwiseHandler()
CHANNELWISE = ChannelwiseHandler()


def _attach():
    import keras

    L = keras.layers
    for cls in (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D):
        registry.set_cut(cls, PRODUCER)
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        registry.set_cut(cls, TRANSPOSE)
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        registry.set_cut(cls, SEPARABLE)
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        registry.set_cut(cls, DEPTHWISE)
    for cls in (L.BatchNormalization, L.PReLU, L.LayerNormalization):
        registry.set_cut(cls, CHANNELWISE)
    registry.set_cut(L.Rescaling, ChannelwiseHandler(config_lists=("scale", "offset")))
    registry.set_cut(L.Normalization, ChannelwiseHandler(config_lists=("mean", "variance")))
    from tf_dessilbi import _compat

    layer_scale = _compat.application_layer_classes().get("LayerScale")
    if layer_scale is not None:
        registry.set_cut(layer_scale, ChannelwiseHandler(width_key="projection_dim"))


_attach()

# The handler class of a convolution with ``groups > 1``; `tf_dessilbi.dependency.grouped`
# (which subclasses the handlers here) sets it, with GroupNormalization's cut, on import.
_GROUPED_HANDLER = []


def register_grouped(grouped_handler_class) -> None:
    """Sets the handler class `ProducerHandler.for_layer` gives a grouped convolution."""
    _GROUPED_HANDLER[:] = [grouped_handler_class]


def weight_keys(layer) -> list:
    """A unique key for each of a layer's weights, in ``layer.weights`` order.

    The shortest trailing part of the variable paths that tells them apart:
    ``kernel`` and ``bias`` for a Dense, ``query/kernel`` … for a layer whose
    sub-layers each own a ``kernel`` (MultiHeadAttention, Bidirectional, a
    custom block). A rebuilt layer of the same class gets the same keys.
    """
    parts = [(getattr(v, "path", None) or v.name).split("/") for v in layer.weights]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        keys = ["/".join(p[-depth:]) for p in parts]
        if len(set(keys)) == len(keys):
            return keys
    return [f"{i}:{k}" for i, k in enumerate(keys)]  # pragma: no cover - same paths


def weights_of(layer) -> dict:
    """``{weight key: NumPy copy}`` of a layer's weights (`weight_keys`); {} for a keras.ops op."""
    import keras

    if not isinstance(layer, keras.layers.Layer):
        return {}
    return {
        key: np.array(keras.ops.convert_to_numpy(v))
        for key, v in zip(weight_keys(layer), layer.weights)
    }


def assign(layer, weights: dict) -> None:
    """Sets a built layer's weights from ``{weight key: array}`` (`weight_keys`)."""
    keys = weight_keys(layer)
    missing = [key for key in keys if key not in weights]
    if missing and len(keys) == len(weights):
        # unnamed variables (``variable_54``) get new numbers in a new layer: by position
        keys = list(weights)
    elif missing:
        raise ValueError(f"No values for weights {missing} of layer {layer.name!r}.")
    for key, v in zip(keys, layer.weights):
        if tuple(v.shape) != tuple(np.shape(weights[key])):
            raise ValueError(  # pragma: no cover - a handler bug, never a user error
                f"Weight {key!r} of layer {layer.name!r} has shape {tuple(v.shape)}; "
                f"the cut gives {np.shape(weights[key])}."
            )
        v.assign(weights[key])

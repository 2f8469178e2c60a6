"""The `keras.ops` functions Keras 3 records as graph nodes, and how their channels map.

``x + 3.0``, ``keras.ops.multiply(a, b)`` or a hard-swish written with ops
inside a Functional model become nodes whose operation is not a layer.
Element-wise ones keep the channel axis:

* `UNARY` (activations, casts, ``abs``, …): channel labels pass through;
* `BINARY` (``add``, ``multiply``, ``maximum``, …): coupled like the merge
  layers (channel j of every full-width input together; an input broadcast
  along the channel axis pins its channel).

A constant argument with a channel axis (``x * np.array(gamma)``) cannot be
cut, so it pins the channels it touches. Any other op is refused with the way
out (``keep=``), since it may mix channels.
"""

from __future__ import annotations

UNARY = frozenset(
    """Abs Cast Ceil Clip Elu Erf Exp Expm1 Floor Gelu HardSigmoid HardSilu HardSwish
    HardTanh Identity LeakyRelu Log Log1p LogSigmoid Mish Negative Reciprocal Relu Relu6
    Round Rsqrt Selu Sigmoid Sign Silu Sin Cos Softplus Softsign SparsePlus Sqrt Square
    Swish Tanh TanhShrink SoftShrink HardShrink Celu Squareplus StopGradient""".split()
)
BINARY = frozenset(
    """Add Subtract Multiply Divide TrueDivide FloorDivide Maximum Minimum Power Mod
    Where""".split()
)


def kind(op_name: str):
    """``"passthrough"``, ``"merge"`` or None (unknown) for a `keras.ops` class name."""
    if op_name in UNARY:
        return "passthrough"
    if op_name in BINARY:
        return "merge"
    return None

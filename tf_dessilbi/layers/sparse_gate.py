"""`SparseGate`: a Continuous Sparsification gate around a Keras layer."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import registry
from tf_dessilbi import walk
from tf_dessilbi.gates import maths as gates

GRANULARITIES = ("weight", "filter", "neuron")



def check_gate_arguments(granularity, gate_init, penalty):
    """Validates `SparseGate`'s own arguments; returns them in canonical form."""
    granularity = _validate.one_of("granularity", granularity, GRANULARITIES)
    return granularity, _validate.real("gate_init", gate_init), _validate.non_negative("penalty", penalty)


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class SparseGate(keras.layers.Wrapper):
    """Continuous Sparsification gates on the kernel of a wrapped layer.

    The wrapped layer runs its own forward pass on the effective kernel
    W ⊙ m, with gate scores s (trainable), temperature β and mode variables::

        search (ticket = 0):  m = σ(β·s) / σ(s₀),  loss += λ · Σ σ(β·s)
        ticket (ticket = 1):  m = 1[s > 0] / σ(s₀), no penalty

    (Savarese, Silva & Maire, 2020; the 1/σ(s₀) scale is in both masks, as in
    the authors' code.) β and the mode are non-trainable variables, so
    annealing β (`tf_dessilbi.callbacks.GateTemperature`) or switching to the
    ticket never retraces a compiled train step. Gates are computed in the
    variable dtype (float32 under mixed precision) and cast to the compute
    dtype where they meet the kernel. The gate variables are named
    ``gate_scores``, ``gate_beta`` and ``gate_ticket``; keep weight decay off
    the scores with ``optimizer.exclude_from_weight_decay(var_names=["gate"])``.

    Args:
        layer: the layer to gate: Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, or
            a layer class registered with `tf_dessilbi.register_gated_layer`.
        granularity: ``"weight"`` (one gate per kernel entry), ``"filter"``
            or ``"neuron"`` (one gate per output channel / unit, structural
            sparsity; the two names are synonyms). Defaults to `"weight"`.
        gate_init: s₀, the initial gate score. Defaults to `0.0`.
        penalty: λ ≥ 0, the penalty weight per gate (summed over gates).
            Defaults to `1e-8`.
        **kwargs: base layer arguments (``name``, ``dtype``, ...). The dtype
            policy defaults to the wrapped layer's.

    Raises:
        TypeError: the layer class is not supported.
        ValueError: a bad hyperparameter.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        SparseGate(keras.layers.Conv2D(16, 3, activation="relu")),
        keras.layers.Flatten(),
        SparseGate(keras.layers.Dense(10)),
    ])
    ```
    """

    def __init__(
        self,
        layer,
        granularity: str = "weight",
        gate_init: float = 0.0,
        penalty: float = 1e-8,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"SparseGate wraps a keras.layers.Layer. Received: layer={layer!r}"
            )
        spec = registry.gate_spec(layer)
        if spec is None:
            raise TypeError(
                f"SparseGate cannot gate a {type(layer).__name__} layer "
                f"({layer.name!r}). Supported: {', '.join(registry.supported_layers())}; "
                f"register other layers with tf_dessilbi.register_gated_layer()."
            )
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise ValueError(
                f"SparseGate cannot gate layer {layer.name!r}: LoRA-enabled and "
                f"quantized layers are not supported."
            )
        granularity, gate_init, penalty = check_gate_arguments(granularity, gate_init, penalty)
        kwargs.setdefault("name", f"{layer.name}_gate")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.granularity = granularity
        self.gate_init = gate_init
        self.penalty = penalty
        self.weight_name = spec.weight_name
        self._output_axes = spec.output_axes
        self._kernel_attr = None
        self._kernel_variable = None

    # ------------------------------------------------------------------ build
    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._kernel_attr, self._kernel_variable = walk.find_weight(self.layer, self.weight_name)
        shape = tuple(self._kernel_variable.shape)
        if self.granularity != "weight":
            shape = shape[-self._output_axes:]
        self.gate_scores = self.add_weight(
            name="gate_scores",
            shape=shape,
            initializer=keras.initializers.Constant(self.gate_init),
            trainable=True,
            autocast=False,
        )
        # β and the ticket switch: scalars driven by callbacks (no retrace).
        self.beta, self.ticket = (
            self.add_weight(
                name=name, shape=(), initializer=init, trainable=False,
                autocast=False, aggregation="only_first_replica",
            )
            for name, init in (("gate_beta", "ones"), ("gate_ticket", "zeros"))
        )
        self.built = True

    # ------------------------------------------------------------------ masks
    def soft_mask(self):
        """σ(β·s)/σ(s₀), shaped like the gates (broadcastable to the kernel)."""
        return gates.soft_mask(self.gate_scores, self.beta, self.gate_init)

    def hard_mask(self):
        """1[s > 0]/σ(s₀), shaped like the gates (broadcastable to the kernel)."""
        return gates.hard_mask(self.gate_scores, self.gate_init)

    def mask(self):
        """The mask in use: hard in ticket mode, soft in search mode."""
        return gates.mask(self.gate_scores, self.beta, self.ticket, self.gate_init)

    def kept_mask(self) -> np.ndarray:
        """1[s > 0] broadcast to the kernel shape, as a bool NumPy array."""
        scores = ops.convert_to_numpy(self.gate_scores)
        return np.broadcast_to(scores > 0, tuple(self._kernel_variable.shape)).copy()

    def kept_units(self):
        """1[s > 0] per output unit for unit gates ("filter"/"neuron"), else None."""
        if self.granularity == "weight":
            return None
        return (ops.convert_to_numpy(self.gate_scores) > 0).reshape(-1)

    @property
    def weight_variable(self):
        """The wrapped layer's gated weight variable."""
        return self._kernel_variable

    def stripped_kernel(self) -> np.ndarray:
        """W ⊙ 1[s > 0]/σ(s₀): the kernel a plain layer needs to reproduce
        this layer's ticket-mode outputs (same dtype as the kernel variable)."""
        w = ops.convert_to_numpy(self._kernel_variable)
        m = ops.convert_to_numpy(self.hard_mask()).astype(w.dtype)
        return w * m

    # ------------------------------------------------------------------- call
    def call(self, inputs, training=None):
        is_ticket = ops.cast(self.ticket, self.gate_scores.dtype)
        self.add_loss(
            gates.penalty(self.gate_scores, self.beta, self.penalty) * (1.0 - is_ticket)
        )
        compute_dtype = self.layer.compute_dtype
        kernel = ops.multiply(
            ops.cast(self._kernel_variable, compute_dtype),
            ops.cast(self.mask(), compute_dtype),
        )
        return walk.call_with_weight(
            self.layer, self._kernel_attr, kernel, self._kernel_variable, inputs, training
        )

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            granularity=self.granularity,
            gate_init=self.gate_init,
            penalty=self.penalty,
        )
        return config


masks_lib.register_wrapper_class("gate", SparseGate)

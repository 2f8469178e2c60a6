r"""Per-layer weight decay as a bilevel problem (a generic use of the solvers).

With x_l the log-strength of layer l's kernel decay::

    inner g(x, y) = L_train(y) + Σ_l e^{x_l} ‖W_l‖²
    outer f(y)    = L_val(y)

y are the model's trainable variables, W_l the ``kernel`` of every layer
owning one. TensorFlow backend only (`keras.Model.stateless_call`).
"""

from __future__ import annotations

from typing import List, Tuple

import keras
import tensorflow as tf

from tf_dessilbi import _compat
from tf_dessilbi.bilevel.problem import BilevelProblem


def kernel_layers(model: keras.Model) -> List[Tuple[str, int]]:
    """``(layer name, index in model.trainable_variables)`` of every kernel."""
    ids = {id(v): i for i, v in enumerate(model.trainable_variables)}
    found = []
    for layer in _compat.flatten_layers(model):
        kernel = vars(layer).get("_kernel", vars(layer).get("kernel"))
        if isinstance(kernel, keras.Variable) and id(kernel) in ids:
            if all(ids[id(kernel)] != j for _, j in found):
                found.append((layer.name, ids[id(kernel)]))
    if not found:
        raise ValueError(f"model {model.name!r} has no trainable kernels to decay.")
    return found


def weight_decay_problem(
    model: keras.Model, inner_sampler, outer_sampler, loss=None,
    inner_large_sampler=None, outer_large_sampler=None,
):
    """The per-layer weight-decay `BilevelProblem`.

    Args:
        model: a built Keras model.
        inner_sampler / outer_sampler: ``() -> (inputs, targets)`` batches of
            training and validation data.
        loss: a Keras loss. Defaults to sparse categorical cross-entropy on
            logits.
        inner_large_sampler / outer_large_sampler: S₁ for VRBO.

    Returns:
        ``(problem, names)``: x is one vector of log-strengths, one per name;
        y is ``model.trainable_variables``.
    """
    from tf_dessilbi.bilevel.cs import require_tensorflow_backend

    require_tensorflow_backend("weight_decay_problem")
    layers = kernel_layers(model)
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    non_trainable = list(model.non_trainable_variables)

    def forward(y, inputs, training):
        return model.stateless_call(list(y), non_trainable, inputs, training=training)[0]

    def inner(x, y, batch):
        inputs, targets = batch
        decay = tf.add_n([
            tf.exp(x[0][i]) * tf.reduce_sum(tf.square(y[j]))
            for i, (_, j) in enumerate(layers)
        ])
        return loss(targets, forward(y, inputs, True)) + decay

    def outer(x, y, batch):
        inputs, targets = batch
        return loss(targets, forward(y, inputs, False))

    problem = BilevelProblem(inner, outer, inner_sampler, outer_sampler,
                             inner_large_sampler, outer_large_sampler)
    return problem, [name for name, _ in layers]

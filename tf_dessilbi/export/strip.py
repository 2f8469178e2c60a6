"""`strip`: a sparse model as an ordinary Keras model, like TF-MOT's ``strip_pruning``.

Every mask wrapper of the package (`tf_dessilbi.layers.SparseGate`,
`tf_dessilbi.layers.MaskedLayer`, and any other `keras.layers.Wrapper` with
``weight_variable`` and ``stripped_kernel()``) is replaced by its inner layer,
whose weight ``weight_variable`` becomes ``stripped_kernel()``: one code path
for all of them. With a DessiLBI optimizer the kernels are W* = W on supp(Γ).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from absl import logging

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi import masks as masks_lib
from tf_dessilbi import walk


def is_mask_wrapper(layer) -> bool:
    """Whether `layer` wraps a layer and masks one of its weights (SparseGate, MaskedLayer, ...)."""
    return (
        isinstance(layer, keras.layers.Wrapper)
        and hasattr(layer, "stripped_kernel")
        and hasattr(layer, "weight_variable")
    )


def _wrapper_weights(wrapper) -> list:
    """The inner layer's weights, its masked weight replaced by ``stripped_kernel()``."""
    inner = wrapper.layer
    masked = wrapper.weight_variable
    arrays, found = [], False
    for variable in inner.weights:
        if variable is masked:
            arrays.append(np.asarray(wrapper.stripped_kernel()))
            found = True
        else:
            arrays.append(keras.ops.convert_to_numpy(variable))
    if not found:
        raise ValueError(
            f"{type(wrapper).__name__} {wrapper.name!r}: its masked weight is not "
            f"a weight of its inner layer {inner.name!r} (is the wrapper built?)."
        )
    return arrays


def _check_optimizer(optimizer) -> None:
    """Raises unless `optimizer` can give W* (a built DessiLBI optimizer)."""
    try:
        masks_lib.OptimizerSupport(optimizer)
    except TypeError as e:
        raise TypeError(
            f"strip(optimizer=...) needs the tf_dessilbi.DessiLBI optimizer that "
            f"trained the model, to keep W on supp(Γ). {e}"
        ) from None


def strip(model: keras.Model, optimizer=None, prune_bias: bool = True) -> keras.Model:
    """A plain Keras copy of a sparse model, with the sparse weights.

    The copy has the same architecture and layer names, no mask wrappers and
    no extra variables (a wrapped layer becomes its inner layer). Its kernels
    are:

    * with a DessiLBI `optimizer`: W* = W on the support of Γ, exactly as
      `tf_dessilbi.apply_w_star(model, optimizer, prune_bias)` sets them;
    * for a wrapped layer: its ``stripped_kernel()`` — W ⊙ 1[s > 0] / σ(s₀)
      for a `SparseGate` (its hard-mask outputs), W ⊙ M for a `MaskedLayer`;
    * otherwise the weights as they are.

    The outputs of the copy equal those of the sparse model (W* applied, gates
    in ticket mode). `model` itself is left as it was.

    Args:
        model: a built Sequential or Functional Keras model (nested
            Sequential/Functional models are stripped too).
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`,
            or `None` for no W* (wrappers only, or a plain copy). Defaults to
            `None`.
        prune_bias: with `optimizer`, also zero the bias of every output
            unit with no weight in the support (see `apply_w_star`).
            Defaults to `True`.

    Returns:
        A new `keras.Model` (Sequential or Functional) holding copies of the
        weights.

    Raises:
        TypeError: `model` is not a Sequential/Functional `keras.Model`,
            `optimizer` is not a DessiLBI optimizer (a model trained by SGD has
            no supp(Γ): pass ``optimizer=None``), or `prune_bias` not a bool.
        ValueError: `model` nests a subclassed model or is not built, or
            `optimizer` is not built for its variables.

    Example:

    ```python
    sparse = tf_dessilbi.strip(model, model.optimizer)
    sparse.save("sparse.keras")          # a plain Keras model
    ```
    """
    from tf_dessilbi.dessilbi.w_star import apply_w_star

    walk.check_graph_model(model, "strip")
    prune_bias = _validate.boolean("prune_bias", prune_bias)
    if optimizer is not None:
        _check_optimizer(optimizer)

    def make_clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer, lambda clone: None  # a stateless operation (keras.ops)
        if isinstance(layer, keras.Model):
            # Sequential/Functional submodels are cloned recursively by
            # clone_model; anything reaching here is subclassed.
            raise ValueError(
                f"Cannot strip {model.name!r}: it contains the subclassed "
                f"model {layer.name!r} of type {type(layer).__name__}. Only "
                f"Sequential and Functional models (and nestings of them) "
                f"are supported."
            )
        if is_mask_wrapper(layer):
            clone = layer.layer.__class__.from_config(layer.layer.get_config())
            arrays = _wrapper_weights(layer)
        else:
            clone = _compat.layer_from_own_config(layer)
            arrays = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        return clone, lambda c: c.set_weights(arrays)

    # W* is set on `model` only inside this block and restored on exit,
    # even if cloning fails, so `model` is never left modified.
    w_star = (
        apply_w_star(model, optimizer, prune_bias=prune_bias)
        if optimizer is not None
        else contextlib.nullcontext()
    )
    with w_star:
        stripped = walk.clone_with(model, make_clone)
    logging.debug("Stripped %r: %d weights.", model.name, len(stripped.weights))
    return stripped

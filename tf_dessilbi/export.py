"""Sparse models out of the package: plain Keras models and SavedModels.

`strip` turns a sparse model (trained with `tf_dessilbi.DessiLBI`, or with
`tf_dessilbi.layers.SparseGate` wrappers) into an ordinary Keras model of the
same architecture whose kernels are the sparse ones, like TF-MOT's
``strip_pruning``. `export_saved_model` writes that stripped model as a
versioned SavedModel for TF Serving, each weight stored once.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import re
import shutil
import tempfile
from typing import Optional

import keras
import numpy as np
from absl import logging

from tf_dessilbi.dessilbi.w_star import apply_w_star

SERVING_SIGNATURE = "serving_default"


# -- strip --------------------------------------------------------------------
def _functional_class():
    from keras.src.models.functional import Functional

    return Functional


def _check_graph_model(model, argument: str = "model"):
    """Raises unless `model` is a built Sequential or Functional Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a keras.Model (Sequential or Functional). "
            f"Received: {argument}={model!r} of type {type(model).__name__}"
        )
    if not isinstance(model, (keras.Sequential, _functional_class())):
        raise ValueError(
            f"Only Sequential and Functional models can be stripped or "
            f"exported; {model.name!r} is a subclassed model of type "
            f"{type(model).__name__}. Rebuild it with the Functional API "
            f"(keras.Model(inputs, outputs)) or as a keras.Sequential."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"Model {model.name!r} is not built: give it an Input (or call "
            f"it on data) before stripping or exporting it."
        )


def _is_sparse_gate(layer) -> bool:
    """Whether `layer` is a `tf_dessilbi.layers.SparseGate` (duck-typed)."""
    return (
        isinstance(layer, keras.layers.Wrapper)
        and hasattr(layer, "stripped_kernel")
        and hasattr(layer, "weight_name")
    )


def _plain_copy(layer):
    """A fresh, unbuilt layer of the same class and config as `layer`."""
    return layer.__class__.from_config(layer.get_config())


def _gate_weights(gate) -> list:
    """The inner layer's weights with the kernel replaced by the stripped one."""
    inner = gate.layer
    arrays = []
    found = False
    for variable in inner.weights:
        if variable.name == gate.weight_name:
            arrays.append(np.asarray(gate.stripped_kernel()))
            found = True
        else:
            arrays.append(keras.ops.convert_to_numpy(variable))
    if not found:
        raise ValueError(
            f"SparseGate {gate.name!r}: its inner layer {inner.name!r} has no "
            f"weight named {gate.weight_name!r}."
        )
    return arrays


def strip(
    model: keras.Model, optimizer=None, prune_bias: bool = True
) -> keras.Model:
    """A plain Keras copy of a sparse model, with the sparse weights.

    The copy has the same architecture and layer names, no `SparseGate`
    wrappers and no extra variables (a gated layer becomes its inner layer).
    Its kernels are:

    * with a DessiLBI `optimizer`: W* = W on the support of Γ, exactly as
      `tf_dessilbi.apply_w_star(model, optimizer, prune_bias)` sets them;
    * for a `SparseGate` layer: W ⊙ 1[s > 0] / σ(s₀), the kernel that
      reproduces the gate's hard-mask (ticket-mode) outputs;
    * otherwise the weights as they are.

    The outputs of the copy equal those of the sparse model (W* applied, gates
    in ticket mode). `model` itself is left as it was. This is the contract
    of TF-MOT's ``strip_pruning``.

    Args:
        model: a built Sequential or Functional Keras model (nested
            Sequential/Functional models are stripped too).
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`,
            or `None` for no W* (gates only, or a plain copy). Defaults to
            `None`.
        prune_bias: with `optimizer`, also zero the bias of every output
            unit with no weight in the support (see `apply_w_star`).
            Defaults to `True`.

    Returns:
        A new `keras.Model` (Sequential or Functional) holding copies of the
        weights.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `model` is subclassed (or nests a subclassed model) or
            not built, or `optimizer` is not built for its variables.

    Example:

    ```python
    sparse = tf_dessilbi.strip(model, model.optimizer)
    sparse.save("sparse.keras")          # a plain Keras model
    ```
    """
    _check_graph_model(model)
    if not isinstance(prune_bias, bool):
        raise TypeError(
            f"`prune_bias` must be a bool. Received: prune_bias={prune_bias!r}"
        )
    new_weights = []  # (new layer, arrays for new_layer.weights)

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation (keras.ops in a graph)
        if isinstance(layer, keras.Model):
            # Sequential/Functional submodels are cloned recursively by
            # clone_model; anything reaching here is subclassed.
            raise ValueError(
                f"Cannot strip {model.name!r}: it contains the subclassed "
                f"model {layer.name!r} of type {type(layer).__name__}. Only "
                f"Sequential and Functional models (and nestings of them) "
                f"are supported."
            )
        if _is_sparse_gate(layer):
            new = _plain_copy(layer.layer)
            new_weights.append((new, _gate_weights(layer)))
        else:
            new = _plain_copy(layer)
            new_weights.append(
                (new, [keras.ops.convert_to_numpy(w) for w in layer.weights])
            )
        return new

    # W* is set on `model` only inside this block and restored on exit,
    # even if cloning fails, so `model` is never left modified.
    w_star = (
        apply_w_star(model, optimizer, prune_bias=prune_bias)
        if optimizer is not None
        else contextlib.nullcontext()
    )
    with w_star:
        stripped = keras.models.clone_model(
            model, clone_function=clone_function, recursive=True
        )
    for layer, arrays in new_weights:
        layer.set_weights(arrays)
    logging.info(
        "Stripped %r: %d layers, %d weights.",
        model.name,
        len(new_weights),
        len(stripped.weights),
    )
    return stripped


# -- SavedModel -----------------------------------------------------------------
_SPEC_NAME_INVALID = re.compile(r"[^A-Za-z0-9_.\-/]")


def _spec_name(name: str) -> str:
    """`name` made valid as a signature tensor name."""
    name = _SPEC_NAME_INVALID.sub("_", name)
    if not name or not name[0].isalnum():
        name = "x" + name
    return name


def _unique(names):
    seen = {}
    result = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        result.append(name)
    return result


def signature_names(model: keras.Model):
    """``(input_names, output_names)`` of the serving signature of `model`."""
    inputs = _unique([_spec_name(t.name) for t in model.inputs])
    outputs = _unique(
        [_spec_name(t._keras_history.operation.name) for t in model.outputs]
    )
    return inputs, outputs


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise TypeError(
            f"`version` must be a non-negative integer or None. Received: "
            f"version={version!r} of type {type(version).__name__}"
        )
    if version < 0:
        raise ValueError(
            f"`version` must be a non-negative integer or None. Received: "
            f"version={version}"
        )
    return int(version)


def _next_version(export_dir: str) -> int:
    versions = [
        int(name)
        for name in (os.listdir(export_dir) if os.path.isdir(export_dir) else [])
        if name.isdigit()
    ]
    return max(versions, default=0) + 1


def _serving_module(stripped: keras.Model):
    """A `tf.Module` with the serving function and each weight tracked once.

    Keras' own ``model.export()`` tracks every weight twice (the Keras
    variable and the `tf.Variable` inside it, two checkpoint keys per weight);
    here only the `tf.Variable`s the function captures are tracked.
    """
    import tensorflow as tf

    input_names, output_names = signature_names(stripped)
    specs = [
        tf.TensorSpec(t.shape, t.dtype, name=name)
        for t, name in zip(stripped.inputs, input_names)
    ]
    single_input = len(specs) == 1

    @tf.function(input_signature=specs, autograph=False)
    def serve(*args):
        outputs = stripped(args[0] if single_input else list(args), training=False)
        outputs = tf.nest.flatten(outputs)
        return dict(zip(output_names, outputs))

    concrete = serve.get_concrete_function()
    module = tf.Module(name="tf_dessilbi_export")
    module.serve = serve
    module.weights = list(concrete.variables)
    return module, concrete


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    version: Optional[int] = None,
    overwrite: bool = False,
    optimizer=None,
    prune_bias: bool = True,
) -> str:
    """Writes the stripped model as ``<export_dir>/<version>/``, a SavedModel.

    The layout is the one TF Serving's model server watches: one integer
    directory per version. The SavedModel has a ``serving_default``
    signature whose inputs are named after the model's inputs and whose
    outputs are a dict named after the output layers; the weights are those
    of `strip(model, optimizer, prune_bias)`, each stored once. The version
    is written to a temporary directory next to it and renamed into place,
    so a failure never leaves a partial version behind.

    Args:
        model: a built Sequential or Functional Keras model (sparse or not).
        export_dir: the model's base directory; created if missing.
        version: the integer version to write; `None` takes one more than
            the largest existing version (1 for an empty base directory).
            Defaults to `None`.
        overwrite: replace an existing non-empty version directory.
            Defaults to `False`.
        optimizer: the built `tf_dessilbi.DessiLBI` that trained `model`,
            to export W*; see `strip`. Defaults to `None`.
        prune_bias: see `strip`. Defaults to `True`.

    Returns:
        The path of the version directory written.

    Raises:
        TypeError: a wrong argument type.
        ValueError: the version directory exists and is not empty while
            ``overwrite=False``, `export_dir` is a file, or `model` cannot be
            stripped (see `strip`).

    Example:

    ```python
    path = tf_dessilbi.export_saved_model(model, "/models/fmnist",
                                          optimizer=model.optimizer)
    # saved_model_cli show --dir /models/fmnist/1 --all
    ```
    """
    import tensorflow as tf

    if not isinstance(export_dir, (str, os.PathLike)):
        raise TypeError(
            f"`export_dir` must be a path. Received: export_dir={export_dir!r}"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(
            f"`overwrite` must be a bool. Received: overwrite={overwrite!r}"
        )
    export_dir = os.fspath(export_dir)
    version = _check_version(version)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a directory. Received: "
            f"export_dir={export_dir!r}, which is a file."
        )
    if version is None:
        version = _next_version(export_dir)
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"Version path {target!r} exists and is a file.")
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise ValueError(
            f"Version directory {target!r} already exists and is not empty. "
            f"Pass overwrite=True to replace it, or another `version` "
            f"(version=None picks the next free one)."
        )

    stripped = strip(model, optimizer, prune_bias=prune_bias)
    module, concrete = _serving_module(stripped)

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=export_dir)
    try:
        tf.saved_model.save(
            module, staging, signatures={SERVING_SIGNATURE: concrete}
        )
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logging.info("Exported SavedModel version %d to %s", version, target)
    return target


def _replace_dir(source: str, target: str):
    """Renames `source` to `target`, replacing a directory already there."""
    if not os.path.exists(target):
        os.rename(source, target)
        return
    trash = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target)
    )
    old = os.path.join(trash, "old")
    os.rename(target, old)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old, target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)

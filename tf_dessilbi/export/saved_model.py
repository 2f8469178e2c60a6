"""`export_saved_model`: the stripped model as a versioned SavedModel for TF Serving.

The layout is the one TF Serving's model server watches: one integer folder per
version under a base folder. A version is written to a hidden temporary folder
and moved into place in one step, so a reader (a model server polling the
base folder) sees either the old version or the new one, never a partial or a
missing one, even if the process is killed at any point; the temporary
folders a killed export leaves behind are removed by the next export.

The input contract of the signature: the inputs are exactly what the Keras
model takes (for the package's image configs: float32 pixels scaled to [0, 1]
and normalized with the config's ``data.mean`` / ``data.std``, not raw 0–255
values). Pass ``preprocessing=`` to bake a transformation of raw inputs into the
serving function instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from typing import Callable, Optional

import keras
from absl import logging

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi import walk
from tf_dessilbi.export.strip import strip

SERVING_SIGNATURE = "serving_default"
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
        [_spec_name(_compat.producing_operation(t).name) for t in model.outputs]
    )
    return inputs, outputs


def _check_version(version):
    if version is None:
        return None
    return _validate.integer("version", version, minimum=0)


def _next_version(export_dir: str) -> int:
    versions = [
        int(name)
        for name in (os.listdir(export_dir) if os.path.isdir(export_dir) else [])
        if name.isdigit()
    ]
    return max(versions, default=0) + 1


def _serving_module(stripped: keras.Model, preprocessing: Optional[Callable] = None):
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
        if preprocessing is not None:
            args = [preprocessing(a) for a in args]
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
    preprocessing: Optional[Callable] = None,
    shrink: bool = False,
    shrink_options: Optional[dict] = None,
    allow_dead: bool = False,
) -> str:
    """Writes the stripped model as ``<export_dir>/<version>/``, a SavedModel.

    The SavedModel has a ``serving_default`` signature whose inputs are named
    after the model's inputs and whose outputs are a dict named after the
    output layers; the weights are those of `strip(model, optimizer,
    prune_bias)`, each stored once. Its folders get the permissions ``mkdir``
    gives (``0o777`` less the umask, e.g. ``drwxr-xr-x``), so a model server
    running as another user can read them.

    The version is written to a hidden temporary folder next to it and moved
    into place in one step (with ``overwrite=True`` the old and the new
    folder are exchanged atomically where the file system allows it, Linux'
    ``renameat2(RENAME_EXCHANGE)``), so a kill at any point leaves the old
    version or the new one servable. Temporary folders left by killed exports
    are removed by the next export.

    The signature takes what the Keras model takes (see the module
    docstring); `preprocessing` bakes a transformation of raw inputs in.

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
        preprocessing: a function of each input tensor (float32, the model's
            input shape) applied before the model in the serving function,
            e.g. ``lambda x: (x / 255 - 0.286) / 0.353`` for raw pixels.
            Defaults to `None` (the inputs go to the model as they are).
        shrink: physically remove the filters and neurons the model does
            not keep (`tf_dessilbi.shrink` on the model's masks and the
            optimizer's support) before exporting: a smaller, faster
            SavedModel with the same outputs. Defaults to `False`.
        shrink_options: keyword arguments for `tf_dessilbi.shrink`
            (``round_to``, ``keep``, ``min_units``, ``fold_constants``).
            Defaults to None.
        allow_dead: export even when emptied layers leave the model's outputs
            independent of its inputs (constant logits; an emptied residual
            branch is not dead). Defaults to `False`.
            Non-finite weights (a diverged run) are always refused.

    Returns:
        The path of the version directory written.

    Raises:
        TypeError: a wrong argument type.
        ValueError: the version directory exists and is not empty while
            ``overwrite=False``, `export_dir` is a file, or `model` cannot be
            stripped (see `strip`), it has non-finite weights, or a layer
            keeps no weight (without ``allow_dead=True``). Nothing is written.

    Example:

    ```python
    path = tf_dessilbi.export_saved_model(model, "/models/fmnist",
                                          optimizer=model.optimizer)
    # saved_model_cli show --dir /models/fmnist/1 --all
    ```
    """
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise TypeError(f"export_saved_model() needs a keras.Model. Received: model={model!r}")
    if not isinstance(export_dir, (str, os.PathLike)):
        raise TypeError(
            f"`export_dir` must be a path. Received: export_dir={export_dir!r}"
        )
    overwrite = _validate.boolean("overwrite", overwrite)
    shrink = _validate.boolean("shrink", shrink)
    allow_dead = _validate.boolean("allow_dead", allow_dead)
    prune_bias = _validate.boolean("prune_bias", prune_bias)
    if shrink_options is not None and (not shrink or not isinstance(shrink_options, dict)):
        raise ValueError(
            "`shrink_options` must be a dict and goes with shrink=True. "
            f"Received: shrink={shrink}, shrink_options={shrink_options!r}"
        )
    if preprocessing is not None and not callable(preprocessing):
        raise TypeError(
            f"`preprocessing` must be a function or None. Received: "
            f"preprocessing={preprocessing!r}"
        )
    export_dir = os.fspath(export_dir)
    version = _check_version(version)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a directory. Received: "
            f"export_dir={export_dir!r}, which is a file."
        )
    if os.path.isdir(export_dir):
        clean_stale(export_dir)
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

    if shrink:
        from tf_dessilbi.shrink import shrink as shrink_fn

        stripped = shrink_fn(model, optimizer=optimizer, **{"allow_dead": allow_dead,
                                                               **(shrink_options or {})})
    else:
        stripped = strip(model, optimizer, prune_bias=prune_bias)
    walk.refuse_broken(
        stripped, allow_dead=allow_dead,
        diverged=f"export_saved_model(): model {model.name!r} has non-finite weights ({{bad}}): "
                 f"the run diverged; nothing was exported.",
        dead="export_saved_model(): layer(s) {layers} keep no weight, so the model's outputs do "
             "not depend on its inputs; nothing was exported. Pass allow_dead=True to export it "
             "anyway.")
    module, concrete = _serving_module(stripped, preprocessing)

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}.tmp-{os.getpid()}-", dir=export_dir)
    try:
        with _quiet_tf_logs():
            tf.saved_model.save(module, staging, signatures={SERVING_SIGNATURE: concrete})
        os.chmod(staging, _directory_mode())  # mkdtemp makes it 0o700
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logging.info("Exported SavedModel version %d to %s", version, target)
    return target


class _quiet_tf_logs:
    """Silences TensorFlow's INFO lines (resource names, "Assets written") during a save."""

    def __enter__(self):
        import tensorflow as tf

        self._logger = tf.get_logger()
        self._level = self._logger.level
        self._absl = logging.get_verbosity()
        self._logger.setLevel("ERROR")
        logging.set_verbosity(logging.WARNING)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        logging.set_verbosity(self._absl)


def _directory_mode() -> int:
    """What ``os.mkdir`` gives a new folder: 0o777 less the process' umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


_STALE = re.compile(r"^\.(\d+)\.(tmp|old)-(\d+)-")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(export_dir: str) -> list:
    """Removes the hidden folders killed exports left in `export_dir`.

    A ``.<v>.tmp-<pid>-*`` (a version being written) or ``.<v>.old-<pid>-*``
    (a replaced version being deleted) folder of a process that no longer runs
    is deleted; an ``.old`` folder whose version is missing (a kill between
    the two renames of the non-atomic fallback) is moved back to ``<v>``.

    Returns:
        The paths removed or restored.
    """
    done = []
    for name in sorted(os.listdir(export_dir)):
        match = _STALE.match(name)
        if not match or _alive(int(match.group(3))):
            continue
        path = os.path.join(export_dir, name)
        version_dir = os.path.join(export_dir, match.group(1))
        old = os.path.join(path, "old")
        if match.group(2) == "old" and os.path.isdir(old) and not os.path.exists(version_dir):
            os.rename(old, version_dir)
            logging.warning("Restored version %s from %s (a killed export).", version_dir, path)
        shutil.rmtree(path, ignore_errors=True)
        logging.info("Removed %s, left by a killed export.", path)
        done.append(path)
    return done


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, f"renameat2({a!r}, {b!r}, RENAME_EXCHANGE): {os.strerror(code)}")


def _replace_dir(source: str, target: str):
    """Moves `source` to `target`, replacing a directory already there.

    With an existing `target` the two are exchanged in one atomic step and
    the old version (now at `source`) is deleted; without `renameat2` the old
    one is first renamed to a hidden ``.old`` folder that `clean_stale`
    restores if the process dies before the second rename.
    """
    if not os.path.exists(target):
        os.rename(source, target)
        return
    if _exchange(source, target):
        shutil.rmtree(source, ignore_errors=True)
        return
    trash = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.old-{os.getpid()}-", dir=os.path.dirname(target)
    )
    old = os.path.join(trash, "old")
    os.rename(target, old)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)

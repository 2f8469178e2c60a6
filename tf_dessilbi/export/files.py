"""Single export files written atomically: a temporary file beside the target, renamed in one step.

A reader (an app bundling the file, a model server polling it) sees the old
file or the new one, never a partial one, even if the process is killed at
any point. The hidden ``.<name>.tmp-<pid>-*`` files a killed export leaves
behind are removed by the next export to the same folder (`clean_stale_files`),
as `tf_dessilbi.export.clean_stale` does for SavedModel versions.
"""

from __future__ import annotations

import os
import re
import tempfile

from absl import logging

from tf_dessilbi.export.saved_model import _alive
from tf_dessilbi.export.saved_model import _directory_mode

_STALE_FILE = re.compile(r"^\.(.+)\.tmp-(\d+)-")


def file_mode() -> int:
    """What ``open(..., "w")`` gives a new file: 0o666 less the process' umask."""
    return _directory_mode() & 0o666


def staging_path(target: str) -> str:
    """A new hidden temporary path beside `target` (``.<name>.tmp-<pid>-*<suffix>``), created empty.

    The suffix of `target` is kept (exporters such as Keras' LiteRT and ONNX
    ones insist on ``.tflite`` / ``.onnx``).
    """
    folder, name = os.path.split(os.path.abspath(target))
    suffix = os.path.splitext(name)[1]
    fd, path = tempfile.mkstemp(prefix=f".{name}.tmp-{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    return path


def commit(staging: str, target: str) -> None:
    """Gives `staging` a readable file mode and renames it onto `target` in one step."""
    os.chmod(staging, file_mode())  # mkstemp makes it 0o600
    os.replace(staging, target)


def discard(staging: str) -> None:
    try:
        os.remove(staging)
    except FileNotFoundError:
        pass


def clean_stale_files(folder: str) -> list:
    """Removes the hidden temporary files of killed exports in `folder`; their paths.

    Only files of processes that no longer run are touched (an export in
    progress beside this one keeps its file).
    """
    done = []
    if not os.path.isdir(folder):
        return done
    for name in sorted(os.listdir(folder)):
        match = _STALE_FILE.match(name)
        path = os.path.join(folder, name)
        if not match or not os.path.isfile(path) or _alive(int(match.group(2))):
            continue
        discard(path)
        logging.info("Removed %s, left by a killed export.", path)
        done.append(path)
    return done

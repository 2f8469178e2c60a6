"""A quiet start for the training CLI: TensorFlow imported with its CUDA probing hidden.

``import tensorflow`` on a machine without an NVIDIA driver writes "Could
not find cuda drivers on your machine, GPU will not be used." to stderr
twice: two of TensorFlow's native libraries, loaded one after the other by
that one import (with ``tensorflow.python.platform`` and with
``pywrap_tfe``), each log it through their own absl logging before it is
initialized, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them. Package code
imports TensorFlow (through Keras) as soon as ``tf_dessilbi`` is imported,
before the CLI's own code runs, so `tf_dessilbi/__init__.py` calls
`quiet_import_for_the_cli` first: when the process is the CLI
(``tf-dessilbi-train`` or ``python -m tf_dessilbi.train``) it sets
``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment sets it, and, on a machine
without an NVIDIA driver, imports TensorFlow and probes its devices with
file descriptor 2 captured, passing on every line that is not CUDA-probing
noise. Any other import of the package is left as it is.
"""

from __future__ import annotations

import os
import sys

CLI_NAMES = ("tf-dessilbi-train",)
CLI_MODULE = "tf_dessilbi.train"
NOISE = ("cuInit", "cuda_platform", "cuda drivers", "cudart_stub",
         "absl::InitializeLog", "cuda_executor", "cuda_dnn")


def is_the_cli() -> bool:
    """True when this process is ``tf-dessilbi-train`` or ``python -m tf_dessilbi.train``."""
    if sys.argv and os.path.basename(sys.argv[0]).split(".")[0] in CLI_NAMES:
        return True
    original = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == CLI_MODULE for a, b in zip(original, original[1:])) or (
        f"-m{CLI_MODULE}" in original)


def has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def run_filtered(fn) -> None:
    """Calls ``fn()`` with file descriptor 2 captured; writes back every line that is not `NOISE`."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in NOISE):
                    sys.stderr.write(line + "\n")


def _import_tensorflow() -> None:
    import tensorflow as tf

    tf.config.list_physical_devices()


def quiet_import_for_the_cli() -> None:
    """For the CLI only: TensorFlow's start-up logging down to errors, its CUDA probing hidden."""
    if not is_the_cli() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if has_nvidia_driver():
        return  # the messages may matter there
    run_filtered(_import_tensorflow)

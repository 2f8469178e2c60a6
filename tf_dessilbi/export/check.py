"""`check_export`: an exported file run in a fresh process against the in-memory model it came from.

The file is run by ``_check_worker.py`` in a new Python process that imports
only its format's runtime (TFLite interpreter, onnxruntime, TensorFlow's
SavedModel loader), on the same inputs as the Keras model here:

* a float file (``quantize=None``) must give the model's outputs within
  ``rtol`` relative to the largest output magnitude (1e-5), else
  `ExportCheckError`;
* a quantized file (``float16``, ``dynamic_int8``, ``int8``) reports the
  agreement of its argmax with the model's, and with labels its accuracy
  beside the model's.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_check_worker.py")
FLOAT_RTOL = 1e-5


class ExportCheckError(ValueError):
    """An exported float file does not reproduce the model it came from."""


@dataclasses.dataclass
class CheckResult:
    """What the check of one exported file measured.

    Attributes:
        examples: how many inputs were run.
        max_rel_error: max |file − model| / max |model| over every output.
        argmax_agreement: fraction of inputs whose top class is the model's.
        accuracy: the file's accuracy on the labels, or None without labels.
        reference_accuracy: the in-memory model's accuracy on them, or None.
        passed: a float file within ``rtol``; a quantized file always (it reports).
    """

    examples: int
    max_rel_error: float
    argmax_agreement: float
    accuracy: Optional[float] = None
    reference_accuracy: Optional[float] = None
    passed: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_file(fmt: str, path: str, x: np.ndarray, timeout: float = 600.0) -> np.ndarray:
    """The outputs of the exported file at `path` on `x`, computed in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="tf_dessilbi_check_") as tmp:
        inputs, outputs = os.path.join(tmp, "x.npz"), os.path.join(tmp, "y.npy")
        np.savez(inputs, x=np.asarray(x, np.float32))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run([sys.executable, _WORKER, fmt, os.fspath(path), inputs, outputs],
                              capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not os.path.exists(outputs):
            raise ExportCheckError(
                f"Running the exported {fmt} file {path!r} in a fresh process failed "
                f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return np.load(outputs)


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels).reshape(-1)))


def compare(outputs, reference, labels=None, quantized: bool = False,
            rtol: float = FLOAT_RTOL) -> CheckResult:
    """The `CheckResult` of a file's `outputs` against the model's `reference` outputs."""
    outputs = np.asarray(outputs, np.float64).reshape(np.shape(reference))
    reference = np.asarray(reference, np.float64)
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    rel = float(np.max(np.abs(outputs - reference))) / scale
    agreement = float(np.mean(np.argmax(outputs, -1) == np.argmax(reference, -1)))
    result = CheckResult(examples=len(reference), max_rel_error=rel, argmax_agreement=agreement)
    if labels is not None:
        result.accuracy = _accuracy(outputs, labels)
        result.reference_accuracy = _accuracy(reference, labels)
    result.passed = quantized or rel <= rtol
    return result


def check_export(fmt: str, path: str, model, x, labels=None, quantized: bool = False,
                 rtol: float = FLOAT_RTOL) -> CheckResult:
    """Runs the file at `path` in a fresh process on `x` and compares it with ``model(x)``.

    Raises:
        ExportCheckError: the file does not run, or a float file's outputs
            differ from the model's by more than `rtol` (relative).
    """
    x = np.asarray(x, np.float32)
    reference = np.asarray(model.predict(x, batch_size=256, verbose=0))
    result = compare(run_file(fmt, path, x), reference, labels, quantized, rtol)
    if not result.passed:
        raise ExportCheckError(
            f"The exported {fmt} file {path!r} does not reproduce the model: max relative "
            f"error {result.max_rel_error:.3g} > rtol={rtol:g} on {result.examples} inputs.")
    return result

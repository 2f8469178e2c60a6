"""The backend-agnostic optimizer tests, rerun under JAX and PyTorch.

Each backend runs in its own process with ``KERAS_BACKEND`` set (Keras picks
its backend once per process). Installed by ``pip install -e .[backends]``
(`make test` does it); a backend that is not installed is skipped with the
reason.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every backend-agnostic test file, by name: a file that moved fails the test
# below instead of silently dropping out of the run.
BACKEND_AGNOSTIC_TESTS = [
    "tests/test_proximal.py",
    "tests/test_slbi.py",
    "tests/test_dessilbi.py",
    "tests/test_dessilbi_phases.py",
    "tests/test_support_units.py",
    "tests/test_dessilbi_group_support.py",
    "tests/test_dessilbi_joint_groups.py",
    "tests/test_gates.py",
    "tests/test_sparse_gate.py",
    "tests/test_masks.py",
    "tests/test_masked.py",
    "tests/test_pickle.py",
]


def test_every_listed_file_exists():
    missing = [path for path in BACKEND_AGNOSTIC_TESTS if not os.path.exists(os.path.join(ROOT, path))]
    assert not missing, f"backend-agnostic test files moved or were removed: {missing}"


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("torch", "torch")])
def test_optimizer_tests_pass_on_backend(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e .[backends])")
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *BACKEND_AGNOSTIC_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"{backend} backend failed:\n{tail}"
    assert " passed" in result.stdout and " failed" not in result.stdout, tail

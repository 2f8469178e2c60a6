"""The README's quickstart (examples/quickstart.py) runs on real data."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "W* test accuracy" in result.stdout
    assert "total" in result.stdout  # the sparsity tables
    assert os.path.isfile(tmp_path / "fmnist" / "1" / "saved_model.pb")
    assert "prune_low_magnitude_conv1" in result.stdout
    assert "gate:weight" in result.stdout

"""The CLI's fine-tune on the small model (`training.small_run`, ``fork.shrink``)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tf_dessilbi.training import train

sys.path.insert(0, os.path.dirname(__file__))
from test_training_reliability import ROOT, tiny_config as _reliability_config  # noqa: E402


def tiny_config(shrink=True):
    config = _reliability_config(epochs=4)
    config.fork.last_epochs = 2  # the fork at epoch 2 of 4
    config.optimizer.finetune_layer_units = "conv=4"
    config.fork.shrink = shrink
    config.outputs.path = True
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    small = train.train_and_evaluate(tiny_config(), str(tmp_path_factory.mktemp("small")))
    masked = train.train_and_evaluate(tiny_config(False), str(tmp_path_factory.mktemp("masked")))
    return small, masked


def test_the_cli_trains_the_small_model_like_the_masked_finetune(runs):
    small, masked = runs
    assert "switch" not in masked
    assert small["switch"]["epoch"] == 2 and small["switch"]["step"] == 6
    assert small["switch"]["params_after"] < small["switch"]["params_before"]
    assert small["shrink"]["totals"]["params_after"] == small["switch"]["params_after"]
    assert len(small["history"]["loss"]) == 4
    np.testing.assert_allclose(small["history"]["loss"], masked["history"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(small["eval"]["loss"], masked["eval"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(small["eval_w_star"]["loss"], masked["eval_w_star"]["loss"],
                               rtol=1e-4)
    # supp Γ counted on the big model at the switch: fixed since, so the masked run's count
    assert small["sparsity"] == masked["sparsity"]


def test_the_path_goes_on_at_the_big_widths(runs):
    from tf_dessilbi.training import path as path_lib

    small, masked = runs
    _, steps, history = path_lib.load_path(os.path.join(small["workdir"], "path.npz"))
    _, masked_steps, masked_history = path_lib.load_path(os.path.join(masked["workdir"], "path.npz"))
    assert steps == masked_steps and steps[-1] == 12
    before = steps.index(6) + 1  # records up to the switch: the same run
    for name, rec in masked_history.items():
        w, want = np.stack(history[name]["w"]), np.stack(rec["w"])
        np.testing.assert_allclose(w[:before], want[:before], rtol=1e-5, err_msg=name)
        # after it: zeros where the masked run has them; a unit's ‖W_g‖ (and supp Γ's count)
        # no longer counts the rows that read removed channels (dead weights there)
        assert history[name]["kept"][:before] == rec["kept"][:before]
        assert all(a <= b for a, b in zip(history[name]["kept"], rec["kept"]))
        np.testing.assert_array_equal(w[before:] == 0, want[before:] == 0)
    first = "conv1"  # its input rows are the image's: nothing cut, the same norms
    np.testing.assert_allclose(np.stack(history[first]["w"]), np.stack(masked_history[first]["w"]),
                               rtol=1e-3, atol=1e-6)


SCRIPT = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_training_small_run import tiny_config
    from tf_dessilbi.training import train

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    FAULT

    train.train_and_evaluate(tiny_config(), {workdir!r})
''')

FAULTS = {
    # one batch into epoch 4, on the small model
    "after the switch": '''
        from tf_dessilbi.training import callbacks
        end = callbacks.StopOnNonFinite.on_train_batch_end
        def on_train_batch_end(self, batch, logs=None):
            end(self, batch, logs)
            if self._epoch == 3 and batch == 0:
                die()
        callbacks.StopOnNonFinite.on_train_batch_end = on_train_batch_end
    ''',
    # the big state saved for the switch, its commit not written
    "during the switch": '''
        from tf_dessilbi.training import backup
        write = backup.write_json
        def write_json(path, obj):
            if path.endswith("switch.json"):
                die()
            write(path, obj)
        backup.write_json = write_json
    ''',
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_killed_run_resumes_bit_identical(fault, runs, tmp_path):
    script = SCRIPT.format(root=ROOT, tests=os.path.dirname(__file__), workdir=str(tmp_path))
    script = script.replace("FAULT", textwrap.dedent(FAULTS[fault]).strip())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "summary.json")
    resumed = train.train_and_evaluate(tiny_config(), str(tmp_path))
    uninterrupted = runs[0]
    assert resumed["eval"] == uninterrupted["eval"]  # exact floats
    assert resumed["eval_w_star"] == uninterrupted["eval_w_star"]
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["switch"] == uninterrupted["switch"]

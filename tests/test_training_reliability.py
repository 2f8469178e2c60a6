"""Issue 14: runs that fail loudly, resume exactly and keep their backups.

The faults run in subprocesses killed (SIGKILL) at chosen points: during the
write of a backup, in the middle of an epoch. The resumed run must end
bit-identical to an uninterrupted one, with its full history.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tf_dessilbi.training import backup as backup_lib
from tf_dessilbi.training import config_lib
from tf_dessilbi.training import train
from tf_dessilbi.training.callbacks import NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(epochs=3):
    config = config_lib.base_config()
    config.data.name = "synthetic"
    config.data.synthetic_train = 64
    config.data.synthetic_eval = 32
    config.data.synthetic_shape = (12, 12, 1)
    config.data.synthetic_classes = 4
    config.batch_size = 16
    config.num_epochs = epochs
    config.steps_per_epoch = 3  # 4 batches per pass: epochs and passes interleave
    config.verbose = 0
    config.dessilbi.lambda_ = 0.05
    config.dessilbi.mu = 1.0
    config.optimizer.learning_rate = 0.05
    config.outputs.export = False
    config.outputs.tensorboard = False
    config.outputs.path = False
    return config


# The config above, for the subprocess; FAULT is replaced by the fault's code.
SCRIPT = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import keras
    from tests.test_training_reliability import tiny_config
    from tf_dessilbi.training import train

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    FAULT

    train.train_and_evaluate(tiny_config(), {workdir!r})
''')

FAULTS = {
    # Keras writes the weights file, then the process dies with it cut to
    # 96 bytes, before anything else of the backup of epoch 2 is written.
    "during the backup write": '''
        save = keras.Model.save_weights
        def save_weights(self, path, *a, **k):
            save(self, path, *a, **k)
            if "epoch-0002" in str(path):
                with open(path, "r+b") as f:
                    f.truncate(96)
                die()
        keras.Model.save_weights = save_weights
    ''',
    # The weights file of epoch 2 is in place, its JSON commit is not.
    "between the weights and the commit": '''
        from tf_dessilbi.training import backup
        write = backup.write_json
        def write_json(path, obj):
            if path.endswith("epoch-2.json"):
                die()
            write(path, obj)
        backup.write_json = write_json
    ''',
    # Two batches into epoch 3.
    "in the middle of an epoch": '''
        from tf_dessilbi.training import callbacks
        end = callbacks.StopOnNonFinite.on_train_batch_end
        def on_train_batch_end(self, batch, logs=None):
            end(self, batch, logs)
            if self._epoch == 2 and batch == 1:
                die()
        callbacks.StopOnNonFinite.on_train_batch_end = on_train_batch_end
    ''',
}


def _run_with_fault(fault, workdir):
    script = SCRIPT.format(root=ROOT, workdir=str(workdir)).replace(
        "FAULT", textwrap.indent(textwrap.dedent(FAULTS[fault]), "").strip()
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train.train_and_evaluate(tiny_config(), str(tmp_path_factory.mktemp("whole")))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_killed_run_resumes_bit_identical(fault, uninterrupted, tmp_path):
    result = _run_with_fault(fault, tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "summary.json")
    resumed = train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert resumed["eval"] == uninterrupted["eval"]  # exact floats
    assert resumed["eval_w_star"] == uninterrupted["eval_w_star"]
    assert resumed["sparsity"] == uninterrupted["sparsity"]
    assert resumed["history"] == uninterrupted["history"]
    assert len(resumed["history"]["loss"]) == 3


def _fit_with_backups(directory, epochs=2):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    model.fit(x, x[:, :2], epochs=epochs, verbose=0,
              callbacks=[backup_lib.Backup(str(directory))])
    return model


def _fresh_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def test_backups_are_double_buffered(tmp_path):
    _fit_with_backups(tmp_path, epochs=3)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5", "epoch-2.json", "epoch-3.json"]
    with open(tmp_path / "epoch-3.json") as f:
        meta = json.load(f)
    assert meta["epoch"] == 3 and len(meta["history"]["loss"]) == 3


@pytest.mark.parametrize("damage", ["truncate", "empty", "garble", "cut json"])
def test_a_damaged_backup_falls_back_to_the_previous_one(tmp_path, damage):
    trained = _fit_with_backups(tmp_path)
    weights, meta = tmp_path / "epoch-0002.weights.h5", tmp_path / "epoch-2.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:96])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "garble":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        meta.write_text(meta.read_text()[:20])
    model = _fresh_model()
    epoch, history = backup_lib.restore(model, str(tmp_path))
    assert epoch == 1 and len(history["loss"]) == 1
    assert not np.array_equal(model.get_weights()[0], trained.get_weights()[0])


def test_no_usable_backup_names_the_files_and_the_fix(tmp_path):
    _fit_with_backups(tmp_path)
    for name in ("epoch-0001.weights.h5", "epoch-0002.weights.h5"):
        (tmp_path / name).write_bytes(b"\0" * 96)
    with pytest.raises(backup_lib.BackupError) as info:
        backup_lib.restore(_fresh_model(), str(tmp_path))
    message = str(info.value)
    assert "epoch-0002.weights.h5 does not match its checksum" in message
    assert "epoch-1.json" in message and f"Delete the folder {tmp_path}" in message
    assert "--config.resume=False" in message


@pytest.mark.parametrize("tensorboard", [True, False])
def test_a_diverging_run_stops_before_backing_up_or_exporting(tmp_path, tensorboard):
    config = tiny_config(epochs=2)
    config.optimizer.learning_rate = 1e4
    config.outputs.export = True
    config.outputs.tensorboard = tensorboard
    with pytest.raises(NonFiniteError, match=r"Training diverged: (the loss is nan|a weight is not finite) at global step \d+ \(epoch 1"):
        train.train_and_evaluate(config, str(tmp_path))
    assert backup_lib.committed_epochs(str(tmp_path / "backup")) == []
    assert not os.path.exists(tmp_path / "export")
    assert not os.path.exists(tmp_path / "summary.json")
    # A rerun does not resume from a NaN state: it diverges the same way.
    with pytest.raises(NonFiniteError, match="optimizer.learning_rate"):
        train.train_and_evaluate(config, str(tmp_path))


def test_summary_json_is_strict_json(tmp_path):
    from tf_dessilbi.training import workdir

    path = workdir.write_summary(str(tmp_path), {"eval": {"loss": float("nan")}, "x": [float("inf")]})
    with open(path) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"eval": {"loss": None}, "x": [None]}


def test_dead_layers_are_reported_and_not_exported(tmp_path):
    config = tiny_config(epochs=1)
    config.dessilbi.lambda_ = 5.0  # nothing enters the support in 3 steps
    config.outputs.export = True
    summary = train.train_and_evaluate(config, str(tmp_path / "dead"))
    assert summary["dead_layers"] == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert "WARNING: layer(s) conv1, conv2, conv3, fc1, logits keep no weight" in summary["sparsity_table"]
    assert "allow_dead_export=True" in summary["export_refused"]
    assert not os.path.exists(tmp_path / "dead" / "export")
    with open(tmp_path / "dead" / "summary.json") as f:
        assert json.load(f)["dead_layers"] == summary["dead_layers"]
    config.outputs.allow_dead_export = True
    allowed = train.train_and_evaluate(config, str(tmp_path / "dead"))
    assert os.path.exists(os.path.join(allowed["export_dir"], "saved_model.pb"))

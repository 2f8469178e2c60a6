"""tf.distribute and mixed precision through train_and_evaluate.

MirroredStrategy runs on the two logical CPUs set up in conftest.py;
MultiWorkerMirroredStrategy on two worker processes on 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tf_dessilbi.training import path as path_lib
from tf_dessilbi.training import train

sys.path.insert(0, os.path.dirname(__file__))
from test_training_train import ROOT, TINY_FLAGS, _export_accuracy, tiny_config  # noqa: E402


def _quiet(config):
    config.outputs.export = False
    config.outputs.tensorboard = False
    return config


def test_mirrored_on_two_logical_cpus(tmp_path):
    config = _quiet(tiny_config())
    config.outputs.export = True
    config.strategy = "mirrored"
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["replicas"] == 2
    assert all(np.isfinite(summary["history"]["loss"]))
    # The reported W* accuracy is what the exported model serves.
    assert summary["eval_w_star"]["accuracy"] == pytest.approx(_export_accuracy(summary, config), abs=1e-6)
    assert summary["sparsity"]["weights_kept"] > 0


@pytest.mark.parametrize("method", ["dessilbi", "gates"])
def test_mixed_bfloat16_trains(tmp_path, method):
    config = _quiet(tiny_config("sgd" if method == "gates" else "dessilbi"))
    config.mixed_precision = "mixed_bfloat16"
    if method == "gates":
        config.gates.enabled = True
        config.gates.final_beta = 10.0
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["mixed_precision"] == "mixed_bfloat16"
    assert all(np.isfinite(summary["history"]["loss"]))
    assert np.isfinite(summary["eval"]["loss"])
    if method == "dessilbi":
        assert np.isfinite(summary["eval_w_star"]["loss"])
        assert summary["sparsity"]["weights_kept"] > 0
    else:
        assert np.isfinite(summary["eval_ticket"]["loss"])
        assert summary["eval_ticket"] != summary["eval"]  # the hard mask, not the soft gates
    import keras

    assert keras.config.dtype_policy().name == "float32"  # restored afterwards


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(workdir, ports, epochs, logdir, tag):
    procs = []
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    for index in range(len(ports)):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        log = open(os.path.join(logdir, f"{tag}_worker{index}.log"), "w")
        args = [a for a in TINY_FLAGS if not a.startswith("--config.num_epochs")]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tf_dessilbi.train", *args,
             f"--config.num_epochs={epochs}", "--config.strategy=multi_worker",
             "--config.outputs.export=False", "--config.outputs.tensorboard=False",
             "--config.verbose=2", f"--workdir={workdir}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


def _backup_epoch(workdir):
    from tf_dessilbi.training import backup

    epochs = backup.committed_epochs(os.path.join(workdir, "backup"))
    return epochs[0] if epochs else 0


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_multi_worker_killed_worker_resumes_from_backup(tmp_path):
    workdir, logs = str(tmp_path / "run"), str(tmp_path)
    epochs = 4
    procs = _start_workers(workdir, _free_ports(2), epochs, logs, "first")
    try:
        deadline = time.time() + 120  # generous: startup is slow on a busy machine
        while _backup_epoch(workdir) < 1 and time.time() < deadline:
            assert all(p.poll() is None for p in procs), open(os.path.join(logs, "first_worker0.log")).read()[-3000:]
            time.sleep(0.2)
        killed_at = _backup_epoch(workdir)
        assert 1 <= killed_at < epochs, "the run did not finish an epoch in time"
        procs[1].send_signal(signal.SIGKILL)  # worker 1 dies mid-run
        procs[1].wait(timeout=30)
    finally:
        # Its peer cannot finish a collective without it: like a cluster
        # manager, stop it and start the job again with the same command.
        _stop(procs)
    procs = _start_workers(workdir, _free_ports(2), epochs, logs, "second")
    try:
        for p in procs:
            assert p.wait(timeout=120) == 0, open(os.path.join(logs, "second_worker0.log")).read()[-3000:]
    finally:
        _stop(procs)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["replicas"] == 2
    assert len(summary["history"]["loss"]) == epochs  # the full history, resumed
    assert all(np.isfinite(summary["history"]["loss"]))
    recorded, _, _ = path_lib.load_path(os.path.join(workdir, "path.npz"))
    assert recorded[-1] == epochs and recorded == sorted(recorded)
    log = open(os.path.join(logs, "second_worker0.log")).read()
    assert "Restored the backup of epoch" in log  # it did not start over

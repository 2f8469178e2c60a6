"""train_and_evaluate end to end on tiny synthetic configs (the train_test)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_dessilbi.training import config_lib
from tf_dessilbi.training import path as path_lib
from tf_dessilbi.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(optimizer="dessilbi", name="fmnist_dessilbi"):
    """``tf_dessilbi/configs/<name>.py`` on 96 synthetic 12×12×1 images, 2 epochs of 3 steps."""
    config = config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", name + ".py"))
    config.data.name = "synthetic"
    config.data.synthetic_train = 96
    config.data.synthetic_eval = 32
    config.data.synthetic_shape = (12, 12, 1)
    config.data.synthetic_classes = 4
    config.data.mean, config.data.std = (), ()  # none (the protocol configs normalize)
    config.batch_size = 16
    config.num_epochs = 2
    config.steps_per_epoch = 3
    config.verbose = 0
    config.optimizer.name = optimizer
    config.dessilbi.lambda_ = 0.05  # let something enter the support in 6 steps
    config.dessilbi.mu = 1.0
    return config


def _export_accuracy(summary, config) -> float:
    """Accuracy of the exported SavedModel on the run's eval set, served by TF."""
    import tensorflow as tf

    from tf_dessilbi.training import input_pipeline

    x, y = input_pipeline.synthetic_arrays(
        config.data.synthetic_eval, tuple(config.data.synthetic_shape), config.data.synthetic_classes, config.seed + 1
    )
    serve = tf.saved_model.load(summary["export_dir"]).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    (logits,) = serve(**{name: tf.constant(x)}).values()
    return float(np.mean(np.argmax(logits.numpy(), -1) == y))


def test_train_and_evaluate_dessilbi(tmp_path):
    workdir = str(tmp_path)
    summary = train.train_and_evaluate(tiny_config(), workdir)
    with open(os.path.join(workdir, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk["eval"] == summary["eval"]
    # The reported W* accuracy is the exported model's, measured independently.
    config = tiny_config()
    assert summary["eval_w_star"]["accuracy"] == pytest.approx(_export_accuracy(summary, config), abs=1e-6)
    assert summary["eval"]["accuracy"] * config.data.synthetic_eval == pytest.approx(
        round(summary["eval"]["accuracy"] * config.data.synthetic_eval), abs=1e-4)
    assert len(summary["history"]["loss"]) == 2
    assert all(np.isfinite(summary["history"]["loss"]))
    layers = [row["layer"] for row in summary["sparsity"]["layers"]]
    assert layers == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert 0 < summary["sparsity"]["weights_kept"] < summary["sparsity"]["weights_total"]
    # Outputs in the workdir.
    epochs, steps, history = path_lib.load_path(os.path.join(workdir, "path.npz"))
    assert epochs[0] == 0.0 and epochs[-1] == 2.0 and steps[-1] == 6
    assert set(history) == set(layers)
    assert os.path.getsize(os.path.join(workdir, "path.png")) > 0
    assert summary["path_png"] == os.path.join(workdir, "path.png")
    assert glob.glob(os.path.join(workdir, "tensorboard", "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(workdir, "tensorboard", "eval", "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(summary["export_dir"], "saved_model.pb"))
    assert summary["export_dir"] == os.path.join(workdir, "export", "1")
    assert os.path.exists(os.path.join(workdir, "backup", "epoch-2.json"))
    assert os.path.exists(os.path.join(workdir, "train.log"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["dessilbi"]["mu"] == 1.0


def test_tensorboard_scalars_and_histograms(tmp_path):
    import tensorflow as tf

    config = tiny_config()
    config.outputs.export = False
    config.outputs.summary_every_steps = 2
    train.train_and_evaluate(config, str(tmp_path))
    tags = {}
    for event_file in glob.glob(str(tmp_path / "tensorboard" / "train" / "events.*")):
        for raw in tf.data.TFRecordDataset(event_file):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
    for tag in ("loss", "accuracy", "learning_rate", "sparsity/conv1/units_kept",
                "sparsity/total/weights_kept", "support/conv1/units_kept",
                "support/total/weights_kept", "dessilbi/kappa", "dessilbi/lambda_"):
        assert tags.get(tag) == "scalars", tag
    assert tags.get("unit_norm_w/conv2") == "histograms"
    assert tags.get("unit_norm_gamma/fc1") == "histograms"
    assert tags.get("config") == "text"
    steps = _scalar_steps(tmp_path / "tensorboard" / "train", "loss")
    assert steps == [2, 4, 6]  # every 2 steps, on the global step
    assert _scalar_steps(tmp_path / "tensorboard" / "eval", "w_star_accuracy") == [3, 6]
    assert _scalar_steps(tmp_path / "tensorboard" / "eval", "accuracy") == [3, 6]


def _scalar_steps(folder, tag):
    import tensorflow as tf

    steps = []
    for event_file in glob.glob(str(folder / "events.*")):
        for raw in tf.data.TFRecordDataset(event_file):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_histograms_of_zero_norms_stay_non_negative():
    from tf_dessilbi.training import summaries

    buckets = summaries.histogram_buckets(np.zeros(7))
    assert buckets.shape == (1, 3) and buckets[0, 0] == 0.0 and buckets[0, 1] > 0
    assert buckets[0, 2] == 7
    nan = summaries.histogram_buckets(np.array([np.nan, 1.0, 2.0]))
    assert nan[:, 2].sum() == 2 and np.isfinite(nan).all()


def test_train_and_evaluate_sgd_has_no_sparsity(tmp_path):
    config = tiny_config("sgd")
    config.outputs.path = False
    config.outputs.export = False
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert "eval_w_star" not in summary
    assert summary["sparsity"]["layers"] == []


def test_a_workdir_remembers_its_config(tmp_path):
    """Issue 14 item 4: a changed config in a used workdir is an error naming the fields."""
    from tf_dessilbi.training import workdir as workdir_lib

    config = tiny_config()
    config.outputs.export = False
    config.num_epochs = 1
    first = train.train_and_evaluate(config, str(tmp_path))
    config.optimizer.learning_rate = 0.02
    config.optimizer.name = "sgd"
    with pytest.raises(workdir_lib.WorkdirError) as info:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(info.value)
    assert "config.optimizer.learning_rate: 0.05 in the workdir, 0.02 now" in message
    assert "config.optimizer.name: 'dessilbi' in the workdir, 'sgd' now" in message
    assert "--config.resume=False" in message
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["optimizer"]["learning_rate"] == 0.05  # not rewritten
    # Output-only fields may change; the same run is then reported again.
    config = tiny_config()
    config.num_epochs = 1
    config.outputs.export = False
    config.outputs.tensorboard = False
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again["eval"] == first["eval"] and len(again["history"]["loss"]) == 1
    # resume=False starts over with the new settings.
    config.optimizer.learning_rate = 0.02
    config.resume = False
    fresh = train.train_and_evaluate(config, str(tmp_path))
    assert fresh["eval"] != first["eval"]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["optimizer"]["learning_rate"] == 0.02


def test_a_workdir_from_before_a_new_config_field_resumes_at_its_default(tmp_path):
    """A run started before a field existed resumes while the field holds its default."""
    from tf_dessilbi.training import workdir as workdir_lib

    config = tiny_config()
    config.outputs.export = False
    config.num_epochs = 1
    first = train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    # What a version without these fields wrote (both are at their defaults here).
    del saved["optimizer"]["joint_groups"], saved["optimizer"]["finetune_group_margin"], saved["jit_compile"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again["eval"] == first["eval"] and len(again["history"]["loss"]) == 1
    # Away from its default, a field the workdir lacks is a difference like any other.
    config.jit_compile = True
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    with pytest.raises(workdir_lib.WorkdirError, match=r"config\.jit_compile: '<unset>' in the workdir, True now"):
        train.train_and_evaluate(config, str(tmp_path))
    # A field the workdir has but this version lacks is never taken for equal.
    assert workdir_lib.config_differences({"old_field": 1, "seed": 0}, {"seed": 0}, defaults={"seed": 0}) == [
        "config.old_field: 1 in the workdir, '<unset>' now"]
    assert workdir_lib.config_differences({"seed": 0}, {"seed": 0, "new": 2}, defaults={"seed": 0, "new": 1}) == [
        "config.new: '<unset>' in the workdir, 2 now"]
    assert workdir_lib.config_differences({"seed": 0}, {"seed": 0, "new": 1}, defaults={"seed": 0, "new": 1}) == []


def test_early_tickets_retrain_the_support(tmp_path):
    config = tiny_config()
    config.outputs.export = False
    config.early_tickets.epochs = (1, 2)
    config.early_tickets.retrain_epochs = 1
    summary = train.train_and_evaluate(config, str(tmp_path))
    from tf_dessilbi.procedures import early_tickets

    for epoch in ("1", "2"):
        ticket = summary["early_tickets"][epoch]
        saved = early_tickets.load_support(str(tmp_path / "early_tickets"), int(epoch))
        assert ticket["weights_kept"] == saved.weights_kept and ticket["weights_total"] == saved.weights_total
        empty = sorted(k.split("/")[0] for k, m in saved.weights.items() if not m.any())
        assert ticket["empty_layers"] == empty
        if empty:  # a dead ticket is reported, not retrained
            assert ticket["accuracy"] is None
        else:
            assert ticket["accuracy"] * config.data.synthetic_eval == pytest.approx(
                round(ticket["accuracy"] * config.data.synthetic_eval), abs=1e-4)
    kept1 = summary["early_tickets"]["1"]["weights_kept"]
    kept2 = summary["early_tickets"]["2"]["weights_kept"]
    assert kept1 <= kept2  # the support grows along the path
    assert os.path.exists(tmp_path / "early_tickets" / "support_epoch1.npz")



def test_invalid_config_fails_before_training(tmp_path):
    config = tiny_config()
    config.dessilbi.kappa = -1.0
    with pytest.raises(ValueError, match="config.dessilbi.kappa=-1.0"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def _cli(args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "tf_dessilbi.train", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


TINY_FLAGS = [
    "--config=fmnist_dessilbi",
    "--config.data.name=synthetic",
    "--config.data.synthetic_train=64",
    "--config.data.synthetic_eval=16",
    "--config.data.synthetic_shape=(12,12,1)",
    "--config.batch_size=16",
    "--config.num_epochs=1",
    "--config.steps_per_epoch=2",
    "--config.dessilbi.lambda_=0.05",
    "--config.dessilbi.mu=1",
]


@pytest.mark.slow
def test_cli_end_to_end_prints_table_and_paths(tmp_path):
    result = _cli(TINY_FLAGS + ["--config.outputs.allow_dead_export=True", f"--workdir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "accuracy (W* = W on supp Γ)" in out
    assert "layer" in out and "conv1" in out and "total" in out
    assert f"SavedModel: {tmp_path}/export/1" in out
    assert f"regularization path: {tmp_path}/path.png" in out
    assert "epoch 1/1:" in result.stderr and "units kept" in result.stderr
    # Quiet by default: no CUDA probing errors (on a machine without GPUs), no
    # Keras shuffle warning, no resource-name notices from the export.
    if not os.path.exists("/proc/driver/nvidia"):
        assert "cuInit" not in result.stderr
    assert "shuffle=True" not in result.stderr
    assert "Found untraced functions" not in result.stderr
    assert "Assets written to" not in result.stderr
    with open(tmp_path / "train.log") as f:
        assert "epoch 1/1:" in f.read()


def test_cli_bad_flag_is_one_line_and_exit_2(tmp_path):
    result = _cli(TINY_FLAGS + ["--config.optimizer.kapa=2", f"--workdir={tmp_path}/run"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("tf_dessilbi.train: error:")]
    assert len(errors) == 1 and "kapa" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("field,value,message", [
    ("dessilbi.kappa", -1.0, "config.dessilbi.kappa=-1.0 is invalid: allowed a finite number > 0"),
    ("method", "nope", "config.method='nope' is invalid"),
    ("workdir", "afile", "is a file, not a folder"),
])
def test_cli_bad_value_is_one_line_and_exit_2(tmp_path, capsys, field, value, message):
    from tf_dessilbi.training import main

    (tmp_path / "afile").write_text("x")
    config = tiny_config()
    workdir = str(tmp_path / "run")
    if field == "workdir":
        workdir = str(tmp_path / value)
    elif field == "method":
        config.method = value
    else:
        config.dessilbi.kappa = value
    code = main.run(config, workdir)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tf_dessilbi.train: error: "), err
    assert message in err
    assert not os.path.exists(tmp_path / "run" / "backup")


def test_cli_diverging_run_exits_1_with_one_message(tmp_path, capsys):
    from tf_dessilbi.training import main

    config = tiny_config()
    config.optimizer.learning_rate = 1e12
    code = main.run(config, str(tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert "tf_dessilbi.train: failed: Training diverged" in err
    assert not os.path.exists(tmp_path / "export")


def test_cli_dead_model_exits_3(tmp_path, capsys):
    from tf_dessilbi.training import main

    config = tiny_config()
    config.num_epochs = 1
    config.dessilbi.lambda_ = 5.0
    config.outputs.tensorboard = False
    assert main.run(config, str(tmp_path)) == 3
    assert "SavedModel NOT exported: dead layers" in capsys.readouterr().out


def test_cli_helpfull_lists_the_config_fields():
    from absl import flags

    from tf_dessilbi.training import main

    main.define_flags()
    text = flags.FLAGS["config"].help
    assert "dessilbi.kappa=1.0" in text and "outputs.allow_dead_export=False" in text


@pytest.mark.parametrize("rounds", [1, 2])
def test_train_and_evaluate_gates(tmp_path, rounds):
    config = tiny_config("sgd")
    config.gates.enabled = True
    config.gates.final_beta = 10.0
    config.gates.penalty = 1e-4
    config.gates.rounds = rounds
    config.gates.rewind_epoch = 1
    config.outputs.tensorboard = rounds == 1
    summary = train.train_and_evaluate(config, str(tmp_path))
    # The ticket's reported accuracy is the exported (stripped) model's.
    assert summary["eval_ticket"]["accuracy"] == pytest.approx(_export_accuracy(summary, config), abs=1e-6)
    assert all(np.isfinite(summary["history"]["loss"]))
    assert os.path.exists(os.path.join(summary["export_dir"], "saved_model.pb"))
    structures = {row["structure"] for row in summary["sparsity"]["layers"]}
    assert structures == {"gate:weight"}
    if rounds > 1:
        assert [r["round"] for r in summary["rounds"]] == [0, 1]
        assert 0.0 < summary["ticket_weight_fraction"] <= 1.0


def test_registering_a_method_is_one_line(tmp_path, monkeypatch):
    import keras

    from tf_dessilbi import training
    from tf_dessilbi.layers import masked

    seen = {}

    def prepare(config, model, data, steps_per_epoch):
        seen["prepare"] = (data.num_train, steps_per_epoch, config.sparse.keep)
        return masked.mask_model(model)

    def callbacks(config, model, steps_per_epoch):
        class Count(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen["epochs"] = seen.get("epochs", 0) + 1
        return [Count()]

    monkeypatch.setitem(training.METHODS, "toy", training.Method(prepare=prepare, callbacks=callbacks))
    config = tiny_config("sgd")
    config.method = "toy"
    config.sparse.keep = 0.5  # a method's own fields live in config.sparse
    config.outputs.tensorboard = False
    summary = train.train_and_evaluate(config, str(tmp_path / "toy"))
    assert seen == {"prepare": (96, 3, 0.5), "epochs": 2}
    assert summary["method"] == "toy" and os.path.exists(summary["export_dir"])

    def run(config, workdir, data, strategy):
        return {"eval": {"loss": 1.0, "accuracy": 0.5}, "sparsity": {}, "rounds": 3}

    monkeypatch.setitem(training.METHODS, "whole", training.Method(run=run))
    config = tiny_config("sgd")
    config.method = "whole"
    summary = train.train_and_evaluate(config, str(tmp_path / "whole"))
    assert summary["rounds"] == 3 and summary["method"] == "whole"
    with open(tmp_path / "whole" / "summary.json") as f:
        assert json.load(f)["eval"]["accuracy"] == 0.5


def test_the_default_method_follows_the_older_fields():
    from tf_dessilbi.training import methods

    config = tiny_config()
    assert methods.method_name(config) == "dessilbi"
    config.optimizer.name = "sgd"
    assert methods.method_name(config) == "sgd"
    config.gates.enabled = True
    assert methods.method_name(config) == "cs"
    config.gates.rounds = 2
    assert methods.method_name(config) == "cs_search"
    with pytest.raises(ValueError, match="either a whole run"):
        methods.Method(run=lambda *a: {}, prepare=lambda *a: None)


def test_a_decaying_schedule_with_steady_path_and_w_star_finetune(tmp_path):
    """The protocol recipe through the CLI's training: the final model *is* W*."""
    config = tiny_config()
    config.num_epochs = 3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.dessilbi.steady_path = True
    config.fork.last_epochs = 1
    config.dessilbi.lambda_scaling = "init_norm"
    config.dessilbi.lambda_ = 0.12
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["eval"]["accuracy"] == summary["eval_w_star"]["accuracy"]
    assert summary["eval"]["loss"] == pytest.approx(summary["eval_w_star"]["loss"], rel=1e-6)
    assert 0 < summary["sparsity"]["weights_kept"] < summary["sparsity"]["weights_total"]
    with open(os.path.join(str(tmp_path), "config.json")) as f:
        saved = json.load(f)
    assert saved["fork"]["last_epochs"] == 1 and saved["dessilbi"]["steady_path"] is True


@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_w_star_finetune_from_a_units_fraction_through_the_cli(tmp_path):
    config = tiny_config()
    config.num_epochs = 3
    config.dessilbi.structure = "filter"
    config.fork.units = 0.25
    config.dessilbi.lambda_scaling = "init_norm"
    config.dessilbi.lambda_ = 0.12
    summary = train.train_and_evaluate(config, str(tmp_path / "units"))
    config.fork.units = 0.0
    free = train.train_and_evaluate(config, str(tmp_path / "free"))
    # The support was frozen once it held ≥ 25 % of the filters: fewer enter than on the free path,
    kept = summary["sparsity"]["units_kept"]
    assert 0.25 * summary["sparsity"]["units_total"] <= kept < free["sparsity"]["units_kept"]
    # and the run ends at W* (some filters out, so this is not trivially true).
    assert summary["eval"]["loss"] == pytest.approx(summary["eval_w_star"]["loss"], rel=1e-6)
    assert summary["eval"]["accuracy"] == summary["eval_w_star"]["accuracy"]
    with open(os.path.join(str(tmp_path / "units"), "config.json")) as f:
        assert json.load(f)["fork"]["units"] == 0.25


@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_w_star_finetune_from_a_weights_fraction_through_the_cli(tmp_path):
    """Elementwise: the support is frozen once it holds ≥ 20 % of the coupled weights."""
    config = tiny_config()
    config.num_epochs = 3
    config.dessilbi.structure = "elementwise"
    config.fork.weights = 0.2
    config.dessilbi.lambda_ = 0.1
    summary = train.train_and_evaluate(config, str(tmp_path / "weights"))
    config.fork.weights = 0.0
    free = train.train_and_evaluate(config, str(tmp_path / "free"))
    kept, total = summary["sparsity"]["weights_kept"], summary["sparsity"]["weights_total"]
    assert 0.2 * total <= kept < free["sparsity"]["weights_kept"]  # stopped growing at the crossing
    assert summary["eval"]["loss"] == pytest.approx(summary["eval_w_star"]["loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.sweep  # CI's second step (make test-sweep)
@pytest.mark.parametrize("grouped", [False, True], ids=["per_filter", "joint_groups_max"])
def test_resnet20_protocol_config_exports_its_trimmed_w_star(tmp_path, grouped):
    """tf_dessilbi/configs/fmnist_resnet20_dessilbi_protocol.py on tiny data: per-filter λ (unit_init_norm),
    the support trimmed to exactly half of the filters, and a shrunk export (BN channels removed
    with their filters) that computes W*. Grouped (joint coupling along the path, whole groups
    ranked by their strongest member): the export keeps exactly the filters in supp Γ."""
    config = tiny_config(name="fmnist_resnet20_dessilbi_protocol")
    config.num_epochs = 3
    config.dessilbi.lambda_ = 0.02  # half of the filters enter within the 9 steps
    config.dessilbi.mu = 1.0
    if grouped:
        config.optimizer.joint_groups = config.fork.dependency_groups = True
        config.optimizer.finetune_group_margin = "max"
    summary = train.train_and_evaluate(config, str(tmp_path))
    sparsity = summary["sparsity"]
    assert sparsity["units_total"] == 784  # every conv of ResNet-20, projections included
    assert sparsity["units_kept"] == 392  # trimmed to ⌈0.5·784⌉, not what crossed λ
    convs = [r for r in summary["shrink"]["layers"] if r["layer"].endswith("_conv")]
    exported = sum(r["units_after"] for r in convs)
    assert (exported == 392) if grouped else (exported > 392)  # residual channels leave only together
    assert summary["eval"]["loss"] == pytest.approx(summary["eval_w_star"]["loss"], rel=1e-6)
    assert summary["eval_w_star"]["accuracy"] == pytest.approx(_export_accuracy(summary, config), abs=1e-6)
    with open(os.path.join(str(tmp_path), "config.json")) as f:
        assert json.load(f)["dessilbi"]["lambda_scaling"] == "unit_init_norm"


@pytest.mark.parametrize("field,value,match", [
    ("fork.weights", 1.5, r"config.fork.weights=1.5"),
    ("fork.last_epochs", 2, r"config.fork.last_epochs=2 .*< num_epochs=2"),
    ("dessilbi.steady_path", "yes", r"config.dessilbi.steady_path=.yes."),
    ("fork.allow_empty", "no", r"config.fork.allow_empty=.no."),
    ("fork.trim", True, r"config.fork.trim=True .*fork.units > 0"),
    ("fork.dependency_groups", True, r"config.fork.dependency_groups=True .*fine-tune is on"),
    ("fork.dependency_groups", "no", r"config.fork.dependency_groups=.no."),
    ("fork.units", 1.5, r"config.fork.units=1.5"),
    ("optimizer.joint_groups", "no", r"config.optimizer.joint_groups=.no."),
    ("optimizer.finetune_group_margin", "mean", r"config.optimizer.finetune_group_margin=.mean."),
    ("optimizer.finetune_group_margin", "max", r"finetune_group_margin=.max. .*fork.dependency_groups=True"),
    ("fork.units", -0.1, r"config.fork.units=-0.1"),
    ("optimizer.finetune_layer_units", "conv1/=0", r"finetune_layer_units='conv1/=0' .*pattern=k"),
    ("optimizer.finetune_layer_units", "conv1/", r"finetune_layer_units='conv1/' .*Received: 'conv1/'"),
    ("optimizer.finetune_layer_units", "a=1,a=2", r"gives pattern 'a' twice"),
    ("optimizer.finetune_layer_units", "conv(=2", r"key 'conv\(' is not a valid regular expression"),
    ("optimizer.finetune_layer_units", "conv1/=2", r"finetune_layer_units='conv1/=2' .*fine-tune is on"),
    ("fork.round_to", 0, r"config.fork.round_to=0 .*>= 1"),
    ("fork.round_to", 4, r"fork.round_to=4 .*fine-tune is on"),
])
def test_dessilbi_schedule_fields_are_validated(field, value, match):
    config = tiny_config()
    section, key = field.split(".")
    with config[section].ignore_type():
        config[section][key] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_dessilbi_schedule_fields_need_dessilbi():
    config = tiny_config("sgd")
    config.fork.last_epochs = 1
    with pytest.raises(ValueError, match=r"fork.last_epochs=1 .*optimizer.name='dessilbi'"):
        config_lib.validate(config)


def test_finetune_units_needs_groups_and_dessilbi():
    config = tiny_config()
    config.dessilbi.structure = "elementwise"
    config.fork.units = 0.5
    with pytest.raises(ValueError, match=r"fork.units=0.5 .*elementwise"):
        config_lib.validate(config)
    config.fork.units, config.fork.weights = 0.0, 0.1
    config.fork.dependency_groups = True
    with pytest.raises(ValueError, match=r"fork.dependency_groups=True .*elementwise"):
        config_lib.validate(config)
    config = tiny_config("sgd")
    config.fork.units = 0.5
    with pytest.raises(ValueError, match=r"fork.units=0.5 .*optimizer.name='dessilbi'"):
        config_lib.validate(config)


def test_joint_groups_reach_the_optimizer_and_are_validated():
    import keras

    import tf_dessilbi
    from tf_dessilbi import models
    from tf_dessilbi.training import components

    config = tiny_config()
    config.optimizer.joint_groups = True
    config_lib.validate(config)
    keras.utils.set_random_seed(0)
    model = models.resnet20(input_shape=(28, 28, 1), num_classes=10)
    optimizer = components.build_optimizer(config, model, 10)
    groups = tf_dessilbi.joint_unit_groups(model)
    assert len(groups) == 16 + 32 + 64  # one per residual channel of the three stages
    assert optimizer.unit_groups == tuple(tuple((p, u) for p, u in g) for g in groups)
    config.optimizer.joint_groups = False
    assert components.build_optimizer(config, model, 10).unit_groups is None
    config.optimizer.joint_groups, config.fork.units = True, 0.5
    config.fork.trim = True
    with pytest.raises(ValueError, match=r"fork.trim=True .*fork.dependency_groups=True"):
        config_lib.validate(config)
    config.fork.dependency_groups = True
    config_lib.validate(config)
    config.fork.units, config.fork.trim = 0.0, False
    config.fork.dependency_groups = False
    config.optimizer.joint_groups, config.dessilbi.structure = True, "elementwise"
    with pytest.raises(ValueError, match=r"joint_groups=True .*elementwise"):
        config_lib.validate(config)
    config = tiny_config("sgd")
    config.optimizer.joint_groups = True
    with pytest.raises(ValueError, match=r"joint_groups=True .*optimizer.name='dessilbi'"):
        config_lib.validate(config)


@pytest.mark.parametrize("allow", [False, True])
def test_the_cli_passes_finetune_allow_empty_to_the_fine_tune(allow):
    import keras

    from tf_dessilbi.dessilbi import finetune
    from tf_dessilbi.training import methods

    config = tiny_config()
    config.fork.units = 0.4
    config.fork.allow_empty = allow
    config.fork.trim = allow
    config.fork.dependency_groups = allow
    config.optimizer.finetune_group_margin = "max" if allow else "joint"
    config_lib.validate(config)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    (callback,) = [c for c in methods.get(config).callbacks(config, model, 10)
                   if isinstance(c, finetune.WStarFinetune)]
    assert callback.allow_empty_layers is allow and callback.units_fraction == 0.4
    assert callback.trim is allow and callback.dependency_groups is allow
    assert callback.group_margin == ("max" if allow else "joint")
    config.optimizer.finetune_group_margin = "joint"
    config.fork.trim = config.fork.dependency_groups = False
    config.optimizer.name, config.fork.units = "sgd", 0.0
    if allow:  # a DessiLBI-only switch left on for SGD
        with pytest.raises(ValueError, match="fork.allow_empty=True is invalid"):
            config_lib.validate(config)
    else:
        config_lib.validate(config)


def _layer_units_config(spec):
    """3 epochs, conv filters coupled, the last epoch a fine-tune starting at ``spec``'s widths."""
    config = tiny_config()
    config.num_epochs = 3
    config.dessilbi.structure = "filter"
    config.fork.last_epochs = 1
    config.optimizer.finetune_layer_units = spec
    return config


@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_finetune_layer_units_through_the_cli(tmp_path):
    """``finetune_layer_units`` sets conv1 and conv3 to the asked widths when the fine-tune starts."""
    config = _layer_units_config("^conv1/=3,^conv3/=5")
    summary = train.train_and_evaluate(config, str(tmp_path))
    units = {row["layer"]: row["units_kept"] for row in summary["sparsity"]["layers"]}
    assert units["conv1"] == 3 and units["conv3"] == 5
    assert summary["eval"]["loss"] == pytest.approx(summary["eval_w_star"]["loss"], rel=1e-6)
    with open(os.path.join(str(tmp_path), "config.json")) as f:
        assert json.load(f)["optimizer"]["finetune_layer_units"] == "^conv1/=3,^conv3/=5"
    for field in ("fork.trim", "fork.dependency_groups", "optimizer.joint_groups"):
        bad = tiny_config()
        bad.fork.units, bad.optimizer.finetune_layer_units = 0.5, "conv1/=2"
        section, name = field.split(".")
        bad[section][name] = True
        with pytest.raises(ValueError, match=r"finetune_layer_units=.* with fork.trim, "
                                             r"fork.dependency_groups or optimizer.joint_groups"):
            config_lib.validate(bad)
    bad = tiny_config()
    bad.fork.last_epochs, bad.optimizer.finetune_layer_units = 1, "conv1/=2"
    bad.dessilbi.structure = "elementwise"
    with pytest.raises(ValueError, match=r"finetune_layer_units='conv1/=2' .*structure='elementwise'"):
        config_lib.validate(bad)
    sgd = tiny_config("sgd")
    sgd.optimizer.finetune_layer_units = "conv1/=2"
    with pytest.raises(ValueError, match=r"finetune_layer_units='conv1/=2' .*optimizer.name='dessilbi'"):
        config_lib.validate(sgd)


@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_finetune_round_to_through_the_cli(tmp_path):
    """``fork.round_to`` widens the support the path chose to multiples of r when the fine-tune starts.

    The path until then is the same run for run, so each conv keeps min(N, ⌈k/r⌉·r) of the k
    filters the run without rounding keeps.
    """
    from absl import logging

    config = _layer_units_config("")
    config.dessilbi.lambda_ = 0.1  # conv1 keeps 2 of 16 filters when the fine-tune starts
    plain = train.train_and_evaluate(config, str(tmp_path / "plain"))
    config.fork.round_to = 4
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.INFO)  # what the CLI sets
    try:
        rounded = train.train_and_evaluate(config, str(tmp_path / "rounded"))
    finally:
        logging.set_verbosity(verbosity)
    # train.log says when the support was fixed, each kernel's width, and what round_to added.
    with open(tmp_path / "rounded" / "train.log") as f:
        (line,) = [l for l in f if "W* fine-tune: supp Γ fixed from step" in l]
    kept = {row["layer"]: row["units_kept"] for row in rounded["sparsity"]["layers"]}
    assert "from step 6 (epoch 2.00) on, the coupling off" in line  # fork.last_epochs=1 of 3, 3 steps each
    assert f"conv1/kernel {kept['conv1']}/16, conv2/kernel {kept['conv2']}/32" in line
    assert "added conv1/kernel [" in line and "trimmed" not in line
    widths = [{row["layer"]: (row["units_kept"], row["units_total"]) for row in s["sparsity"]["layers"]
               if row["layer"].startswith("conv")} for s in (plain, rounded)]
    assert sorted(widths[0]) == ["conv1", "conv2", "conv3"]
    assert any(k % 4 for k, _ in widths[0].values())  # something to round
    for layer, (k, total) in widths[0].items():
        assert widths[1][layer] == (min(total, -(-k // 4) * 4), total)
    assert rounded["eval"]["loss"] == pytest.approx(rounded["eval_w_star"]["loss"], rel=1e-6)
    bad = _layer_units_config("")
    bad.fork.round_to, bad.optimizer.finetune_layer_units = 8, "conv1/=2"
    with pytest.raises(ValueError, match=r"fork.round_to=8 .* with optimizer.finetune_layer_units "
                                         r"\(they set the support's units themselves: choose multiples"):
        config_lib.validate(bad)
    bad = _layer_units_config("")
    bad.fork.round_to, bad.optimizer.joint_groups = 8, True
    with pytest.raises(ValueError, match=r"fork.round_to=8 .*joint_groups=True unless "
                                         r"fork.dependency_groups=True"):
        config_lib.validate(bad)
    bad.fork.dependency_groups = True  # rounded by whole groups: allowed
    config_lib.validate(bad)
    bad = _layer_units_config("")
    bad.fork.round_to, bad.dessilbi.structure = 8, "elementwise"
    with pytest.raises(ValueError, match=r"fork.round_to=8 .*structure='elementwise'"):
        config_lib.validate(bad)
    sgd = tiny_config("sgd")
    sgd.fork.round_to = 8
    with pytest.raises(ValueError, match=r"fork.round_to=8 .*optimizer.name='dessilbi'"):
        config_lib.validate(sgd)


def test_a_run_that_fails_before_any_output_leaves_no_config_behind(tmp_path, monkeypatch):
    """A bad argument found when training starts: the corrected config reruns in the same workdir.

    A run that fails after its first backup keeps its config.json (it is resumable and still
    refuses another config).
    """
    from tf_dessilbi.dessilbi import finetune
    from tf_dessilbi.training import workdir as workdir_lib

    config = _layer_units_config("^conv9/=3")  # no such kernel: refused at train begin
    with pytest.raises(ValueError, match=r"patterns \['\^conv9/'\] match none"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "config.json").exists() and (tmp_path / "train.log").exists()
    config.optimizer.finetune_layer_units = "^conv1/=3"
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert {r["layer"]: r["units_kept"] for r in summary["sparsity"]["layers"]}["conv1"] == 3

    def fail(*args, **kwargs):  # the fine-tune's start (epoch 3) fails, after two backups
        raise ValueError("injected failure")

    monkeypatch.setattr(finetune, "set_layer_units", fail)  # the name WStarFinetune calls
    later = tmp_path / "later"
    with pytest.raises(ValueError, match="injected failure"):
        train.train_and_evaluate(config, str(later))
    assert (later / "config.json").exists() and (later / "backup").is_dir()
    config.optimizer.finetune_layer_units = "^conv1/=2"
    with pytest.raises(workdir_lib.WorkdirError, match=r"finetune_layer_units: '\^conv1/=3' in the workdir"):
        train.train_and_evaluate(config, str(later))

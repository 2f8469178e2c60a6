"""Issue 14 items 9 and 11: what the installed environment must hold."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install_requires():
    with open(os.path.join(ROOT, "setup.py")) as f:
        text = f.read()
    block = text[text.index("install_requires=["):text.index("],", text.index("install_requires=["))]
    return [re.split(r"[<>=!\[ ]", r)[0].lower() for r in re.findall(r'"([^"]+)"', block)]


def test_setup_installs_what_tfds_and_the_summaries_need():
    requires = _install_requires()
    assert "importlib_resources" in requires  # imported by TFDS, not declared by it
    assert "tensorboard" in requires  # TensorFlow no longer depends on it


def test_tfds_builds_a_builder_in_this_environment(tmp_path):
    """The TFDS code path beyond mock_data: a builder and its code path (imports importlib_resources)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert type(builder).code_path is not None
    assert builder.info.features["label"].num_classes == 10


def test_tensorboard_reads_the_summaries(tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    from tf_dessilbi.training import summaries

    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        summaries.write_scalar("loss", 0.5, step=3)
        summaries.write_histogram("unit_norm_w/fc", [0.0, 1.0, 2.0], step=3)
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Tensors("loss")] == [3]


def test_readme_says_how_to_install_and_open_tensorboard():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert "tensorboard --logdir" in text and "http://localhost:6006" in text


def test_the_config_lands_in_the_hparams_tab(tmp_path):
    import tensorflow as tf

    from tf_dessilbi.training import config_lib
    from tf_dessilbi.training import summaries

    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        assert summaries.write_hparams(config_lib.base_config())
    plugins = set()
    for event_file in tmp_path.glob("events.*"):
        for raw in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
    assert "hparams" in plugins
    flat = summaries.flat_config(config_lib.base_config())
    assert flat["dessilbi.kappa"] == 1.0 and flat["data.mean"] == "()"

"""Tests of tf_dessilbi.export.saved_model: export_saved_model() (layout, modes, kills)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dessilbi
from tests.test_export_strip import _Subclassed  # noqa: F401
from tf_dessilbi import export

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


from tests.export_models import _data, _dessilbi_trained, _functional, _same_weights, _weights  # noqa: E402,F401



# -- SavedModel ---------------------------------------------------------------------
def _checkpoint_variables(version_dir):
    prefix = os.path.join(version_dir, "variables", "variables")
    return [
        (name, tuple(shape))
        for name, shape in tf.train.list_variables(prefix)
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    ]


@pytest.mark.slow  # fresh processes: > 20 s on a loaded 2-core machine
def test_saved_model_matches_keras_in_a_fresh_process(tmp_path):
    model, optimizer = _dessilbi_trained()
    x, _ = _data(n=5, seed=5)
    # Eight steps leave "conv" outside supp Γ: a dead model, exported on purpose here.
    path = tf_dessilbi.export_saved_model(model, tmp_path / "net", optimizer=optimizer,
                                          allow_dead=True)
    assert path == str(tmp_path / "net" / "1")
    stripped = tf_dessilbi.strip(model, optimizer)
    expected = keras.ops.convert_to_numpy(stripped(x, training=False))
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import json
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({path!r})
        serve = loaded.signatures["serving_default"]
        out = serve(image=tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "y.npy")!r}, out["logits"].numpy())
        print(json.dumps({{
            "inputs": sorted(serve.structured_input_signature[1]),
            "outputs": sorted(serve.structured_outputs),
        }}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["inputs"] == ["image"] and info["outputs"] == ["logits"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_saved_model_stores_each_weight_once(tmp_path):
    model, optimizer = _dessilbi_trained()
    path = tf_dessilbi.export_saved_model(model, tmp_path, optimizer=optimizer,
                                          allow_dead=True)  # "conv" is outside supp Γ
    stored = _checkpoint_variables(path)
    expected = sorted(tuple(w.shape) for w in model.weights)
    assert sorted(shape for _, shape in stored) == expected


@pytest.mark.slow  # fresh processes: > 20 s on a loaded 2-core machine
def test_saved_model_cli_show_and_run(tmp_path):
    model = _functional()
    path = tf_dessilbi.export_saved_model(model, tmp_path / "net")
    np.save(tmp_path / "x.npy", _data(n=2)[0])
    show = subprocess.run(
        [SAVED_MODEL_CLI, "show", "--dir", path, "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    assert "serving_default" in show.stdout
    assert "inputs['image']" in show.stdout and "outputs['logits']" in show.stdout
    run = subprocess.run(
        [
            SAVED_MODEL_CLI, "run", "--dir", path, "--tag_set", "serve",
            "--signature_def", "serving_default",
            "--inputs", f"image={tmp_path / 'x.npy'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "logits" in run.stdout


def test_signature_names_for_several_inputs_and_outputs(tmp_path):
    a = keras.Input((4,), name="left")
    b = keras.Input((4,), name="right")
    h = keras.layers.Concatenate(name="cat")([a, b])
    out1 = keras.layers.Dense(2, name="score")(h)
    out2 = keras.layers.Dense(3, name="class_probs")(h)
    model = keras.Model([a, b], [out1, out2])
    path = tf_dessilbi.export_saved_model(model, tmp_path)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["left", "right"]
    assert sorted(serve.structured_outputs) == ["class_probs", "score"]
    xa = np.ones((2, 4), "float32")
    xb = np.arange(8, dtype="float32").reshape(2, 4)
    out = serve(left=tf.constant(xa), right=tf.constant(xb))
    expected = model([xa, xb])
    np.testing.assert_allclose(out["score"].numpy(), keras.ops.convert_to_numpy(expected[0]), rtol=1e-6)
    np.testing.assert_allclose(out["class_probs"].numpy(), keras.ops.convert_to_numpy(expected[1]), rtol=1e-6)


def test_versions_overwrite_and_no_partial_directories(tmp_path):
    model = _functional()
    assert tf_dessilbi.export_saved_model(model, tmp_path) == str(tmp_path / "1")
    assert tf_dessilbi.export_saved_model(model, tmp_path) == str(tmp_path / "2")
    assert tf_dessilbi.export_saved_model(model, tmp_path, version=7) == str(tmp_path / "7")
    assert tf_dessilbi.export_saved_model(model, tmp_path) == str(tmp_path / "8")
    os.makedirs(tmp_path / "9")  # an empty version directory may be filled
    assert tf_dessilbi.export_saved_model(model, tmp_path, version=9) == str(tmp_path / "9")
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "7", "8", "9"]

    listing = sorted(os.listdir(tmp_path / "2"))
    with pytest.raises(
        ValueError,
        match=r"Version directory '.*2' already exists and is not empty. Pass "
        r"overwrite=True to replace it",
    ):
        tf_dessilbi.export_saved_model(model, tmp_path, version=2)
    assert sorted(os.listdir(tmp_path / "2")) == listing

    changed = tf_dessilbi.strip(model)
    changed.get_layer("logits").bias.assign(np.full((3,), 5.0, "float32"))
    tf_dessilbi.export_saved_model(changed, tmp_path, version=2, overwrite=True)
    serve = tf.saved_model.load(str(tmp_path / "2")).signatures["serving_default"]
    x, _ = _data(n=2)
    np.testing.assert_allclose(
        serve(image=tf.constant(x))["logits"].numpy(),
        keras.ops.convert_to_numpy(changed(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "7", "8", "9"]


def test_failed_export_writes_nothing(tmp_path, monkeypatch):
    model = _functional()

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        tf_dessilbi.export_saved_model(model, tmp_path / "net", version=3)
    assert os.listdir(tmp_path / "net") == []


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"version": "1"}, TypeError, r"`version` must be an integer. Received: version='1' of type str"),
        ({"version": True}, TypeError, r"Received: version=True of type bool"),
        ({"version": -1}, ValueError, r"`version` must be >= 0. Received: version=-1"),
        ({"overwrite": "yes"}, TypeError, r"`overwrite` must be True or False. Received: overwrite='yes'"),
        ({"preprocessing": 3}, TypeError, r"`preprocessing` must be a function or None. Received: preprocessing=3"),
        ({"export_dir": 3}, TypeError, r"`export_dir` must be a path. Received: export_dir=3"),
    ],
)
def test_export_bad_arguments(tmp_path, kwargs, error, message):
    arguments = {"export_dir": tmp_path, **kwargs}
    with pytest.raises(error, match=message):
        tf_dessilbi.export_saved_model(_functional(), **arguments)
    if os.path.isdir(tmp_path):
        assert os.listdir(tmp_path) == []


def test_export_dir_that_is_a_file(tmp_path):
    target = tmp_path / "model"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match=r"`export_dir` must be a directory. Received: export_dir='.*model', which is a file"):
        tf_dessilbi.export_saved_model(_functional(), target)


def test_export_of_a_subclassed_model_writes_nothing(tmp_path):
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match=r"_Subclassed 'sub' is subclassed"):
        tf_dessilbi.export_saved_model(model, tmp_path / "sub")
    assert not os.path.exists(tmp_path / "sub")


def test_signature_name_sanitizing():
    assert export._spec_name("class probs") == "class_probs"
    assert export._spec_name("_x") == "x_x"
    assert export._unique(["a", "a", "b"]) == ["a", "a_1", "b"]


def test_exported_folders_are_readable_by_other_users(tmp_path):
    path = tf_dessilbi.export_saved_model(_functional(), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask
    os.umask(0o022)  # the usual umask: drwxr-xr-x, as tf.saved_model.save gives
    try:
        path = tf_dessilbi.export_saved_model(_functional(), tmp_path)
    finally:
        os.umask(umask)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o755)


def test_preprocessing_is_baked_into_the_signature(tmp_path):
    model = _functional()
    path = tf_dessilbi.export_saved_model(model, tmp_path, preprocessing=lambda x: x / 255.0)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    x, _ = _data()
    out = list(serve(image=tf.constant(x * 255.0)).values())[0].numpy()
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(model(x, training=False)),
                               rtol=1e-4, atol=1e-5)


KILL_EXPORT = textwrap.dedent('''
    import os, shutil, signal, sys
    import keras, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_export_saved_model import _functional
    import tf_dessilbi
    from tf_dessilbi.export import saved_model

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    keras.utils.set_random_seed(5)
    model = _functional()
    point = {point!r}
    if point == "fallback: between the two renames":
        saved_model._exchange = lambda a, b: False
        rename = os.rename
        calls = []
        def fake_rename(a, b):
            rename(a, b)
            calls.append(b)
            if len(calls) == 1:
                die()
        saved_model.os.rename = fake_rename
    elif point == "after the exchange":
        saved_model.shutil.rmtree = die
    elif point == "while writing":
        import tensorflow as tf
        tf.saved_model.save = die
    for w in model.weights:
        w.assign(w + 1.0)
    tf_dessilbi.export_saved_model(model, {export_dir!r}, version=1, overwrite=True)
''')


@pytest.mark.parametrize("point", ["while writing", "after the exchange",
                                   "fallback: between the two renames"])
def test_a_killed_overwrite_leaves_a_servable_version(tmp_path, point):
    model = _functional()
    x, _ = _data()
    old = keras.ops.convert_to_numpy(model(x, training=False))
    tf_dessilbi.export_saved_model(model, tmp_path, version=1)
    script = KILL_EXPORT.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                point=point, export_dir=str(tmp_path))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    hidden = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    if point != "fallback: between the two renames":  # the atomic paths
        served = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
        out = list(served(image=tf.constant(x)).values())[0].numpy()
        expected_old = point == "while writing"
        assert np.allclose(out, old, atol=1e-5) == expected_old
    assert hidden  # what the kill left behind ...
    # ... the next export cleans up (and restores a version moved aside).
    tf_dessilbi.export_saved_model(model, tmp_path, version=2)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    tf.saved_model.load(str(tmp_path / "1"))

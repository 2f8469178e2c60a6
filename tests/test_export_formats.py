"""Tests of tf_dessilbi.export.formats: export_model() to SavedModel, LiteRT and ONNX (checks, kills, extras)."""

import importlib.util
import os
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dessilbi
from tests.export_models import _data, _dessilbi_trained, _functional
from tf_dessilbi.export import check as check_lib
from tf_dessilbi.export import convert
from tf_dessilbi.export import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX, reason='the ONNX extra is not installed: pip install "tf_dessilbi[onnx]"')


def _hidden(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


def _readable(path):
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IRGRP) and bool(mode & stat.S_IROTH)


def test_litert_float_round_trips_in_a_fresh_process(tmp_path):
    model, optimizer = _dessilbi_trained(steps=20)
    x, y = _data(64)
    out = tf_dessilbi.export_model(model, tmp_path / "m.tflite", format="litert",
                                   optimizer=optimizer, eval_data=(x, y))
    assert out.path == str(tmp_path / "m.tflite") and out.format == "litert"
    assert out.size_bytes == os.path.getsize(out.path) > 0
    assert out.check.passed and out.check.examples == 64
    assert out.check.max_rel_error <= 1e-5
    assert out.check.argmax_agreement == 1.0
    assert out.check.accuracy == out.check.reference_accuracy
    # The file holds W*: it matches the stripped model, not the dense W.
    stripped = tf_dessilbi.strip(model, optimizer)
    ran = check_lib.run_file("litert", out.path, x)
    np.testing.assert_allclose(ran, keras.ops.convert_to_numpy(stripped(x)), rtol=1e-5, atol=1e-5)
    assert _readable(out.path) and _hidden(tmp_path) == []


@needs_onnx
def test_onnx_float_round_trips_in_a_fresh_process(tmp_path):
    model, optimizer = _dessilbi_trained(steps=20)
    x, y = _data(64)
    out = tf_dessilbi.export_model(model, tmp_path / "m.onnx", format="onnx",
                                   optimizer=optimizer, shrink=True, eval_data=(x, y))
    assert out.check.passed and out.check.max_rel_error <= 1e-5
    shrunk = tf_dessilbi.shrink(model, optimizer=optimizer)
    np.testing.assert_allclose(check_lib.run_file("onnx", out.path, x),
                               keras.ops.convert_to_numpy(shrunk(x)), rtol=1e-5, atol=1e-5)
    assert _readable(out.path) and _hidden(tmp_path) == []


def test_saved_model_through_export_model_is_checked(tmp_path):
    model = _functional()
    out = tf_dessilbi.export_model(model, tmp_path, format="saved_model")
    assert out.path == str(tmp_path / "1") and out.check.max_rel_error <= 1e-5
    assert out.size_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "dynamic_int8"])
def test_quantized_litert_reports_agreement_and_is_smaller(tmp_path, quantize):
    keras.utils.set_random_seed(0)
    model = _functional()
    x, y = _data(64)
    full = tf_dessilbi.export_model(model, tmp_path / "f.tflite", format="litert", check=False)
    out = tf_dessilbi.export_model(model, tmp_path / "q.tflite", format="litert",
                                   quantize=quantize, eval_data=(x, y))
    assert out.quantize == quantize and out.size_bytes < full.size_bytes
    assert out.check.passed  # quantized files report, they do not fail
    assert out.check.argmax_agreement >= 0.8
    assert out.check.accuracy is not None and out.check.reference_accuracy is not None


@pytest.mark.slow
@pytest.mark.parametrize("int8_io", [False, True])
def test_full_integer_int8_from_a_tf_data_pipeline(tmp_path, int8_io):
    keras.utils.set_random_seed(0)
    model = _functional()
    x, y = _data(128)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    out = tf_dessilbi.export_model(model, tmp_path / "q.tflite", format="litert",
                                   quantize="int8", representative_data=train,
                                   int8_io=int8_io, eval_data=(x, y))
    interpreter = tf.lite.Interpreter(model_path=out.path)
    expected = np.int8 if int8_io else np.float32
    assert interpreter.get_input_details()[0]["dtype"] == expected
    assert interpreter.get_output_details()[0]["dtype"] == expected
    assert out.check.argmax_agreement >= 0.8
    assert abs(out.check.accuracy - out.check.reference_accuracy) <= 0.2


@needs_onnx
@pytest.mark.slow
def test_onnx_dynamic_int8(tmp_path):
    keras.utils.set_random_seed(0)
    model = _functional()
    x, y = _data(64)
    out = tf_dessilbi.export_model(model, tmp_path / "q.onnx", format="onnx",
                                   quantize="dynamic_int8", eval_data=(x, y))
    assert out.check.argmax_agreement >= 0.8
    assert _hidden(tmp_path) == []  # the float intermediate is gone too


@pytest.mark.slow
@pytest.mark.sweep  # CI's second step (make test-sweep)
@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_keras_applications_mobilenet_v2(tmp_path, fmt):
    if fmt == "onnx" and not HAVE_ONNX:
        pytest.skip('the ONNX extra is not installed: pip install "tf_dessilbi[onnx]"')
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                           classes=5)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    out = tf_dessilbi.export_model(model, tmp_path / f"m{convert.SUFFIX[fmt]}", format=fmt,
                                   eval_data=(x, np.zeros(8, "int64")))
    assert out.check.passed and out.check.max_rel_error <= 1e-5


def test_a_file_that_does_not_reproduce_the_model_is_not_written(tmp_path, monkeypatch):
    model = _functional()
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous")
    real = check_lib.run_file
    monkeypatch.setattr(check_lib, "run_file", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.raises(check_lib.ExportCheckError, match="does not reproduce the model"):
        tf_dessilbi.export_model(model, target, format="litert")
    assert target.read_bytes() == b"previous" and _hidden(tmp_path) == []


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(ImportError, match=r'tf2onnx.*pip install "tf_dessilbi\[onnx\]"'):
        tf_dessilbi.export_model(_functional(), tmp_path / "m.onnx", format="onnx")
    assert os.listdir(tmp_path) == []


def test_a_dead_model_is_refused(tmp_path):
    keras.utils.set_random_seed(1)
    model = _functional()
    optimizer = tf_dessilbi.DessiLBI(learning_rate=0.1, mu=1.0, lambda_=1e6)
    optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="keep no weight at all.*allow_dead=True"):
        tf_dessilbi.export_model(model, tmp_path / "m.tflite", format="litert",
                                 optimizer=optimizer)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"format": "tflite"}, ValueError, r"`format` must be one of .*Received: format='tflite'"),
    ({"format": "onnx", "quantize": "int8"}, ValueError,
     r"`quantize` must be one of \(None, 'dynamic_int8'\) for format='onnx'"),
    ({"format": "saved_model", "quantize": "float16"}, ValueError, r"quantize='float16'"),
    ({"format": "litert", "quantize": "int8"}, ValueError, r"representative_data=None"),
    ({"format": "litert", "int8_io": True}, ValueError, r"int8_io=True.*quantize=None"),
    ({"format": "litert", "int8_io": "yes"}, TypeError, r"`int8_io` must be True or False"),
    ({"format": "litert", "path": "m.onnx"}, ValueError, r"must end with '.tflite'"),
    ({"format": "litert", "path": 3}, TypeError, r"`path` must be a path. Received: path=3"),
    ({"format": "litert", "quantize": "int4"}, ValueError, r"Received: quantize='int4'"),
    ({"format": "litert", "eval_data": [1, 2]}, TypeError, r"`eval_data` must be"),
    ({"format": "litert", "quantize": "int8", "representative_data": "x"}, TypeError,
     r"`representative_data` must be"),
    ({"format": "litert", "source": {"conv": 1}}, ValueError, r"`source` is used with shrink=True"),
    ({"format": "onnx", "version": 2}, ValueError, r"Received: format='onnx', version=2"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, error, message):
    kwargs = dict(kwargs)
    path = kwargs.pop("path", "m" + convert.SUFFIX.get(kwargs.get("format"), ".tflite"))
    if isinstance(path, str):
        path = tmp_path / path
    with pytest.raises(error, match=message):
        tf_dessilbi.export_model(_functional(), path, **kwargs)
    assert os.listdir(tmp_path) == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".m.tflite.tmp-{dead}-abc.tflite"
    mine = tmp_path / f".m.tflite.tmp-{os.getpid()}-abc.tflite"
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")
    assert files.clean_stale_files(str(tmp_path)) == [str(stale)]
    assert mine.exists() and not stale.exists()


KILL_EXPORT = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import keras
    from tests.export_models import _functional
    import tf_dessilbi
    from tf_dessilbi.export import convert, files

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    point = {point!r}
    if point == "while writing":
        def half_written(model, path, *a, **k):
            with open(path, "wb") as f:
                f.write(b"TFL3 partial")
            die()
        convert.write_litert = half_written
    else:  # "before the rename": the file is written and checked
        files.os.replace = die
    keras.utils.set_random_seed(7)
    tf_dessilbi.export_model(_functional(), {path!r}, format="litert")
''')


@pytest.mark.parametrize("point", ["while writing", "before the rename"])
def test_a_killed_export_leaves_the_previous_file(tmp_path, point):
    keras.utils.set_random_seed(0)
    model = _functional()
    x, _ = _data()
    target = tmp_path / "m.tflite"
    tf_dessilbi.export_model(model, target, format="litert", check=False)
    before = target.read_bytes()
    script = KILL_EXPORT.format(root=ROOT, point=point, path=str(target))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-2000:]
    assert target.read_bytes() == before  # the previous file, whole
    np.testing.assert_allclose(check_lib.run_file("litert", str(target), x),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert len(_hidden(tmp_path)) == 1  # what the kill left behind ...
    tf_dessilbi.export_model(model, target, format="litert", check=False)
    assert _hidden(tmp_path) == []  # ... the next export removes it


def test_deadness_is_judged_on_the_exported_kernels_not_on_an_optimizer_state(tmp_path):
    # A stripped model loaded back can carry a fresh DessiLBI whose Γ is zero: its
    # kernels (W*) are what is exported, and they are not dead.
    model, optimizer = _dessilbi_trained(steps=20)
    stripped = tf_dessilbi.strip(model, optimizer)
    fresh = tf_dessilbi.DessiLBI(learning_rate=0.1, mu=1.0, lambda_=0.5)
    fresh.build(stripped.trainable_variables)
    stripped.compile(optimizer=fresh, loss="mse")
    assert tf_dessilbi.sparsity_report(stripped).empty_layers  # the optimizer's view: all empty
    out = tf_dessilbi.export_model(stripped, tmp_path / "m.tflite", format="litert", check=False)
    assert out.size_bytes > 0 and out.check is None

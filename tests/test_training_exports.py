"""The CLI's export formats: config.outputs.formats / outputs.quantize, validation and an end-to-end run."""

import importlib.util
import os

import pytest
from absl import flags
from ml_collections import config_flags

from tests.test_training_train import tiny_config
from tf_dessilbi.training import config_lib
from tf_dessilbi.training import exports
from tf_dessilbi.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))


def _config(**outputs):
    config = config_lib.load_config(os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py"))
    for key, value in outputs.items():
        config.outputs[key] = value
    return config


def test_defaults_export_a_saved_model_only():
    config = _config()
    assert tuple(config.outputs.formats) == ("saved_model",) and config.outputs.quantize == ""
    config_lib.validate(config)


@pytest.mark.parametrize("outputs, match", [
    ({"formats": ("tflite",)}, r"config.outputs.formats=\('tflite',\) is invalid: allowed a non-empty"),
    ({"formats": ()}, r"config.outputs.formats=\(\) is invalid"),
    ({"formats": ("litert", "litert")}, r"config.outputs.formats=\('litert', 'litert'\) is invalid"),
    ({"formats": ("saved_model",), "quantize": "int8"},
     r"config.outputs.quantize='int8' is invalid: allowed '' \(none\) or, for formats \('saved_model',\), one of \(\)"),
    ({"formats": ("onnx",), "quantize": "float16"},
     r"config.outputs.quantize='float16' is invalid: .*one of \('dynamic_int8',\)"),
    ({"formats": ("litert",), "quantize": "int4"}, r"config.outputs.quantize='int4' is invalid"),
])
def test_bad_formats_name_the_field(outputs, match):
    with pytest.raises(ValueError, match=match):
        config_lib.validate(_config(**outputs))


def test_command_line_sets_formats_and_quantize():
    values = flags.FlagValues()
    path = os.path.join(ROOT, "tf_dessilbi", "configs", "fmnist_dessilbi.py")
    argv = ["prog", f"--config={path}", "--config.outputs.formats=('litert','onnx')",
            "--config.outputs.quantize=int8"]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    config = values.config
    assert tuple(config.outputs.formats) == ("litert", "onnx")
    assert config.outputs.quantize == "int8"
    config_lib.validate(config)


def test_file_names():
    assert exports.file_name("litert", None) == "model.tflite"
    assert exports.file_name("litert", "int8") == "model_int8.tflite"
    assert exports.file_name("onnx", "dynamic_int8") == "model_dynamic_int8.onnx"


@pytest.mark.slow
def test_cli_exports_every_format_checked(tmp_path):
    config = tiny_config()
    formats = ("saved_model", "litert", "onnx") if HAVE_ONNX else ("saved_model", "litert")
    config.outputs.formats = formats
    config.outputs.quantize = "int8"
    config.outputs.tensorboard = False
    config.outputs.path = False
    summary = train.train_and_evaluate(config, str(tmp_path))
    files = {(f["format"], f["quantize"]): f for f in summary["exports"]}
    expected = {(f, None) for f in formats} | {("litert", "int8")}
    assert set(files) == expected
    for (fmt, quantize), f in files.items():
        assert os.path.exists(f["path"]) and f["size_bytes"] > 0
        assert f["check"]["examples"] == 32  # the whole synthetic eval split
        assert f["check"]["accuracy"] is not None
        if quantize is None:
            assert f["check"]["max_rel_error"] <= 1e-5
            assert f["check"]["accuracy"] == f["check"]["reference_accuracy"]
    assert files[("litert", "int8")]["size_bytes"] < files[("litert", None)]["size_bytes"]
    assert summary["export_dir"] == files[("saved_model", None)]["path"]
    table = summary["exports_table"]
    assert "export/model_int8.tflite" in table and "export/model.tflite" in table

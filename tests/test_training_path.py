"""The regularization-path recorder and its plot."""

import os

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi.training import path as path_lib


def _model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


def _train(model, workdir, epochs, callback=None):
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, 32)
    if getattr(model, "optimizer", None) is None:
        model.compile(
            optimizer=tf_dessilbi.DessiLBI(learning_rate=0.1, mu=1.0, lambda_=0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    callback = callback or path_lib.RegularizationPath(workdir)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[callback])
    return callback


def test_unit_norms_match_numpy():
    kernel = np.random.default_rng(1).standard_normal((3, 3, 2, 5))
    expected = [np.linalg.norm(kernel[..., j]) for j in range(5)]
    np.testing.assert_allclose(path_lib.unit_norms(kernel), expected)


def test_records_gamma_and_w_norms_every_epoch(tmp_path):
    model = _model()
    _train(model, str(tmp_path), epochs=3)
    epochs, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert epochs == [1, 2, 3]
    assert set(history) == {"conv", "head"}
    conv_w = np.stack(history["conv"]["w"])
    conv_g = np.stack(history["conv"]["gamma"])
    assert conv_w.shape == conv_g.shape == (3, 4)
    optimizer = model.optimizer
    kernel = model.get_layer("conv").kernel
    np.testing.assert_allclose(conv_w[-1], path_lib.unit_norms(kernel.numpy()), rtol=1e-5)
    np.testing.assert_allclose(
        conv_g[-1], path_lib.unit_norms(keras.ops.convert_to_numpy(optimizer.gamma(kernel))), rtol=1e-5
    )
    assert os.path.getsize(tmp_path / "path.png") > 0


def test_history_survives_a_restart(tmp_path):
    model = _model()
    _train(model, str(tmp_path), epochs=2)
    # A fresh callback (new process after a crash) continues the file.
    callback = path_lib.RegularizationPath(str(tmp_path), plot=False)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(2)
    epochs, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert epochs == [1, 2, 3]
    assert len(history["conv"]["w"]) == 3
    # Re-running an epoch replaces it rather than appending a duplicate.
    callback.on_epoch_end(1)
    epochs, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert epochs == [1, 2]
    assert len(history["head"]["gamma"]) == 2


def test_plot_path_colours_support_and_rest(tmp_path):
    npz = str(tmp_path / "p.npz")
    gamma = [np.array([0.0, 0.0, 0.0]), np.array([0.5, 0.0, 0.0])]
    w = [np.array([1.0, 0.2, 0.1]), np.array([1.5, 0.1, 0.05])]
    path_lib.save_path(npz, [1, 2], {"conv": {"gamma": gamma, "w": w}})
    png = path_lib.plot_path(npz, str(tmp_path / "p.png"))
    assert os.path.getsize(png) > 0
    import matplotlib.pyplot as plt  # noqa: F401  (Agg already selected)
    from PIL import Image  # matplotlib depends on Pillow

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)
    grey = (abs(pixels[:, 0] - 153) < 20) & (abs(pixels[:, 1] - 153) < 20) & (abs(pixels[:, 2] - 153) < 20)
    assert red.sum() > 20 and grey.sum() > 20


def test_plot_path_unknown_layer(tmp_path):
    npz = str(tmp_path / "p.npz")
    path_lib.save_path(npz, [1], {"conv": {"gamma": [np.zeros(2)], "w": [np.ones(2)]}})
    with pytest.raises(ValueError, match="Unknown layers \\['fc'\\]; recorded: \\['conv'\\]"):
        path_lib.plot_path(npz, str(tmp_path / "p.png"), layers=["fc"])


def test_sgd_model_records_nothing(tmp_path):
    model = _model()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _train(model, str(tmp_path), epochs=1)
    epochs, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert epochs == [1] and history == {}
    assert not os.path.exists(tmp_path / "path.png")

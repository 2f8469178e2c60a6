"""The regularization-path recorder and its plot."""

import os

import keras
import numpy as np
import pytest

import tf_dessilbi
from tf_dessilbi import masks as masks_lib
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
    np.testing.assert_allclose(masks_lib.unit_norms(kernel), expected)


def test_records_every_n_steps_on_a_fractional_epoch_axis(tmp_path):
    model = _model()
    _train(model, str(tmp_path), epochs=3, callback=path_lib.RegularizationPath(
        str(tmp_path), every_steps=2))
    epochs, steps, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert steps == [0, 2, 4, 6, 8, 10, 12]  # 4 steps per epoch, step 0 included
    np.testing.assert_allclose(epochs, [0, 0.5, 1, 1.5, 2, 2.5, 3])
    assert set(history) == {"conv", "head"}
    conv_w = np.stack(history["conv"]["w"])
    conv_g = np.stack(history["conv"]["gamma"])
    assert conv_w.shape == conv_g.shape == (7, 4)
    assert np.all(conv_g[0] == 0)  # Γ starts at 0
    optimizer = model.optimizer
    kernel = model.get_layer("conv").kernel
    gamma = keras.ops.convert_to_numpy(optimizer.gamma(kernel))
    np.testing.assert_allclose(conv_w[-1], masks_lib.unit_norms(kernel.numpy()), rtol=1e-5)
    np.testing.assert_allclose(conv_g[-1], masks_lib.unit_norms(gamma), rtol=1e-5)
    assert history["conv"]["kept"][-1] == np.count_nonzero(gamma)
    assert history["conv"]["total"] == kernel.numpy().size
    assert os.path.getsize(tmp_path / "path.png") > 0


def test_history_survives_a_restart(tmp_path):
    model = _model()
    _train(model, str(tmp_path), epochs=2)
    # A fresh callback (new process after a crash) continues the file.
    callback = path_lib.RegularizationPath(str(tmp_path), plot=False)
    callback.set_model(model)
    callback.on_train_begin()
    _, steps, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert steps == [0, 4, 8]
    # Records after the restored step (a backup older than path.npz) are dropped.
    model.optimizer.iterations.assign(4)
    callback.on_train_begin()
    callback.on_epoch_end(0)
    _, steps, history = path_lib.load_path(str(tmp_path / "path.npz"))
    assert steps == [0, 4]
    assert len(history["head"]["gamma"]) == 2


def test_masked_layers_record_w_and_masked_w(tmp_path):
    """The gate's/mask's own weight_variable is read (not layer.layer.kernel)."""
    from tf_dessilbi.layers import masked

    model = masked.mask_model(_model())
    wrapper = [l for l in model.layers if isinstance(l, masked.MaskedLayer)][0]
    mask = np.zeros(tuple(wrapper.weight_variable.shape), bool)
    mask[..., :2] = True
    wrapper.set_mask(mask)
    kernels = {name: (w, m) for name, w, m in path_lib.gated_kernels(model)}
    w, m = kernels[wrapper.name]
    np.testing.assert_array_equal(w, keras.ops.convert_to_numpy(wrapper.weight_variable))
    np.testing.assert_array_equal(m, np.where(mask, w, 0.0))


def test_plot_titles_count_weights_for_elementwise_layers():
    from tf_dessilbi.training import path_plot

    support = np.ones(128, bool)  # every neuron keeps a weight ...
    title = path_plot._title("fc1", {"kept": [400], "total": 1000}, support)
    assert title == "fc1: 40.0% of weights kept (400/1000), 128/128 units"


def test_wide_layers_draw_30_lines_and_a_band(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_dessilbi.training import path_plot

    rng = np.random.default_rng(0)
    rec = {"gamma": [np.zeros(64), np.r_[np.ones(5), np.zeros(59)]],
           "w": [rng.random(64), rng.random(64)], "kept": [0, 5], "total": 640}
    fig, ax = plt.subplots()
    path_plot._panel(ax, np.array([0.0, 1.0]), rec, "fc")
    # 30 unit lines (+ dashed Γ for the support among them) + the band's median.
    solid = [l for l in ax.lines if l.get_linestyle() == "-"]
    assert len(solid) == 30
    assert len(ax.collections) == 1  # the band of the other 34 units
    plt.close(fig)


def test_plot_path_colours_support_and_rest(tmp_path):
    npz = str(tmp_path / "p.npz")
    gamma = [np.array([0.0, 0.0, 0.0]), np.array([0.5, 0.0, 0.0])]
    w = [np.array([1.0, 0.2, 0.1]), np.array([1.5, 0.1, 0.05])]
    path_lib.save_path(npz, [0, 3], {"conv": {"gamma": gamma, "w": w}}, steps_per_epoch=3)
    png = path_lib.plot_path(npz, str(tmp_path / "p.png"))
    assert os.path.getsize(png) > 0
    import matplotlib.pyplot as plt  # noqa: F401  (Agg already selected)
    from PIL import Image  # matplotlib depends on Pillow

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)
    grey = (abs(pixels[:, 0] - 140) < 25) & (abs(pixels[:, 1] - 140) < 25) & (abs(pixels[:, 2] - 140) < 25)
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
    assert not os.path.exists(tmp_path / "path.npz")
    assert not os.path.exists(tmp_path / "path.png")


def _many_layers(tmp_path, n):
    npz = str(tmp_path / "many.npz")
    layers = {f"s{i:02d}_conv": {"gamma": [np.zeros(4), np.r_[1.0, np.zeros(3)]],
                                 "w": [np.ones(4), np.r_[2.0, np.ones(3)]]} for i in range(n)}
    path_lib.save_path(npz, [0, 3], layers, steps_per_epoch=3)
    return npz


def test_a_resnet20_path_draws_every_coupled_layer(tmp_path):
    """21 coupled layers (ResNet-20): 21 panels, 4 a row, so 6 rows of 3.4 in at 100 dpi."""
    from PIL import Image

    png = path_lib.plot_path(_many_layers(tmp_path, 21), str(tmp_path / "p.png"))
    width, height = Image.open(png).size
    assert (width, height) == (2000, 2040)


def test_a_path_that_leaves_layers_out_says_so(tmp_path):
    npz = _many_layers(tmp_path, 5)
    with pytest.warns(UserWarning, match=r"the first 2 of 5 coupled layers"):
        png = path_lib.plot_path(npz, str(tmp_path / "p.png"), max_layers=2)
    from PIL import Image

    assert Image.open(png).size == (1000, 340)  # two panels, one row
    with pytest.raises(ValueError, match=r"`max_layers` must be >= 1. Received: max_layers=0"):
        path_lib.plot_path(npz, str(tmp_path / "q.png"), max_layers=0)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match=rf"`max_layers` must be an integer. Received: max_layers={bad!r}"):
            path_lib.plot_path(npz, str(tmp_path / "q.png"), max_layers=bad)
    assert not os.path.exists(tmp_path / "q.png")

"""bench/parity.py: structures as the CLI's, recipes, seeds, rewinding and the ticket cache."""

import os
import sys

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import parity, parity_report, parity_tickets  # noqa: E402


def test_filter_neuron_groups_conv_filters_and_hidden_neurons_not_the_logits():
    from tf_dessilbi import models
    from tf_dessilbi.dessilbi.structures import named_structure

    model = models.fmnist_cnn_s()
    mapping = named_structure("filter_neuron", model)
    by_layer = {k.split("/")[0].strip("^"): v for k, v in mapping.items()}
    assert by_layer == {"conv1": "filter", "conv2": "filter", "conv3": "filter", "fc1": "neuron",
                        "logits": "elementwise"}
    filters_only = {k.split("/")[0].strip("^"): v for k, v in named_structure("filter", model).items()}
    assert filters_only == {"conv1": "filter", "conv2": "filter", "conv3": "filter", "fc1": None,
                            "logits": None}
    assert named_structure("auto", model) == "auto"
    assert named_structure("elementwise", model) == "elementwise"


def test_recipes_parse_into_the_settings_of_a_run():
    assert parity.parse_recipe("paper") == {"hparams": {}, "steady": False, "finetune_epochs": 0,
                                            "decouple": True, "units_fraction": None,
                                            "weights_fraction": None, "trim": False, "groups": False,
                                            "joint": False, "gmax": False, "widths": None,
                                            "round_to": 1}
    got = parity.parse_recipe("init+steady+ft2+lam0.5+mu40")
    assert got == {"hparams": {"lambda_scaling": "init_norm", "lambda_": 0.5, "mu": 40.0},
                   "steady": True, "finetune_epochs": 2, "decouple": True, "units_fraction": None,
                   "weights_fraction": None, "trim": False, "groups": False, "joint": False,
                   "gmax": False, "widths": None, "round_to": 1}
    assert parity.parse_recipe("cft1")["decouple"] is False
    assert parity.parse_recipe("init+lam0.5+u0.49")["units_fraction"] == 0.49
    assert parity.parse_recipe("lam0.5+w0.1")["weights_fraction"] == 0.1
    assert parity.parse_recipe("init+lam0.5+u0.5+trim")["trim"] is True
    got = parity.parse_recipe("unitinit+lam0.45+u0.5+trim")  # not read as a units fraction
    assert got["hparams"] == {"lambda_scaling": "unit_init_norm", "lambda_": 0.45}
    assert got["units_fraction"] == 0.5 and got["trim"] is True and got["groups"] is False
    assert parity.parse_recipe("unitinit+lam0.45+u0.5+trim+groups")["groups"] is True
    got = parity.parse_recipe("unitinit+lam0.45+u0.5+trim+groups+joint+gmax")
    assert got["joint"] is True and got["gmax"] is True
    got = parity.parse_recipe("init+lam0.5+u0.5+widths12-16-28")  # not read as a weights fraction
    assert got["widths"] == [12, 16, 28] and got["units_fraction"] == 0.5 and got["weights_fraction"] is None
    assert parity._layer_units("fmnist", got["widths"]) == {"^conv1/": 12, "^conv2/": 16, "^conv3/": 28}
    assert parity._layer_units("fmnist", None) is None
    with pytest.raises(ValueError, match="names FMNIST-CNN-S's conv1-3; model 'resnet20'"):
        parity._layer_units("resnet20", [1, 2, 3])
    with pytest.raises(ValueError, match="widths<a>-<b>-<c> sets each layer's width itself"):
        parity.parse_recipe("u0.5+trim+widths12-16-28")
    got = parity.parse_recipe("init+lam0.5+u0.5+trim+round16")
    assert got["round_to"] == 16 and got["trim"] is True and got["units_fraction"] == 0.5
    got = parity.parse_recipe("unitinit+lam0.45+u0.5+trim+groups+round8")  # whole groups rounded
    assert got["round_to"] == 8 and got["groups"] is True
    for bad, match in (("u0.5+round8+widths12-16-28", "round<r> rounds the widths the path chose"),
                       ("u0.5+round1", r"needs an integer r >= 2 after 'round'"),
                       ("u0.5+roundx", r"needs an integer r >= 2 after 'round'")):
        with pytest.raises(ValueError, match=match):
            parity.parse_recipe(bad)
    for bad in ("fast", "lam", "lamx", "ft", "paper+", "u", "ux", "u0", "u1.5", "w", "w0", "w2",
                "widths12-16", "widths12-0-28", "widths1-2-x"):
        with pytest.raises(ValueError, match="(?i)recipe token"):
            parity.parse_recipe(bad)


def test_resnet20_takes_fashion_mnist_images():
    model = parity.build("resnet20", 0)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_build_seeds_only_when_asked():
    """θ₀ is seeded; the controls' builds are not (they draw after their own seed)."""
    import numpy as np

    a = [keras.ops.convert_to_numpy(w) for w in parity.build("fmnist", 0).weights]
    b = [keras.ops.convert_to_numpy(w) for w in parity.build("fmnist", 0).weights]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    keras.utils.set_random_seed(1)
    c = [keras.ops.convert_to_numpy(w) for w in parity.build("fmnist").weights]
    assert not np.array_equal(a[0], c[0])


def test_each_model_and_budget_has_its_own_report():
    names = {(m, e): os.path.basename(parity_report.default_out(m, e))
             for m in ("fmnist", "resnet20") for e in (3, 10)}
    assert names == {("fmnist", 3): "PARITY.md", ("resnet20", 3): "PARITY_RESNET20.md",
                     ("fmnist", 10): "PARITY_E10.md", ("resnet20", 10): "PARITY_RESNET20_E10.md"}


def _fake_run(acc, layers):
    kept = sum(v[0] for v in layers.values())
    return {"w_accuracy": acc, "w_star_accuracy": acc, "filters_kept": kept, "filters_total": 112,
            "weight_fraction": 0.3, "layers": layers, "wall_s": 1.0}


def test_random_units_run_retrains_as_many_whole_filters(tmp_path):
    import numpy as np

    from tf_dessilbi import masks as masks_lib

    model = parity.build("fmnist", 0)
    weights = {}
    for layer, keep in (("conv1", [0, 3, 5]), ("conv2", list(range(10))), ("conv3", [7, 8])):
        kernel = model.get_layer(layer).kernel
        m = np.zeros(tuple(kernel.shape), bool)
        m[..., keep] = True
        weights[f"{layer}/kernel"] = m
    mask = masks_lib.Mask(weights)
    mask.save(str(tmp_path / "support.npz"))
    result = parity_tickets.random_units_run("fmnist", 0, 1, str(tmp_path), "support.npz", limit=256)
    assert result["accuracy"] is not None and not result["empty_layers"]
    assert result["weights_kept"] == mask.weights_kept  # whole filters, as many per layer
    np.savez(str(tmp_path / "w.npz"), *[np.zeros(w.shape, "float32") for w in model.weights[:-1]])
    with pytest.raises(ValueError, match="do not fit"):  # rewind weights of another model
        parity_tickets.random_units_run("fmnist", 0, 2, str(tmp_path), "support.npz", 256, 1, "w.npz")
    with pytest.raises(ValueError, match="rewind_epoch"):
        parity_tickets.ticket_run("fmnist", 0, 2, str(tmp_path), "support.npz", 0.9, 256, 1, None)
    with pytest.raises(ValueError, match="rewind_epoch"):  # the control checks it too
        parity_tickets.random_units_run("fmnist", 0, 2, str(tmp_path), "support.npz", 256, 1, None)


def test_a_rewound_run_continues_the_protocol_s_schedule_and_batches():
    """From the end of epoch R: the learning rate of step s is the protocol's at s + R·steps,
    and the batches are those of epochs R + 1 … E."""
    import numpy as np

    from bench import protocol

    spe, epochs = protocol.STEPS_PER_EPOCH, 10
    for rewind in (1, 3):
        schedule = protocol.lr_schedule(spe, epochs, start_epoch=rewind)
        for step in (0, 1, 250, (epochs - rewind) * spe - 1, (epochs - rewind) * spe):
            assert float(schedule(step)) == pytest.approx(protocol.lr_at(step + rewind * spe, spe, epochs),
                                                          rel=1e-5, abs=1e-7)
    for bad in (-1, epochs):
        with pytest.raises(ValueError, match="start_epoch"):
            protocol.lr_schedule(spe, epochs, start_epoch=bad)
    data = protocol.load_data(0, 3, train_limit=512, test_limit=64)
    train, train_epochs, make_optimizer = parity_tickets._budget(data, 3, 2)
    assert train_epochs == 1
    first = next(iter(train))[1].numpy()
    expected = data.y_train[protocol.epoch_order(0, 2, 512)[:protocol.BATCH_SIZE]]
    np.testing.assert_array_equal(first, expected)  # epoch 3's first batch
    assert float(make_optimizer().learning_rate) == pytest.approx(protocol.lr_at(2 * 4, 4, 3), rel=1e-5)
    with pytest.raises(ValueError, match="rewind_epoch"):
        parity_tickets._budget(data, 3, 3)
    with pytest.raises(ValueError, match="epoch"):
        data.train_from(3)


def test_a_support_seen_again_is_not_retrained(tmp_path):
    """supp Γ frozen by a W* fine-tune: the later step's ticket is reused, marked, never retrained."""
    import argparse

    import numpy as np

    from tf_dessilbi import masks as masks_lib

    kernel = np.zeros((3, 4), bool)
    kernel[:, 1] = True
    masks_lib.Mask({"conv1/kernel": kernel}).save(str(tmp_path / "a.npz"))
    masks_lib.Mask({"conv1/kernel": kernel.copy()}).save(str(tmp_path / "b.npz"))  # equal, another file
    other = kernel.copy()
    other[0, 2] = True
    masks_lib.Mask({"conv1/kernel": other}).save(str(tmp_path / "c.npz"))
    load = lambda name: masks_lib.Mask.load(str(tmp_path / name))  # noqa: E731
    assert load("a.npz") == load("b.npz") != load("c.npz")
    # The same entries under another layer name are another mask.
    masks_lib.Mask({"conv2/kernel": kernel}).save(str(tmp_path / "d.npz"))
    assert load("d.npz") != load("a.npz")

    auto = {"supports": {"6": {"file": "a.npz"}, "4": {"file": "b.npz"}, "2": {"file": "c.npz"}},
            "w_accuracy": 0.9}
    args = argparse.Namespace(model="fmnist", epochs=2, limit=0, random_units=False)
    trained_names = []

    def cached(work, name, fn):
        trained_names.append(name)
        return {"sanity": None, "verdict": f"trained {name}"}

    trained = []
    got = {step: parity_tickets.ticket_at(args, str(tmp_path), "e2", 0, step, 0, None, auto, "_r", cached, trained)
           for step in (6, 4, 2)}
    assert trained_names == ["ticket_fmnist_e2_s0_step6_r", "ticket_fmnist_e2_s0_step2_r"]
    assert got[4] == dict(got[6], same_support_as=6)
    assert "same_support_as" not in got[6] and "same_support_as" not in got[2]
    row = parity_report._same(got[4])
    assert row == ", the same support as step 6 (not retrained)" and parity_report._same(got[2]) == ""


def test_support_vs_init_overlap_and_rank_correlations():
    """bench/support_vs_init.py's per-layer statistics against a hand-made layer."""
    import numpy as np

    from bench import support_vs_init

    def spearman(a, b):  # distinct values: 1 − 6 Σ d² / (n (n² − 1))
        d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
        return 1 - 6 * np.sum(d ** 2) / (len(a) * (len(a) ** 2 - 1))

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(3, 3, 2, 6))
    directions /= np.sqrt((directions.reshape(-1, 6) ** 2).sum(0))
    w0 = directions * np.array([1.0, 6.0, 2.0, 5.0, 3.0, 4.0])  # top-3 initial norms: units 1, 3, 5
    v = directions * np.array([0.1, 0.9, 0.3, 0.2, 0.8, 0.7])
    w = directions * np.array([2.0, 7.0, 1.0, 3.0, 6.0, 5.0])
    support = np.zeros_like(w0, dtype=bool)
    support[..., [1, 4, 5]] = True  # the 3 of largest ‖V_g‖: 2 of them among θ₀'s top 3
    got = support_vs_init.layer_stats(w0, w, v, support)
    assert got["kept"] == 3 and got["units"] == 6 and got["chance"] == 0.5
    assert got["overlap_init_topk"] == pytest.approx(2 / 3)
    v_norms, w0_norms, w_norms = [0.1, 0.9, 0.3, 0.2, 0.8, 0.7], [1, 6, 2, 5, 3, 4], [2, 7, 1, 3, 6, 5]
    assert got["spearman_v_init"] == pytest.approx(spearman(v_norms, w0_norms))  # 0.6
    assert got["spearman_v_now"] == pytest.approx(spearman(v_norms, w_norms))
    np.testing.assert_allclose(support_vs_init.unit_norms(w0), w0_norms)


def test_path_recipe_drops_only_the_fine_tune():
    from bench.parity_recipe import parse_recipe, path_recipe

    cases = {
        "init+mu40+lam0.25+u0.5+trim": "init+mu40+lam0.25",
        "unitinit+lam0.45+u0.5+trim+groups": "unitinit+lam0.45",  # unitinit is no fraction
        "unitinit+joint+lam0.45+u0.5+trim+groups+gmax+round8": "unitinit+joint+lam0.45",
        "init+ft9+lam0.5": "init+lam0.5",
        "steady+cft2+lam2": "steady+lam2",
        "init+lam1+w0.1": "init+lam1",
        "init+lam0.5+u0.5+widths12-16-28": "init+lam0.5",
        "u0.5": "paper",
        "init+mu40+lam0.25": "init+mu40+lam0.25",  # nothing to drop
    }
    for spec, path in cases.items():
        assert path_recipe(spec) == path, spec
        settings = parse_recipe(path_recipe(spec))  # the path: the same λ, μ, scaling, no fine-tune
        assert settings["hparams"] == parse_recipe(spec)["hparams"]
        assert settings["finetune_epochs"] == 0 and settings["units_fraction"] is None
        assert settings["weights_fraction"] is None and not settings["trim"]
    with pytest.raises(ValueError, match="wat"):
        path_recipe("init+wat")
    # Every setting a recipe has is the path's or the fine-tune's: a new one must be sorted in.
    from bench import parity_recipe

    assert set(parse_recipe("paper")) == {"hparams", "steady", "joint", *parity_recipe._FINETUNE_SETTINGS}

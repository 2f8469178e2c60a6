"""bench/parity.py: structures as the CLI's, and a tiny run end to end."""

import os
import subprocess
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


@pytest.mark.slow
def test_a_tiny_parity_run_reports_every_structure_and_the_tickets(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_DESSILBI_BENCH_WORK=str(tmp_path))
    out = tmp_path / "PARITY.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.parity", "--epochs", "2", "--limit", "512", "--seeds", "0",
         "--ticket-fractions", "0.5", "--recipes", "init+ft1+lam0.5", "init+lam0.5", "--rewind-epochs", "0", "1",
         "--work", str(tmp_path / "w" / "parity"), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for structure in parity.STRUCTURES:
        for recipe in ("init+ft1+lam0.5", "init+lam0.5"):
            assert f"| DessiLBI {structure}, {recipe} |" in text
            assert f"| {structure} | {recipe} |" in text  # the tuning record
        # init+lam0.5 is init+ft1+lam0.5's path: the fork took the same 4 steps before its fine-tune.
        assert (f"| {structure}: dense W of init+lam0.5, W* of init+ft1+lam0.5 | 1 |" in text
                and "seed 0: fine-tune from step 4; train loss of steps 1–4 identical |" in text)
    assert "| 0 | step 4 (50 % of the budget) | θ₀ |" in text
    assert "| 0 | step 4 (50 % of the budget) | W at the end of epoch 1 (rewound) |" in text
    work = tmp_path / "w" / "parity"
    assert (work / "support_fmnist_auto_init+ft1+lam0.5_e2_s0_step4.npz").exists()
    assert (work / "weights_fmnist_auto_init+ft1+lam0.5_e2_s0_step4.npz").exists()  # W after epoch 1
    import json

    rewound = json.loads((work / "ticket_fmnist_e2_n512_s0_step4_init+ft1+lam0.5_rw1.json").read_text())
    assert rewound["rewind_epoch"] == 1 and rewound["trained_steps"] == 4  # the remaining epoch
    # A rerun reads every run back (the cached ticket run with its supports is kept).
    again = subprocess.run(proc.args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dessilbi auto" not in again.stderr  # nothing was retrained
    rerun = out.read_text()
    assert rerun.split("Protocol:")[1].split("Wall clock")[0] == text.split("Protocol:")[1].split("Wall clock")[0]
    assert rerun.count("    python -m bench.parity --epochs 2") == 1  # the command, listed once


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


def test_support_widths_and_the_from_scratch_column():
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [12, 32, 0, 0], "conv3": [20, 64, 0, 0]}
    assert parity.support_widths({"layers": layers}) == [16, 12, 20]
    assert parity.support_widths({"layers": dict(layers, conv2=[0, 32, 0, 0])}) == []
    args = argparse.Namespace(model="fmnist", epochs=3, seeds=[0, 1], recipes=["r"],
                              structures=["filter"], command="x", work="/nonexistent", limit=0,
                              ticket_structure="filter", ticket_recipe="r")
    results = {"seeds": {
        "0": {"sgd": {"accuracy": 0.92, "wall_s": 1.0}, "filter:r": _fake_run(0.91, layers),
              "scratch:filter:r": {"accuracy": 0.905}, "tickets": {}},
        "1": {"sgd": {"accuracy": 0.93, "wall_s": 1.0}, "filter:r": _fake_run(0.92, layers),
              "scratch:filter:r": {"accuracy": 0.915}, "tickets": {}}}}
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| DessiLBI filter, r |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3] == "91.50 ± 0.71" and cells[4] == "-1.00"  # W vs the SGD of the same seeds
    assert cells[9] == "91.00 ± 0.71"  # the same widths trained from scratch, both seeds
    assert cells[8] == "48/112 (57 % out)"
    assert cells[10] == ("does not hold (W* ≥ SGD − 0.5 with ≥ 50 % out: no; "
                         "dense W ≥ SGD − 0.3: no)")
    del results["seeds"]["1"]["scratch:filter:r"]
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| DessiLBI filter, r |"))
    assert "90.50 (1 of 2 seeds)" in row
    assert "conv filters exported" not in parity_report.to_markdown(results, args)
    results["seeds"]["1"]["filter:r"]["export"] = {
        "params": [1000, 250], "macs": [4000, 2000], "conv_units": [112, 60]}
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| filter, r | 1 |"))
    assert row == "| filter, r | 1 | 48/112 | 60/112 | 0.25× (250) | 0.50× |"


def test_the_tuning_record_says_where_the_support_was_fixed():
    assert parity_report._fixed_from({"recipe": "init+ft2+lam0.5", "epochs": 3, "steps": 1404}) == "step 468 (33 %)"
    assert parity_report._fixed_from({"recipe": "init+lam0.5+u0.49", "epochs": 10, "steps": 4680,
                               "finetune_from_step": 502}) == "step 502 (11 %)"
    assert parity_report._fixed_from({"recipe": "paper", "epochs": 3, "steps": 1404}) == "— (no fine-tune)"
    waited = {"recipe": "init+lam0.5+u0.49", "epochs": 10, "steps": 4680, "finetune_from_step": 700,
              "finetune_waited_for": ["fc1/kernel"], "finetune_empty_at_start": []}
    assert parity_report._fixed_from(waited) == "step 700 (15 %), after waiting for fc1 to keep a unit"
    forced = dict(waited, finetune_waited_for=[], finetune_empty_at_start=["fc1/kernel", "conv3/kernel"])
    assert parity_report._fixed_from(forced) == "step 700 (15 %); empty then: fc1, conv3"
    trimmed = dict(waited, finetune_waited_for=[], finetune_trimmed={"conv2/kernel": [3], "conv3/kernel": [1, 9]})
    assert parity_report._fixed_from(trimmed) == "step 700 (15 %), 3 units trimmed"
    one = dict(trimmed, finetune_trimmed={"conv2/kernel": [3]})
    assert parity_report._fixed_from(one) == "step 700 (15 %), 1 unit trimmed"


def test_the_random_filters_control_is_reported_beside_ma_et_al_s_two():
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [12, 32, 0, 0], "conv3": [20, 64, 0, 0]}
    args = argparse.Namespace(model="fmnist", epochs=10, seeds=[0, 1], recipes=["r"],
                              structures=["filter"], command="x", work="/nonexistent", limit=0,
                              ticket_structure="filter", ticket_recipe="r")

    def ticket(acc, reinit, random_mask, units):
        sanity = {"ticket_accuracy": acc, "dense_accuracy": 0.927, "reinit_accuracy": reinit,
                  "random_mask_accuracy": random_mask, "matches_dense": acc >= 0.922}
        out = {"fraction": 0.3, "weights_kept": 30, "weights_total": 100, "sanity": sanity,
               "verdict": "winning ticket: no (...)", "winning": False, "empty_layers": []}
        return out if units is None else dict(out, random_units_accuracy=units)

    results = {"seeds": {
        "0": {"sgd": {"accuracy": 0.93}, "filter:r": _fake_run(0.927, layers),
              "tickets": {"1404": ticket(0.925, 0.924, 0.928, 0.921)}},
        "1": {"sgd": {"accuracy": 0.93}, "filter:r": _fake_run(0.927, layers),
              "tickets": {"1404": ticket(0.925, 0.926, 0.928, 0.921)}}}}
    text = parity_report.to_markdown(results, args)
    rows = [line for line in text.splitlines() if line.startswith("| 0 | step 1404")]
    assert rows and rows[0].endswith("| 92.10 | winning ticket: no (...) | +0.40 pts |")
    # seed 0 matches dense and beats the re-init and the random filters; seed 1 loses to its re-init
    assert "random filters): 1/2" in text
    del results["seeds"]["1"]["tickets"]["1404"]["random_units_accuracy"]
    assert "random filters): 1/1" in parity_report.to_markdown(results, args)
    # A rewound ticket has a row and a verdict line of its own.
    results["seeds"]["0"]["tickets"]["1404_rw1"] = dict(ticket(0.93, 0.92, 0.925, 0.921), winning=True)
    text = parity_report.to_markdown(results, args)
    assert "| 0 | step 1404 (30 % of the budget) | W at the end of epoch 1 (rewound) |" in text
    assert "- step 1404 (30 %), from θ₀: wins on 0/2 seeds" in text
    assert "- step 1404 (30 %), from W at the end of epoch 1 (rewound): wins on 1/1 seeds" in text


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


def test_the_report_lists_every_command_that_trained_into_the_cache(tmp_path):
    import argparse

    def args(command, render=False):
        return argparse.Namespace(model="fmnist", epochs=10, limit=0, work=str(tmp_path),
                                  command=command, render=render)

    parity_report.remember_command(args("python -m bench.parity --recipes a"))
    parity_report.remember_command(args("python -m bench.parity --recipes b"))
    parity_report.remember_command(args("python -m bench.parity --recipes a"))  # once
    parity_report.remember_command(args("python -m bench.parity --render", render=True))  # trains nothing
    assert parity_report._commands(args("python -m bench.parity --render")) == [
        "python -m bench.parity --recipes a", "python -m bench.parity --recipes b",
        "python -m bench.parity --render"]


def test_narrow_widths_from_scratch_get_their_own_table():
    import argparse

    args = argparse.Namespace(model="fmnist", epochs=3, seeds=[0, 1], recipes=[], structures=[],
                              command="x", work="/nonexistent", limit=0, scratch_widths=["12-22-22"],
                              ticket_structure="filter", ticket_recipe="r")
    results = {"seeds": {
        "0": {"sgd": {"accuracy": 0.92}, "widths:12-22-22": {"accuracy": 0.915}, "tickets": {}},
        "1": {"sgd": {"accuracy": 0.93}, "widths:12-22-22": {"accuracy": 0.925}, "tickets": {}}}}
    text = parity_report.to_markdown(results, args)
    assert "| 12/22/22 | 56/112 | 2 | 92.00 ± 0.71 | -0.50 |" in text
    with pytest.raises(SystemExit):
        parity.main(["--scratch-widths", "12-22", "--render"])


def test_the_verdict_is_not_decided_by_float_noise():
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [12, 32, 0, 0], "conv3": [20, 64, 0, 0]}
    args = argparse.Namespace(model="fmnist", epochs=10, seeds=[0, 1, 2], recipes=["r"],
                              structures=["filter"], command="x", work="/nonexistent", limit=0,
                              ticket_structure="filter", ticket_recipe="r")
    sgd, dessilbi = (0.9301, 0.9318, 0.9318), (0.9278, 0.9290, 0.9279)  # exactly −0.30 pt
    results = {"seeds": {str(i): {"sgd": {"accuracy": a}, "filter:r": _fake_run(b, layers),
                                  "tickets": {}} for i, (a, b) in enumerate(zip(sgd, dessilbi))}}
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| DessiLBI filter, r |"))
    assert "dense W ≥ SGD − 0.3: yes" in row
    # As Keras reports them: float32 values (0.9301 → 0.930100023…), the run of 2026-12-06.
    import numpy as np

    sgd, dessilbi = (0.9301, 0.9318, 0.9318), (0.9299, 0.9268, 0.9280)
    f32 = lambda a: float(np.float32(a))  # noqa: E731
    results = {"seeds": {str(i): {"sgd": {"accuracy": f32(a)}, "filter:r": _fake_run(f32(b), layers),
                                  "tickets": {}} for i, (a, b) in enumerate(zip(sgd, dessilbi))}}
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| DessiLBI filter, r |"))
    assert "dense W ≥ SGD − 0.3: yes" in row
    results["seeds"]["1"]["filter:r"]["w_accuracy"] = f32(0.9267)  # one image fewer: below the line
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| DessiLBI filter, r |"))
    assert "dense W ≥ SGD − 0.3: no" in row



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


def test_extra_seeds_get_a_row_of_their_own_beside_the_protocols_and_a_per_seed_table():
    """Seeds beyond the protocol's 0, 1, 2: the verdict over all, and over the protocol's alone."""
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [16, 32, 0, 0], "conv3": [24, 64, 0, 0]}
    wide = dict(layers, conv3=[25, 64, 0, 0])  # 57 filters: under 50 % out
    args = argparse.Namespace(model="fmnist", epochs=10, seeds=[0, 1, 2, 3], recipes=["r"],
                              structures=["filter"], command="x", work="/nonexistent", limit=0,
                              ticket_structure="filter", ticket_recipe="r")
    accs = {0: (0.9300, 0.9280), 1: (0.9310, 0.9280), 2: (0.9320, 0.9280), 3: (0.9300, 0.9200)}
    results = {"seeds": {str(s): {"sgd": {"accuracy": sgd}, "tickets": {},
                                  "filter:r": _fake_run(acc, wide if s == 3 else layers)}
                         for s, (sgd, acc) in accs.items()}}
    text = parity_report.to_markdown(results, args)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")]
            for line in text.splitlines() if line.startswith("| DessiLBI filter, r")}
    everything, protocol_only = rows["DessiLBI filter, r"], rows["DessiLBI filter, r (seeds 0, 1, 2: the protocol's)"]
    assert everything[2] == "4" and everything[4] == "-0.48"  # (92.8·3 + 92.0)/4 − 93.075
    assert everything[8] == "56–57/112 (49–50 % out)" and everything[10].startswith("does not hold")
    assert protocol_only[2] == "3" and protocol_only[4] == "-0.30"  # 92.80 − 93.10: at the line
    assert protocol_only[8] == "56/112 (50 % out)"
    assert protocol_only[10] == ("holds (W* ≥ SGD − 0.5 with ≥ 50 % out: yes; dense W ≥ SGD − 0.3: yes)")
    assert "| 3 | 93.00 | 92.00 / 92.00 / 57 |" in text
    assert "| 0 | 93.00 | 92.80 / 92.80 / 56 |" in text
    del results["seeds"]["3"]["filter:r"]  # a run on the protocol's seeds only: no second row
    assert sum(line.startswith("| DessiLBI filter, r") for line in
               parity_report.to_markdown(results, args).splitlines()) == 1
    args.seeds = [0, 1, 2]  # the protocol's seeds only: one row, as before
    assert sum(line.startswith("| DessiLBI filter, r") for line in
               parity_report.to_markdown(results, args).splitlines()) == 1


def test_a_resnet_run_gets_its_filters_per_layer_and_seed():
    """More than four convs: the recipe table has no room, so a table lists them, the stem first."""
    import argparse

    def resnet_layers(b_kept):
        return {"s1b1_a_conv": [16, 16, 0, 0], "s1b1_b_conv": [b_kept, 16, 0, 0],
                "s2b1_a_conv": [20, 32, 0, 0], "s2b1_proj_conv": [1, 32, 0, 0],
                "s3b1_a_conv": [33, 64, 0, 0], "stem_conv": [7, 16, 0, 0]}

    args = argparse.Namespace(model="resnet20", epochs=3, seeds=[0, 1], recipes=["r"],
                              structures=["filter"], command="x", work="/nonexistent", limit=0,
                              ticket_structure="filter", ticket_recipe="r")
    results = {"seeds": {"0": {"sgd": {"accuracy": 0.92}, "tickets": {}, "filter:r": _fake_run(0.91, resnet_layers(9))},
                         "1": {"sgd": {"accuracy": 0.92}, "tickets": {}, "filter:r": _fake_run(0.91, resnet_layers(12))}}}
    lines = parity_report.to_markdown(results, args).splitlines()
    start = lines.index("| layer | filters | seed 0 | seed 1 |")
    rows = lines[start + 2:start + 8]
    assert rows[0] == "| stem_conv | 16 | 7 | 7 |"
    assert "| s1b1_b_conv | 16 | 9 | 12 |" in rows and "| s2b1_proj_conv | 32 | 1 | 1 |" in rows
    args.model = "fmnist"  # three convs: listed in the recipe table, no table of their own
    fmnist = {"conv1": [16, 16, 0, 0], "conv2": [16, 32, 0, 0], "conv3": [24, 64, 0, 0]}
    for seed in ("0", "1"):
        results["seeds"][seed]["filter:r"] = _fake_run(0.91, fmnist)
    assert "| layer | filters |" not in parity_report.to_markdown(results, args)


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


def test_dense_w_of_the_path_and_w_star_of_its_fork_share_one_row():
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [16, 32, 0, 0], "conv3": [24, 64, 0, 0]}
    args = argparse.Namespace(model="fmnist", epochs=10, seeds=[0, 1], command="x", limit=0,
                              recipes=["lam1+u0.5+trim", "lam1"], structures=["filter"], work="/nonexistent",
                              ticket_structure="filter", ticket_recipe="lam1")
    loss = [0.6, 0.3, 0.2]

    def seed(sgd, dense, w_star, tuned_loss):
        path = dict(_fake_run(dense, {k: [v[1], *v[1:]] for k, v in layers.items()}), train_loss=loss)
        tuned = dict(_fake_run(w_star, layers), train_loss=tuned_loss, finetune_from_step=479)
        return {"sgd": {"accuracy": sgd}, "filter:lam1": path, "filter:lam1+u0.5+trim": tuned, "tickets": {}}

    results = {"seeds": {"0": seed(0.9300, 0.9290, 0.9260, [0.6, 0.25, 0.2]),
                         "1": seed(0.9320, 0.9320, 0.9280, [0.6, 0.3, 0.2])}}
    text = parity_report.to_markdown(results, args)
    row = next(line for line in text.splitlines() if line.startswith("| filter: dense W of lam1, W* of"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[2] == "2" and cells[4] == "-0.05" and cells[6] == "-0.40"  # 93.05 − 93.10, 92.70 − 93.10
    assert cells[7] == "56/112 (50 % out)"  # W*'s support, not the path's 112
    assert cells[8] == "holds (W* ≥ SGD − 0.5 with ≥ 50 % out: yes; dense W ≥ SGD − 0.3: yes)"
    assert cells[9] == ("seed 0: fine-tune from step 479; train loss of epoch 1 identical; "
                        "seed 1: fine-tune from step 479; train loss of epoch 1 identical")
    # Each run's own row keeps its own verdict: the path alone keeps every filter.
    own = next(line for line in text.splitlines() if line.startswith("| DessiLBI filter, lam1 |"))
    assert "W* ≥ SGD − 0.5 with ≥ 50 % out: no" in own
    results["seeds"]["1"]["filter:lam1"]["w_accuracy"] = 0.9268  # dense W now 92.79: −0.31
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| filter: dense W of lam1"))
    assert "dense W ≥ SGD − 0.3: no" in row
    results["seeds"]["1"]["filter:lam1+u0.5+trim"]["train_loss"] = [0.6000001, 0.3, 0.2]
    row = next(line for line in parity_report.to_markdown(results, args).splitlines()
               if line.startswith("| filter: dense W of lam1"))
    assert "| not one path: the runs differ before the fork on seed 1 |" in row  # no verdict
    assert "seed 1: fine-tune from step 479; train loss of epoch 1 differs" in row
    args.recipes = ["lam1+u0.5+trim"]  # the path did not run: no pair
    assert "dense W of lam1" not in parity_report.to_markdown(results, args)
    assert parity_report._shared_prefix({"train_loss": loss}, {"finetune_from_step": 100}, 468) == (
        "fine-tune from step 100, inside epoch 1: not checked")
    assert parity_report._shared_prefix({"train_loss": loss}, {"train_loss": loss}, 468) == "no fine-tune ran"
    assert parity_report._shared_prefix({"train_loss": loss}, {"train_loss": loss, "finetune_from_step": 1000},
                                        468) == "fine-tune from step 1000; train loss of epoch 1–2 identical"
    steps = [0.9, 0.8, 0.7, 0.65]  # runs that record the loss of every step: compared up to the fork
    assert parity_report._shared_prefix({"step_loss": steps}, {"step_loss": steps[:3] + [0.5],
                                                               "finetune_from_step": 3}, 468) == (
        "fine-tune from step 3; train loss of steps 1–3 identical")
    assert parity_report._shared_prefix({"step_loss": steps}, {"step_loss": [0.9, 0.81, 0.7, 0.5],
                                                               "finetune_from_step": 3}, 468) == (
        "fine-tune from step 3; train loss of steps 1–3 differs")


def test_the_paired_row_over_extra_seeds_comes_with_the_protocol_s_seeds_alone():
    import argparse

    layers = {"conv1": [16, 16, 144, 144], "conv2": [16, 32, 0, 0], "conv3": [24, 64, 0, 0]}
    args = argparse.Namespace(model="fmnist", epochs=10, seeds=[0, 1, 2, 3], command="x", limit=0,
                              recipes=["lam1+u0.5+trim", "lam1"], structures=["filter"], work="/nonexistent",
                              ticket_structure="filter", ticket_recipe="lam1")
    accs = {0: (0.9300, 0.9290, 0.9260), 1: (0.9300, 0.9290, 0.9260), 2: (0.9300, 0.9290, 0.9260),
            3: (0.9300, 0.9200, 0.9100)}  # seed 3 pulls both lines under
    results = {"seeds": {str(seed): {"sgd": {"accuracy": sgd}, "tickets": {},
                                     "filter:lam1": _fake_run(dense, layers),
                                     "filter:lam1+u0.5+trim": _fake_run(w_star, layers)}
                         for seed, (sgd, dense, w_star) in accs.items()}}
    rows = [[c.strip() for c in line.split("|")] for line in parity_report.to_markdown(results, args).splitlines()
            if line.startswith("| filter: dense W of lam1")]
    assert [r[1].endswith("(seeds 0, 1, 2: the protocol's)") for r in rows] == [False, True]
    assert rows[0][2] == "4" and rows[0][4] == "-0.32" and rows[0][6] == "-0.80"
    assert rows[0][8].startswith("does not hold")
    assert rows[1][2] == "3" and rows[1][4] == "-0.10" and rows[1][6] == "-0.40"
    assert rows[1][8].startswith("holds")

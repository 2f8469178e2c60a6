"""TicketSearch: rounds, reset, rewinding to round 0 epoch k, the ticket."""

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi.procedures.ticket_search import TicketSearch


def _builder():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu", name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _data(n=64):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 8).astype("float32")
    return x, (x[:, :3].argmax(1)).astype("int32")


class _Recorder(keras.callbacks.Callback):
    """Weights (gates excluded) at every fit start and epoch start."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def _snapshot(self):
        gate_ids = {id(v) for g in tf_dessilbi.gated_layers(self.model) for v in g.weights if "gate" in v.name}
        return [ops.convert_to_numpy(v).copy() for v in self.model.weights if id(v) not in gate_ids]

    def on_train_begin(self, logs=None):
        self.fits.append({"start": self._snapshot(), "epochs": {},
                          "scores": [ops.convert_to_numpy(g.gate_scores).copy()
                                     for g in tf_dessilbi.gated_layers(self.model)],
                          "beta": [float(ops.convert_to_numpy(g.beta)) for g in tf_dessilbi.gated_layers(self.model)]})

    def on_epoch_begin(self, epoch, logs=None):
        self.fits[-1]["epochs"][epoch] = self._snapshot()

    def on_train_end(self, logs=None):
        gates = tf_dessilbi.gated_layers(self.model)
        self.fits[-1]["end_scores"] = [ops.convert_to_numpy(g.gate_scores).copy() for g in gates]
        self.fits[-1]["end_beta"] = [float(ops.convert_to_numpy(g.beta)) for g in gates]


def _search(**kwargs):
    args = dict(rounds=2, epochs_per_round=3, rewind_epoch=1, final_beta=50.0, penalty=1e-3, ticket_epochs=2)
    args.update(kwargs)
    return TicketSearch(_builder, lambda: keras.optimizers.SGD(0.1, momentum=0.9), **args)


def test_ticket_starts_from_the_round0_rewind_weights_exactly():
    recorder = _Recorder()
    x, y = _data()
    search = _search()
    result = search.run((x, y), val_ds=(x, y), callbacks=[recorder], batch_size=16)
    assert len(recorder.fits) == 3  # 2 rounds + the ticket
    round0_epoch1 = recorder.fits[0]["epochs"][1]
    ticket_start = recorder.fits[2]["start"]
    assert len(ticket_start) == len(round0_epoch1) == 4
    for got, want, kept in zip(ticket_start, round0_epoch1, search.rewind_weights):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(kept, want)
    # The weights did move after epoch 1 (otherwise the test proves nothing).
    assert any(not np.array_equal(a, b) for a, b in zip(recorder.fits[1]["start"], round0_epoch1))

    # Ticket mode, masks as found, gate scores frozen while the ticket trains.
    gates = tf_dessilbi.gated_layers(result.model)
    assert all(float(ops.convert_to_numpy(g.ticket)) == 1.0 for g in gates)
    for gate, before in zip(gates, recorder.fits[2]["scores"]):
        np.testing.assert_array_equal(ops.convert_to_numpy(gate.gate_scores), before)
        np.testing.assert_array_equal(result.masks[gate.layer.name], np.broadcast_to(before > 0, gate.kept_mask().shape))
    assert [r["round"] for r in result.rounds] == [0, 1]
    assert {"weight_fraction", "val_accuracy_soft", "val_accuracy_hard"} <= set(result.rounds[0])
    assert "accuracy" in result.ticket_metrics and len(result.ticket_history["loss"]) == 2


def test_gates_are_reset_between_rounds():
    recorder = _Recorder()
    x, y = _data(32)
    search = _search(rounds=2, epochs_per_round=2, rewind_epoch=0, ticket_epochs=1)
    search.run((x, y), callbacks=[recorder], batch_size=16)
    # Round 1 starts from min(β_final·s, s₀) of round 0's final scores, β = 1.
    start_of_round1 = recorder.fits[1]["scores"]
    end_scores, end_beta = recorder.fits[0]["end_scores"], recorder.fits[0]["end_beta"]
    assert all(b > 1.0 for b in end_beta)  # β was annealed: forgetting it would change s
    assert any(np.any(s > 0) for s in end_scores) and any(np.any(s < 0) for s in end_scores)
    for got, s, beta in zip(start_of_round1, end_scores, end_beta):
        np.testing.assert_allclose(got, np.minimum(beta * s, 0.0), rtol=1e-6, atol=1e-7)
    assert recorder.fits[1]["beta"] == [1.0] * len(end_beta)  # β ← 1 for round 1


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(rounds=0), ValueError, r"`rounds` must be >= 1. Received: rounds=0"),
        (dict(penalty=-1.0), ValueError, r"`penalty` must be >= 0. Received: penalty=-1"),
        (dict(granularity="row"), ValueError, r"`granularity` must be one of \('weight', 'filter', 'neuron'\). Received: granularity='row'"),
        (dict(rewind_epoch=5), ValueError, r"`rewind_epoch` must be <= epochs_per_round=3. Received: rewind_epoch=5"),
        (dict(rewind_epoch=-1), ValueError, r"`rewind_epoch` must be >= 0. Received: rewind_epoch=-1"),
        (dict(final_beta=0.1), ValueError, r"`final_beta` must be a number >= 1. Received: final_beta=0.1"),
        (dict(per_step="yes"), TypeError, r"`per_step` must be a bool. Received: per_step='yes'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _search(**kwargs)


def test_optimizer_instance_is_refused():
    with pytest.raises(TypeError, match=r"`optimizer` must be a factory"):
        TicketSearch(_builder, keras.optimizers.SGD(0.1))


@pytest.mark.slow
@pytest.mark.sweep  # CI's second step (make test-sweep)
def test_real_search_on_fashion_mnist_removes_weights():
    from tf_dessilbi.training.data import fashion_mnist_datasets
    from tf_dessilbi.models import fmnist_cnn_s

    keras.utils.set_random_seed(0)
    train, test = fashion_mnist_datasets(128, train_limit=6400, test_limit=2000)  # 50 steps/epoch
    search = TicketSearch(
        fmnist_cnn_s,
        lambda: keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True),
        rounds=2, epochs_per_round=2, rewind_epoch=1, ticket_epochs=1,
    )
    result = search.run(train, test)  # 200 search steps + 50 ticket steps
    assert result.weight_fraction < 0.7
    assert result.rounds[1]["weight_fraction"] < result.rounds[0]["weight_fraction"]
    assert result.ticket_metrics["accuracy"] > 0.6  # far above chance (0.1)
    report = tf_dessilbi.sparsity_report(result.model)
    assert report.weights_kept == sum(int(m.sum()) for m in result.masks.values())

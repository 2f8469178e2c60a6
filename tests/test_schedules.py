"""β schedules: values of the geometric paths, per step and per epoch."""

import pytest

from tf_dessilbi.gates import schedules


@pytest.mark.parametrize("final_beta,epochs", [(200.0, 3), (50.0, 5), (10.0, 2)])
def test_per_epoch_is_geometric_from_one_to_final(final_beta, epochs):
    schedule = schedules.per_epoch_beta(final_beta, epochs)
    ratio = final_beta ** (1.0 / (epochs - 1))
    expected = 1.0
    for epoch in range(epochs):
        assert schedule(epoch) == pytest.approx(expected, rel=1e-12)
        expected *= ratio
    assert schedule(epochs + 4) == pytest.approx(final_beta)


@pytest.mark.parametrize("final_beta,epochs,steps", [(200.0, 3, 10), (50.0, 4, 7)])
def test_per_step_follows_the_same_path_and_agrees_at_epoch_starts(final_beta, epochs, steps):
    per_step = schedules.per_step_beta(final_beta, epochs, steps)
    per_epoch = schedules.per_epoch_beta(final_beta, epochs)
    ratio = final_beta ** (1.0 / ((epochs - 1) * steps))
    for step in range((epochs - 1) * steps + 1):
        assert per_step(step) == pytest.approx(ratio**step, rel=1e-9)
    for epoch in range(epochs):
        assert per_step(epoch * steps) == pytest.approx(per_epoch(epoch), rel=1e-9)
    # The last epoch trains at final_beta.
    assert per_step(epochs * steps - 1) == pytest.approx(final_beta)


def test_per_step_with_one_epoch_ramps_over_it():
    schedule = schedules.per_step_beta(100.0, 1, 4)
    assert [schedule(t) for t in range(5)] == pytest.approx([1.0, 100**0.25, 10.0, 100**0.75, 100.0])
    assert schedules.per_epoch_beta(100.0, 1)(0) == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(final_beta=0.5, epochs=3, steps_per_epoch=2), r"`final_beta` must be a number >= 1. Received: final_beta=0.5"),
        (dict(final_beta="200", epochs=3, steps_per_epoch=2), r"`final_beta` must be a number >= 1. Received: final_beta='200'"),
        (dict(final_beta=200.0, epochs=0, steps_per_epoch=2), r"`epochs` must be a positive integer. Received: epochs=0"),
        (dict(final_beta=200.0, epochs=3, steps_per_epoch=2.5), r"`steps_per_epoch` must be a positive integer. Received: steps_per_epoch=2.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.per_step_beta(**kwargs)

"""Mask-method schedules against the equations (Zhu & Gupta, TF-MOT, RigL)."""

import math

import keras
import pytest

from tf_dessilbi.sparse import schedules


def zhu_gupta(t, s_i, s_f, t0, n, dt):
    """s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³, clipped to [t0, t0 + nΔt]."""
    t = min(max(t, t0), t0 + n * dt)
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize("t", [0, 99, 100, 150, 250, 500, 1100, 1200, 5000])
def test_polynomial_decay_is_zhu_gupta(t):
    s = schedules.PolynomialDecay(0.1, 0.9, begin_step=100, end_step=1100, frequency=50)
    should, sparsity = s(t)
    assert sparsity == pytest.approx(zhu_gupta(t, 0.1, 0.9, 100, 20, 50), abs=1e-12)
    assert should == (100 <= t <= 1100 and (t - 100) % 50 == 0)


def test_polynomial_power():
    s = schedules.PolynomialDecay(0.0, 0.8, 0, 10, power=1.0, frequency=1)
    assert s(5)[1] == pytest.approx(0.4)


def test_constant_sparsity_tf_mot_semantics():
    s = schedules.ConstantSparsity(0.7, begin_step=10, end_step=-1, frequency=5)
    assert s(9) == (False, 0.7) and s(10) == (True, 0.7) and s(12)[0] is False
    assert s(10**6)[0] is True  # end_step -1: no end
    s = schedules.ConstantSparsity(0.7, begin_step=10, end_step=20, frequency=5)
    assert s(20)[0] and not s(25)[0]


def test_update_schedule_and_cosine():
    u = schedules.UpdateSchedule(delta_t=100, end_step=750, begin_step=50)
    assert [t for t in range(0, 1000) if u(t)] == [50, 150, 250, 350, 450, 550, 650, 750]
    f = schedules.CosineDropFraction(0.3, end_step=750)
    for t in (0, 100, 375, 700, 750):
        assert f(t) == pytest.approx(0.3 / 2 * (1 + math.cos(math.pi * t / 750)))
    assert f(0) == pytest.approx(0.3) and f(375) == pytest.approx(0.15) and f(751) == 0.0
    assert schedules.ConstantDropFraction(0.2)(12345) == 0.2


@pytest.mark.parametrize("obj", [
    schedules.ConstantSparsity(0.5, 3, 90, 7),
    schedules.PolynomialDecay(0.1, 0.95, 10, 200, 2.0, 10),
    schedules.UpdateSchedule(10, 300, 5),
    schedules.CosineDropFraction(0.4, 123),
    schedules.ConstantDropFraction(0.1),
])
def test_serialization_round_trip(obj):
    again = type(obj).from_config(obj.get_config())
    assert again.get_config() == obj.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj) and restored.get_config() == obj.get_config()
    for t in (0, 5, 10, 77, 200, 400):
        assert restored(t) == obj(t)


@pytest.mark.parametrize("make, match", [
    (lambda: schedules.ConstantSparsity(1.0), r"`target_sparsity` must be < 1. Received: target_sparsity=1"),
    (lambda: schedules.ConstantSparsity(-0.1), r"`target_sparsity` must be >= 0"),
    (lambda: schedules.PolynomialDecay(0.0, 1.2, 0, 10), r"`final_sparsity` must be < 1"),
    (lambda: schedules.PolynomialDecay(0.0, 0.9, 100, 50), r"`end_step` must be > `begin_step` \(100\). Received: end_step=50"),
    (lambda: schedules.PolynomialDecay(0.0, 0.9, 0, -1), r"`end_step` must be > `begin_step`"),
    (lambda: schedules.ConstantSparsity(0.5, frequency=0), r"`frequency` must be >= 1"),
    (lambda: schedules.UpdateSchedule(0, 100), r"`delta_t` must be >= 1. Received: delta_t=0"),
    (lambda: schedules.UpdateSchedule(-5, 100), r"`delta_t` must be >= 1"),
    (lambda: schedules.UpdateSchedule(10, 100, 200), r"`end_step` must be > `begin_step` \(200\)"),
    (lambda: schedules.UpdateSchedule(10, 100, -1), r"`begin_step` must be >= 0"),
    (lambda: schedules.CosineDropFraction(1.5, 100), r"`initial_fraction` must be <= 1"),
    (lambda: schedules.CosineDropFraction(0.3, 0), r"`end_step` must be >= 1"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_errors():
    with pytest.raises(TypeError, match="`delta_t` must be an integer"):
        schedules.UpdateSchedule(10.5, 100)
    with pytest.raises(TypeError, match="`target_sparsity` must be a real number"):
        schedules.ConstantSparsity("0.5")

"""`slbi`: each piece of the DessiLBI step against NumPy, then the composition.

optax-style: the pieces (momentum direction, proximal map, coupled update,
threshold scale) are tested alone from the paper's equations, then `step` is
tested equal to the pieces applied by hand.
"""

import numpy as np
import pytest
from keras import ops

from tf_dessilbi.dessilbi import slbi


def _t(*arrays):
    """The inputs as backend tensors, as the optimizer passes them."""
    return [None if a is None else ops.convert_to_tensor(a) for a in arrays]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _soft(v, t):
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _group_soft(v, t):
    norms = np.sqrt((v.reshape(-1, v.shape[-1]) ** 2).sum(0))
    scale = np.where(norms > t, 1.0 - t / np.where(norms > 0, norms, 1.0), 0.0)
    return v * scale


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_direction_heavy_ball_and_nesterov(nesterov):
    rng = np.random.RandomState(0)
    g, b = rng.randn(5).astype("float32"), rng.randn(5).astype("float32")
    direction, buffer = slbi.momentum_direction(g, b, 0.9, nesterov)
    want_buffer = 0.9 * b + g
    want = g + 0.9 * want_buffer if nesterov else want_buffer
    np.testing.assert_allclose(_np(buffer), want_buffer, rtol=1e-6)
    np.testing.assert_allclose(_np(direction), want, rtol=1e-6)


def test_momentum_direction_without_buffer_is_the_gradient():
    g = np.arange(3, dtype="float32")
    direction, buffer = slbi.momentum_direction(g, None, 0.0, False)
    assert buffer is None
    np.testing.assert_array_equal(_np(direction), g)


@pytest.mark.parametrize("structure", ["elementwise", "filter", "neuron"])
def test_prox_matches_numpy(structure):
    v = np.random.RandomState(1).randn(3, 3, 2, 4).astype("float32")
    if structure == "neuron":
        v = v.reshape(18, 4)
    want = _soft(v, 0.7) if structure == "elementwise" else _group_soft(v, 0.7)
    np.testing.assert_allclose(_np(slbi.prox(v, 0.7, structure)), want, rtol=1e-5, atol=1e-6)


def test_prox_rejects_an_unknown_structure():
    with pytest.raises(ValueError, match="Unknown structure 'rows'"):
        slbi.prox(np.ones(2, "float32"), 0.1, "rows")


@pytest.mark.parametrize("structure", ["elementwise", "filter"])
def test_gamma_is_kappa_times_the_prox_of_v(structure):
    v = np.random.RandomState(5).randn(3, 3, 2, 4).astype("float32")
    want = 1.5 * (_soft(v, 0.4) if structure == "elementwise" else _group_soft(v, 0.4))
    np.testing.assert_allclose(_np(slbi.gamma_of(v, 1.5, 0.4, structure)), want, rtol=1e-5, atol=1e-6)


def test_coupled_update_is_the_papers_discretisation():
    rng = np.random.RandomState(2)
    w, d, v = (rng.randn(4, 3).astype("float32") for _ in range(3))
    lr, kappa, mu, t = 0.1, 2.0, 5.0, 0.3
    gamma = kappa * _soft(v, t)  # Γ_k = κ prox(V_k)
    w_new, v_new = slbi.coupled_update(*_t(w, d, v), lr, kappa, mu, t, "elementwise")
    # W_{k+1} = W_k − κα(d + (W_k − Γ_k)/ν);  V_{k+1} = V_k + (α/ν)(W_k − Γ_k).
    np.testing.assert_allclose(_np(w_new), w - kappa * lr * (d + (w - gamma) / mu), rtol=1e-5)
    np.testing.assert_allclose(_np(v_new), v + (lr / mu) * (w - gamma), rtol=1e-5)


@pytest.mark.parametrize(
    "shape,structure,scaling,want",
    [((8, 4), "elementwise", "fan_in", 1 / np.sqrt(8)), ((3, 3, 2, 4), "elementwise", "fan_in", 1 / np.sqrt(18)),
     ((3, 3, 2, 4), "filter", "fan_in", 1.0), ((8, 4), "elementwise", "none", 1.0)],
)
def test_threshold_scale(shape, structure, scaling, want):
    assert slbi.threshold_scale(shape, structure, scaling) == pytest.approx(want)


@pytest.mark.parametrize("structure", [None, "elementwise", "filter"])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_step_equals_the_pieces_applied_by_hand(structure, momentum, nesterov):
    rng = np.random.RandomState(3)
    shape = (3, 3, 2, 4)
    g, w, b, v = (rng.randn(*shape).astype("float32") for _ in range(4))
    buffer = b if momentum else None
    kw = dict(lr=0.05, kappa=1.5, mu=10.0, threshold=0.4, momentum=momentum, nesterov=nesterov)
    got = slbi.step(*_t(g, w, buffer, None if structure is None else v), structure=structure, **kw)
    direction, buffer_new = slbi.momentum_direction(*_t(g, buffer), momentum, nesterov)
    if structure is None:
        want = (w - 1.5 * 0.05 * _np(direction), buffer_new, None)
    else:
        want_w, want_v = slbi.coupled_update(*_t(w), direction, *_t(v), 0.05, 1.5, 10.0, 0.4, structure)
        want = (want_w, buffer_new, want_v)
    for a, b_ in zip(got, want):
        assert (a is None) == (b_ is None)
        if a is not None:
            np.testing.assert_allclose(_np(a), _np(b_), rtol=1e-6, atol=1e-7)


def test_init_norm_scale():
    rng = np.random.RandomState(3)
    w0 = rng.randn(3, 3, 2, 4)
    # Groups: √(mean over the 4 units of ‖W₀_g‖²); elementwise: √(mean W₀²) = that / √fan_in.
    unit_norms = np.sqrt((w0.reshape(-1, 4) ** 2).sum(axis=0))
    assert slbi.init_norm_scale(w0, "filter") == pytest.approx(np.sqrt(np.mean(unit_norms ** 2)))
    assert slbi.init_norm_scale(w0, "elementwise") == pytest.approx(np.sqrt(np.mean(w0 ** 2)))
    assert slbi.init_norm_scale(w0, "elementwise") == pytest.approx(
        slbi.init_norm_scale(w0, "filter") / np.sqrt(18))
    assert slbi.init_norm_scale(2 * w0, "filter") == pytest.approx(2 * slbi.init_norm_scale(w0, "filter"))
    # An all-zero start falls back to "fan_in".
    assert slbi.init_norm_scale(np.zeros((8, 4)), "elementwise") == pytest.approx(1 / np.sqrt(8))
    with pytest.raises(ValueError, match="init_norm"):
        slbi.threshold_scale((8, 4), "elementwise", "init_norm")


def test_unit_init_norm_scale_is_each_units_initial_norm():
    rng = np.random.RandomState(4)
    w0 = rng.randn(3, 3, 2, 5)
    w0[..., 2] = 0.0  # a unit that starts at zero takes the layer's init_norm factor
    norms = [np.sqrt(np.sum(w0[..., j] ** 2)) for j in range(5)]
    want = np.array(norms)
    want[2] = slbi.init_norm_scale(w0, "filter")
    got = slbi.unit_init_norm_scale(w0, "filter")
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Elementwise: the unit's RMS entry, ‖W₀_j‖ / √fan_in (fan_in = 18).
    want = np.array(norms) / np.sqrt(18)
    want[2] = slbi.init_norm_scale(w0, "elementwise")
    np.testing.assert_allclose(slbi.unit_init_norm_scale(w0, "elementwise"), want, rtol=1e-6)
    # Scales with W₀, and the per-layer factor is the RMS of the per-unit ones.
    full = rng.randn(4, 6)
    np.testing.assert_allclose(slbi.unit_init_norm_scale(3 * full, "neuron"),
                               3 * slbi.unit_init_norm_scale(full, "neuron"), rtol=1e-6)
    assert np.sqrt(np.mean(slbi.unit_init_norm_scale(full, "neuron").astype(float) ** 2)) == \
        pytest.approx(slbi.init_norm_scale(full, "neuron"), rel=1e-6)
    with pytest.raises(ValueError, match="unit_init_norm"):
        slbi.threshold_scale((8, 4), "filter", "unit_init_norm")

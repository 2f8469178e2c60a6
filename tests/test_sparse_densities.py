"""Uniform / ER / ERK densities against a NumPy transcription of rigl's equations."""

import math

import numpy as np
import pytest

from tf_dessilbi.sparse import densities

SHAPES = {  # FMNIST-CNN-S's kernels
    "conv1/kernel": (3, 3, 1, 16), "conv2/kernel": (3, 3, 16, 32),
    "conv3/kernel": (3, 3, 32, 64), "fc1/kernel": (3136, 128), "logits/kernel": (128, 10),
}


def reference_er(shapes, density, kernel=True, custom=()):
    """ε·raw_l with the densify-and-recompute loop, from the equations of the paper/rigl."""
    s = 1.0 - density
    raw = {k: (np.sum(v) / np.prod(v)) if kernel else (v[-2] + v[-1]) / (v[-2] * v[-1])
           for k, v in shapes.items()}
    dense = set()
    while True:
        free = [k for k in shapes if k not in dense and k not in custom]
        budget = sum(np.prod(shapes[k]) - np.floor(s * np.prod(shapes[k])) for k in free)
        budget -= sum(np.floor(s * np.prod(shapes[k])) for k in dense)
        eps = budget / sum(raw[k] * np.prod(shapes[k]) for k in free)
        top = max(raw[k] for k in free)
        if eps * top > 1:
            dense |= {k for k in free if raw[k] == top}
            continue
        return {k: 1.0 if (k in dense or k in custom) else eps * raw[k] for k in shapes}


@pytest.mark.parametrize("density", [0.5, 0.2, 0.1, 0.05])
@pytest.mark.parametrize("kernel", [True, False])
def test_erdos_renyi_matches_reference(density, kernel):
    got = densities.erdos_renyi(SHAPES, density, kernel=kernel)
    want = reference_er(SHAPES, density, kernel)
    assert got == pytest.approx(want, rel=1e-12)
    # The total hits the target (up to rigl's floor per layer).
    kept = sum(got[k] * math.prod(v) for k, v in SHAPES.items())
    total = sum(math.prod(v) for v in SHAPES.values())
    assert kept == pytest.approx(density * total, abs=len(SHAPES) + 1)
    assert all(0 < d <= 1 for d in got.values())


def test_small_layers_made_dense_at_high_density():
    got = densities.erdos_renyi(SHAPES, 0.5)
    assert got["conv1/kernel"] == 1.0  # ε·raw > 1: densified, ε recomputed
    assert got["logits/kernel"] == 1.0
    assert got["conv3/kernel"] < got["fc1/kernel"] < got["conv2/kernel"] < 1.0


def test_first_layer_dense_is_left_out_like_rigls_custom_map():
    got = densities.densities("erk", SHAPES, 0.1, first_layer_dense=True)
    want = reference_er(SHAPES, 0.1, custom=("conv1/kernel",))
    assert got == pytest.approx(want) and got["conv1/kernel"] == 1.0
    uni = densities.densities("uniform", SHAPES, 0.1, first_layer_dense=True)
    assert uni["conv1/kernel"] == 1.0 and uni["fc1/kernel"] == 0.1


def test_erk_vs_er_differ_for_convs():
    erk = densities.densities("erdos_renyi_kernel", SHAPES, 0.1)
    er = densities.densities("erdos_renyi", SHAPES, 0.1)
    assert erk["conv2/kernel"] != pytest.approx(er["conv2/kernel"])


def test_power_scale():
    got = densities.erdos_renyi(SHAPES, 0.1, power_scale=0.5)
    raw = {k: (sum(v) / math.prod(v)) ** 0.5 for k, v in SHAPES.items()}
    ratios = {k: got[k] / raw[k] for k in SHAPES if got[k] < 1}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))


@pytest.mark.parametrize("call, error, match", [
    (lambda: densities.erdos_renyi(SHAPES, 0.0), ValueError, r"`density` must be > 0"),
    (lambda: densities.erdos_renyi(SHAPES, 1.5), ValueError, r"`density` must be <= 1"),
    (lambda: densities.erdos_renyi({}, 0.1), ValueError, r"no sparsifiable weight"),
    (lambda: densities.erdos_renyi({"a": (0, 3)}, 0.1), ValueError, r"nothing to sparsify"),
    (lambda: densities.erdos_renyi({"big": (1000, 1000), "tiny": (2, 2)}, 1e-6), ValueError,
     r"unreachable"),
    (lambda: densities.densities("erk", SHAPES, 0.1, dense=list(SHAPES)), ValueError,
     r"no layer is left to sparsify"),
    (lambda: densities.densities("erk", SHAPES, 0.1, dense=["nope"]), ValueError, r"names no weight"),
    (lambda: densities.densities("magic", SHAPES, 0.1), ValueError, r"`method` must be one of"),
    (lambda: densities.erdos_renyi({"b": (5,)}, 0.5, kernel=False), ValueError, r"\(n_in, n_out\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()

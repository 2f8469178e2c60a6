"""Lottery-ticket sanity checks: the random-mask control, the verdict, the control runs."""

import json

import numpy as np
import pytest

from tf_dessilbi import masks as masks_lib
from tf_dessilbi.procedures import sanity


def _mask(seed=0):
    rng = np.random.default_rng(seed)
    return masks_lib.Mask({
        "conv/kernel": rng.random((3, 3, 2, 4)) < 0.3,
        "fc/kernel": rng.random((10, 5)) < 0.8,
        "out/kernel": np.zeros((5, 2), bool),
    })


def test_random_mask_has_the_same_layerwise_counts():
    mask = _mask()
    random = sanity.random_mask_like(mask, seed=1)
    for key, m in mask.weights.items():
        assert random.weights[key].shape == m.shape
        assert random.weights[key].sum() == m.sum()
    assert sanity.layer_densities(random) == sanity.layer_densities(mask)
    assert not np.array_equal(random.weights["conv/kernel"], mask.weights["conv/kernel"])
    again = sanity.random_mask_like(mask, seed=1)
    for key in mask.weights:  # seeded
        np.testing.assert_array_equal(again.weights[key], random.weights[key])


def test_random_mask_is_uniform_over_positions():
    mask = masks_lib.Mask({"w/kernel": np.arange(20) < 5})
    counts = sum(sanity.random_mask_like(mask, seed=s).weights["w/kernel"].astype(int)
                 for s in range(400))
    # Each position is kept with probability 1/4: 100 of 400 on average.
    assert counts.min() > 60 and counts.max() < 140


def test_random_units_keep_whole_units_as_many_as_the_ticket_per_layer():
    filters = np.zeros((3, 3, 2, 8), bool)
    filters[..., [1, 4, 6]] = True  # a group support: 3 whole filters
    neurons = np.zeros((10, 5), bool)
    neurons[:4, 0] = True  # one partly kept neuron counts as a unit
    mask = masks_lib.Mask({"conv/kernel": filters, "fc/kernel": neurons})
    random = sanity.random_mask_like(mask, seed=3, units=True)
    conv = random.weights["conv/kernel"]
    kept = conv.reshape(-1, 8).any(axis=0)
    assert kept.sum() == 3 and conv.reshape(-1, 8)[:, kept].all()  # whole filters
    assert conv.sum() == filters.sum()
    fc = random.weights["fc/kernel"]
    assert fc.any(axis=0).sum() == 1 and fc[:, fc.any(axis=0)].all()
    counts = sum(sanity.random_mask_like(mask, seed=s, units=True).weights["conv/kernel"][0, 0, 0]
                 .astype(int) for s in range(400))
    assert counts.min() > 100 and counts.max() < 200  # each filter kept with probability 3/8
    with pytest.raises(TypeError, match="units"):
        sanity.random_mask_like(mask, units="yes")


def test_random_mask_refuses_bad_input():
    with pytest.raises(TypeError, match="needs a tf_dessilbi.masks.Mask"):
        sanity.random_mask_like({"a": np.ones(3, bool)})
    with pytest.raises(ValueError, match="has none"):
        sanity.random_mask_like(masks_lib.Mask({}, {"a": np.ones(3, bool)}))


@pytest.mark.parametrize(
    "accs,winning,fragment",
    [
        ((0.90, 0.898, 0.85, 0.86), True, "winning ticket: yes"),
        ((0.90, 0.88, 0.85, 0.86), False, "does not match dense within 0.50 pts"),
        ((0.90, 0.90, 0.91, 0.86), False, "does not beat the random re-initialization"),
        ((0.90, 0.90, 0.85, 0.90), False, "does not beat the random mask"),
    ],
)
def test_verdict(accs, winning, fragment):
    dense, ticket, reinit, random = accs
    result = sanity.SanityResult(dense, ticket, reinit, random, tolerance=0.005)
    assert result.winning is winning
    assert fragment in result.verdict
    assert result.margin_vs_reinit == pytest.approx(ticket - reinit)
    assert "ticket − random mask" in result.verdict
    d = result.to_dict()
    json.dumps(d)
    assert d["winning"] is winning and d["verdict"] == result.verdict


class _FakeRecipe:
    """Records what each control is trained with; accuracy = kept fraction (deterministic)."""

    def __init__(self):
        self.calls = []

    def train(self, mask, weights=None, seed=None):
        self.calls.append((mask, weights, seed))
        return None, {"loss": 0.0, "accuracy": 0.5 if weights is None else 0.6}


def test_run_sanity_checks_trains_both_controls_under_the_recipe():
    recipe = _FakeRecipe()
    mask = _mask()
    start = [np.ones(3)]
    result = sanity.run_sanity_checks(recipe, mask, start, dense_accuracy=0.7,
                                      ticket_accuracy=0.698, seed=4)
    (m1, w1, s1), (m2, w2, s2) = recipe.calls
    assert m1 is mask and w1 is None and s1 == 5  # same mask, fresh init (seed + 1)
    assert w2 is start  # random mask from the ticket's θ_k
    assert sanity.layer_densities(m2) == sanity.layer_densities(mask)
    assert result.reinit_accuracy == 0.5 and result.random_mask_accuracy == 0.6
    assert result.winning  # 0.698 ≥ 0.70 − 0.005 and beats both
    with pytest.raises(ValueError, match="`tolerance` must be >= 0"):
        sanity.run_sanity_checks(recipe, mask, start, 0.7, 0.69, tolerance=-1.0)

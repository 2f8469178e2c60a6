"""bench/sparse_compare.py: the λ search, the claims logic, the TF-MOT schedule, and a tiny run."""

import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import protocol  # noqa: E402
from bench import sparse_compare as sc  # noqa: E402


def _power_law(c, a):
    """density(λ) = c · λ^(−a), capped at 1: what the secant step in log–log solves exactly."""
    return lambda lam: min(1.0, c * lam ** (-a))


@pytest.mark.parametrize("target", [0.98, 0.99, 0.999])
def test_next_lambda_solves_a_power_law_in_one_step(target):
    density = _power_law(0.01, 1.7)
    tried = {lam: {"density": density(lam)} for lam in (0.1, 50.0)}
    # λ* with c·λ*^(−a) = 1 − target, inside the middle half of the (log) bracket.
    want = (0.01 / (1 - target)) ** (1 / 1.7)
    assert math.log(0.1) + 0.25 * math.log(500) < math.log(want) < math.log(0.1) + 0.75 * math.log(500)
    lam = sc.next_lambda(tried, target)
    assert lam == pytest.approx(want, rel=1e-9)
    assert 1 - density(lam) == pytest.approx(target, abs=1e-9)


def test_next_lambda_stays_inside_the_middle_half_of_the_bracket():
    tried = {1.0: {"density": 0.5}, 100.0: {"density": 1e-5}}
    # Regula falsi would land at λ ≈ 1.03, next to the dense end: clamped to 100^(1/4).
    assert sc.next_lambda(tried, 0.55) == pytest.approx(100.0 ** 0.25)
    assert sc.next_lambda(tried, 1 - 1.2e-5) == pytest.approx(100.0 ** 0.75)


def test_next_lambda_extrapolates_at_most_four_times():
    tried = {1.0: {"density": 0.5}, 2.0: {"density": 0.45}}  # flat: a huge secant step
    lam = sc.next_lambda(tried, 0.95)
    assert lam == pytest.approx(2.0 * 4.0)
    tried = {1.0: {"density": 0.5}}
    assert sc.next_lambda(tried, 0.9) == pytest.approx(4.0)  # too dense: λ × 4
    assert sc.next_lambda({1.0: {"density": 0.01}}, 0.9) == pytest.approx(0.25)


def test_sparsity_at_accuracy_interpolates_linearly():
    pts = [(0.5, 0.92, 1), (0.8, 0.90, 2), (0.95, 0.85, 3)]
    # np.interp needs increasing x: accuracy decreases with sparsity.
    acc = [p[1] for p in pts][::-1]
    sp = [p[0] for p in pts][::-1]
    for a in (0.91, 0.88, 0.86):
        assert sc.sparsity_at_accuracy(pts, a) == pytest.approx(np.interp(a, acc, sp))
    assert sc.sparsity_at_accuracy(pts, 0.80) is None  # every point is above: not reached


def test_tfmot_spec_uses_the_protocol_learning_rates_and_our_gmp_schedule():
    spec = sc.tfmot_spec(0.9, 1, 3)
    total = 3 * protocol.STEPS_PER_EPOCH
    assert len(spec["lr"]) == total + 1
    schedule = protocol.lr_schedule(protocol.STEPS_PER_EPOCH, 3)
    for step in (0, 1, 200, 468, 700, total - 1, total):
        ref = protocol.lr_at(step, protocol.STEPS_PER_EPOCH, 3)
        assert spec["lr"][step] == pytest.approx(ref)
        assert float(schedule(step)) == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert spec["begin"] == round(0.1 * total) and spec["end"] == round(0.75 * total)
    assert spec["frequency"] == 100 and spec["sparsity"] == 0.9


def _row(method, target, seed, acc, density=None):
    return {"method": method, "target": target, "seed": seed, "accuracy": acc,
            "density": 1 - target if density is None else density}


def _args(**kw):
    import types

    base = dict(sparsities=[0.8, 0.9, 0.95], seeds=[0, 1], seeds_all=[0], epochs=3,
                command="python -m bench.sparse_compare")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_claims_follow_the_numbers():
    rows = [_row("dense", 0.0, s, a, 1.0) for s, a in [(0, 0.92), (1, 0.93)]]
    rows += [_row("rigl_erk", 0.9, 0, 0.90), _row("rigl_erk", 0.9, 1, 0.89),
             _row("static_erk", 0.9, 0, 0.88), _row("static_erk", 0.9, 1, 0.90),
             _row("snip", 0.95, 0, 0.87), _row("grasp", 0.95, 0, 0.86),
             _row("gmp", 0.9, 0, 0.922), _row("gmp", 0.9, 1, 0.924),
             _row("tfmot", 0.9, 0, 0.915), _row("tfmot", 0.9, 1, 0.91)]
    out = {c: (v, n) for c, v, n in sc.claims({"rows": rows, "imp": {}, "curves": {}}, _args())}
    v, n = out["RigL ≥ static sparse (ERK) at equal budget at 90 %"]
    assert v == "holds" and "+0.50 pts; ≥ on 1/2 seeds" in n  # 0.895 vs 0.890
    assert out["GraSP ≥ SNIP at high sparsity at 95 %"][0] == "does not hold"
    v, n = out["Target: the package's best method at 90 % ≥ dense SGD − 0.5 pt"]
    # best 92.30 (GMP) vs dense 92.50: −0.20 ≥ −0.5.
    assert v == "holds" and "GMP" in n and "-0.20 pts" in n
    assert out["Target: … and ahead of TF-MOT"][0] == "holds"
    # 92.30 vs 91.25: more than 0.3 pt apart, so "matches" does not hold although GMP is ahead.
    assert out["Our GMP matches TF-MOT (same schedule) within 0.3 pt at 90 %"][0] == "does not hold"
    rows = [r for r in rows if r["method"] != "gmp"]
    out = {c: v for c, v, n in sc.claims({"rows": rows, "imp": {}, "curves": {}}, _args())}
    assert out["Target: the package's best method at 90 % ≥ dense SGD − 0.5 pt"] == "does not hold"


def test_cs_versus_imp_claim_reads_the_search_curve():
    imp = {"rounds": [{"sparsity": 0.0, "eval": {"accuracy": 0.92}},
                      {"sparsity": 0.88, "eval": {"accuracy": 0.89}}],
           "sparsity": 0.88, "sanity": None, "milestone_sanity": {}}
    grid = {"rows": [], "imp": {"0": imp},
            "curves": {"cs": [(0.85, 0.91, 1e-8), (0.95, 0.87, 1e-7)]}}
    (claim, verdict, numbers), = [c for c in sc.claims(grid, _args()) if c[0].startswith("CS")]
    assert verdict == "holds" and "at 90.0 % removed" in numbers  # 0.85 + 0.1 · 0.5 = 0.90
    grid["curves"]["cs"] = [(0.7, 0.91, 1e-8), (0.8, 0.87, 1e-7)]
    (claim, verdict, numbers), = [c for c in sc.claims(grid, _args()) if c[0].startswith("CS")]
    assert verdict == "does not hold"


@pytest.mark.parametrize("argv,match", [
    (["--sparsities", "0.8", "0.95"], "must include 0.9"),
    (["--sparsities", "0.9", "1.0"], r"must lie in \(0, 1\)"),
    (["--methods", "gmp", "lottery"], r"unknown --methods \['lottery'\]"),
])
def test_bad_arguments_are_refused(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        sc.main(argv)
    assert e.value.code == 2
    assert __import__("re").search(match, capsys.readouterr().err)

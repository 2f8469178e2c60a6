"""Top-k masks against a NumPy reference (stable ties), and under the JAX backend."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from keras import ops

from tf_dessilbi.sparse import topk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(scores, k, candidates=None):
    """k largest, ties to the lower flat index (written from the definition)."""
    flat = np.concatenate([np.ravel(s) for s in scores.values()]).astype(np.float64)
    if candidates is not None:
        cand = np.concatenate([np.ravel(c) for c in candidates.values()])
        flat = np.where(cand, flat, -np.inf)
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for key, s in scores.items():
        out[key] = keep[start:start + np.size(s)].reshape(np.shape(s))
        start += np.size(s)
    return out


def as_np(masks):
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in masks.items()}


@pytest.mark.parametrize("density", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_global_matches_reference_with_ties(density):
    rng = np.random.RandomState(0)
    # Few distinct values: many ties, across and inside tensors.
    scores = {"a/kernel": rng.randint(0, 4, (3, 3, 2, 4)).astype("float32"),
              "b/kernel": rng.randint(0, 4, (10, 5)).astype("float32")}
    n = sum(s.size for s in scores.values())
    got = as_np(topk.topk_masks(scores, density))
    want = reference(scores, int(np.floor(density * n + 0.5)))
    for key in scores:
        np.testing.assert_array_equal(got[key], want[key])
        assert got[key].dtype == bool


def test_per_layer_float_and_mapping():
    rng = np.random.RandomState(1)
    scores = {"a": rng.randn(7, 5).astype("float32"), "b": rng.randn(13).astype("float32")}
    got = as_np(topk.topk_masks(scores, 0.3, scope="layer"))
    got_map = as_np(topk.topk_masks(scores, {"a": 0.3, "b": 0.3}))
    for key, s in scores.items():
        want = reference({key: s}, int(np.floor(0.3 * s.size + 0.5)))[key]
        np.testing.assert_array_equal(got[key], want)
        np.testing.assert_array_equal(got_map[key], want)
    per = as_np(topk.topk_masks(scores, {"a": 0.5, "b": 0.1}))
    assert per["a"].sum() == round(0.5 * 35) and per["b"].sum() == 1


def test_candidates_and_counts():
    rng = np.random.RandomState(2)
    scores = {"a": rng.randn(6, 4).astype("float32"), "b": rng.randn(9).astype("float32")}
    cands = {"a": rng.rand(6, 4) > 0.5, "b": rng.rand(9) > 0.5}
    got = as_np(topk.topk_masks(scores, candidates=cands, counts=5))
    np.testing.assert_array_equal(np.concatenate([got["a"].ravel(), got["b"].ravel()]),
                                  np.concatenate([v.ravel() for v in reference(scores, 5, cands).values()]))
    assert not (got["a"] & ~cands["a"]).any()
    per = as_np(topk.topk_masks(scores, candidates=cands, counts={"a": 2, "b": 1}))
    assert per["a"].sum() == 2 and per["b"].sum() == 1
    np.testing.assert_array_equal(per["a"], reference({"a": scores["a"]}, 2, {"a": cands["a"]})["a"])


def test_all_equal_scores_keep_the_first():
    got = as_np(topk.topk_masks({"x": np.zeros((2, 3))}, 0.5))["x"]
    np.testing.assert_array_equal(got, [[True, True, True], [False, False, False]])
    assert topk.kept_count(10, 0.25) == 3 and topk.kept_count(10, 0.24) == 2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(density=1.5), ValueError, r"`density` must be <= 1. Received: density=1.5"),
    (dict(density=-0.1), ValueError, r"`density` must be >= 0"),
    (dict(density=0.5, scope="row"), ValueError, r"`scope` must be one of"),
    (dict(density={"a": 0.5}), ValueError, r"keys of `scores`"),
    (dict(counts=100), ValueError, r"Cannot keep 100 weights"),
    (dict(counts={"a": 1, "b": 99}), ValueError, r"Cannot keep 99 weights of 'b'"),
])
def test_bad_input(kwargs, error, match):
    scores = {"a": np.ones((2, 2)), "b": np.ones(3)}
    with pytest.raises(error, match=match):
        topk.topk_masks(scores, **kwargs)


def test_non_finite_and_empty_scores():
    with pytest.raises(ValueError, match="must be finite"):
        topk.topk_masks({"a": np.array([1.0, np.nan])}, 0.5)
    with pytest.raises(ValueError, match="is empty"):
        topk.topk_masks({}, 0.5)
    with pytest.raises(TypeError, match="must be a mapping"):
        topk.topk_masks([np.ones(3)], 0.5)


JAX_SCRIPT = textwrap.dedent("""
    import numpy as np, keras
    assert keras.backend.backend() == "jax"
    from keras import ops
    from tf_dessilbi.sparse import topk, updater
    s = {"a": np.array([[1., 3.], [3., 0.]], "float32"), "b": np.array([3., 2., 5.], "float32")}
    g = topk.topk_masks(s, 0.5)
    assert np.asarray(g["a"]).tolist() == [[False, True], [True, False]], g
    assert np.asarray(g["b"]).tolist() == [True, False, True], g
    m = {"a": np.array([[True, True], [False, True]]), "b": np.array([True, False, False])}
    new, grown = updater.drop_grow(m, {"a": np.abs(s["a"]), "b": s["b"]},
                                   {"a": np.array([[0., 0.], [9., 0.]], "float32"),
                                    "b": np.array([0., 4., 1.], "float32")}, {"a": 1, "b": 1})
    assert np.asarray(new["a"]).tolist() == [[True, True], [True, False]], new
    assert np.asarray(new["b"]).tolist() == [False, True, False], new
    assert np.asarray(grown["a"]).tolist() == [[False, False], [True, False]]
    # The whole update on a MaskedLayer model: SET and a GMP step, fixed count, zero growth.
    from tf_dessilbi import sparse
    from tf_dessilbi.sparse import set_
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    net = keras.Model(inputs, keras.layers.Dense(4, name="d")(keras.layers.Dense(8, name="c")(inputs)))
    u = sparse.SET(end_step=50, delta_t=5)
    model = set_.sparsify(net, 0.5, u, distribution="uniform")
    before = {t.key: np.asarray(t.mask.numpy()).copy() for t in updater.targets(model)}
    assert sparse.update_masks(model, u, 5) == [u]
    for t in updater.targets(model):
        m, w = np.asarray(t.mask.numpy()), np.asarray(t.weight.numpy())
        assert m.sum() == before[t.key].sum() and (m != before[t.key]).any()
        assert np.all(w[m & ~before[t.key]] == 0.0)
    g = sparse.prune_low_magnitude(net, sparse.ConstantSparsity(0.75, 0, -1, 1))
    sparse.update_masks(g, sparse.callback.attached(g), 0)
    assert [int(np.asarray(t.mask.numpy()).sum()) for t in updater.targets(g)] == [12, 8]
    print("JAX-OK")
""")


@pytest.mark.slow
def test_topk_and_update_under_jax():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "JAX-OK" in result.stdout, (result.stdout + result.stderr)[-3000:]

"""Small API gaps found by trying the package as a new user (each failed before its fix)."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import tf_dessilbi
from tf_dessilbi.layers import SparseGate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gated():
    inputs = keras.Input((4,))
    return tf_dessilbi.gate_model(keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs)))


@pytest.mark.parametrize("beta,error", [(-5.0, ValueError), (0.0, ValueError), (math.nan, ValueError), ("2", TypeError)])
def test_set_beta_rejects_non_positive_or_non_finite(beta, error):
    model = _gated()
    with pytest.raises(error, match="`beta`"):
        tf_dessilbi.set_beta(model, beta)
    assert float(ops.convert_to_numpy(tf_dessilbi.gated_layers(model)[0].beta)) == 1.0


def test_set_ticket_mode_needs_a_bool():
    model = _gated()
    with pytest.raises(TypeError, match=r"`ticket` must be True or False. Received: ticket='no'"):
        tf_dessilbi.set_ticket_mode(model, ticket="no")
    assert float(ops.convert_to_numpy(tf_dessilbi.gated_layers(model)[0].ticket)) == 0.0


def test_apply_w_star_checks_prune_bias_like_strip():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    opt = tf_dessilbi.DessiLBI()
    opt.build(model.trainable_variables)
    with pytest.raises(TypeError, match=r"`prune_bias` must be True or False. Received: prune_bias='no'"):
        tf_dessilbi.apply_w_star(model, opt, prune_bias="no")


def test_apply_w_star_with_sgd_says_what_is_needed():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(TypeError, match=r"needs a tf_dessilbi.DessiLBI optimizer .*received SGD"):
        tf_dessilbi.apply_w_star(model, keras.optimizers.SGD())


def test_sparse_gate_takes_numpy_scalars():
    gate = SparseGate(keras.layers.Dense(2), gate_init=np.float32(0.5), penalty=np.float64(1e-6))
    assert gate.gate_init == 0.5 and isinstance(gate.gate_init, float)


@pytest.mark.parametrize("fn", [tf_dessilbi.soft_threshold, tf_dessilbi.group_soft_threshold])
def test_a_negative_threshold_is_an_error(fn):
    with pytest.raises(ValueError, match=r"`threshold` must be >= 0. Received: threshold=-1.0"):
        fn(np.ones((2, 3), "float32"), -1.0)


def test_ticket_search_checks_gate_arguments_at_construction():
    with pytest.raises(ValueError, match="`penalty` must be >= 0"):
        tf_dessilbi.TicketSearch(lambda: None, lambda: keras.optimizers.SGD(), penalty=-1.0)
    with pytest.raises(ValueError, match="`granularity` must be one of"):
        tf_dessilbi.TicketSearch(lambda: None, lambda: keras.optimizers.SGD(), granularity="rows")


def test_two_optimizers_get_unique_names():
    a, b = tf_dessilbi.DessiLBI(), tf_dessilbi.DessiLBI()
    assert a.name != b.name
    assert tf_dessilbi.DessiLBI(name="mine").name == "mine"


@pytest.mark.slow
def test_jax_sparse_gradient_on_an_uncoupled_variable_without_momentum():
    pytest.importorskip("jax")
    code = """
import numpy as np, keras, jax.numpy as jnp
from jax.experimental import sparse
import tf_dessilbi
var = keras.Variable(np.ones((4, 2), "float32"), name="embeddings")
opt = tf_dessilbi.DessiLBI(learning_rate=0.5, momentum=0.0)
grad = sparse.BCOO.fromdense(jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
opt.apply_gradients([(grad, var)])
got = np.asarray(var.value)
want = np.ones((4, 2)) - 0.5 * np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
assert np.allclose(got, want), got
print("ok")
"""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]

"""Independent references for the shrink tests, written from the definitions.

* the *sparse* model: the model with each removed unit's kernel column set to
  zero (W ⊙ M for a unit mask);
* the *reference*: the sparse model with the listed units' kernel, bias and
  BatchNormalization γ/β zeroed (depthwise: the channel's kernel and bias).
"""

from __future__ import annotations

import keras
import numpy as np


def all_layers(model):
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(all_layers(layer))
        else:
            out.append(layer)
    return out


def copy_model(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def by_name(model):
    return {layer.name: layer for layer in all_layers(model)}


def _kernel_name(layer):
    return "pointwise_kernel" if "Separable" in type(layer).__name__ else "kernel"


def _named(layer):
    return {v.name.split("/")[-1]: v for v in layer.weights}


def zero_units(model, units: dict, with_bias: bool = True):
    """Zeroes ``{layer: indices}`` in place: kernel columns (and bias, BN γ/β)."""
    layers = by_name(model)
    for name, index in units.items():
        index = np.asarray(index, np.int64)
        if not len(index):
            continue
        layer = layers[name]
        w = _named(layer)
        kind = type(layer).__name__
        if "Depthwise" in kind:
            k = np.array(w["kernel"])
            k[..., index, :] = 0
            w["kernel"].assign(k)
            if with_bias and "bias" in w:
                mult = k.shape[-1]
                b = np.array(w["bias"]).reshape(-1, mult)
                b[index] = 0
                w["bias"].assign(b.reshape(-1))
        elif kind in ("BatchNormalization",):
            if with_bias:
                for n in ("gamma", "beta"):
                    if n in w:
                        v = np.array(w[n])
                        v[index] = 0
                        w[n].assign(v)
        elif kind == "PReLU":
            pass
        elif _kernel_name(layer) not in w:  # other per-channel layers: γ/β as BN's
            for n in ("gamma", "beta") if with_bias else ():
                if n in w:
                    v = np.array(w[n])
                    v[..., index] = 0
                    w[n].assign(v)
        else:
            kn = _kernel_name(layer)
            k = np.array(w[kn])
            if "Transpose" in kind:
                k[..., index, :] = 0
            else:
                k[..., index] = 0
            w[kn].assign(k)
            if with_bias and "bias" in w:
                b = np.array(w["bias"])
                b[index] = 0
                w["bias"].assign(b)
    return model


def sparse_model(model, unit_masks: dict):
    """The model with the kernel columns of units outside ``unit_masks`` zeroed."""
    return zero_units(
        copy_model(model),
        {k: np.flatnonzero(~np.asarray(v, bool)) for k, v in unit_masks.items()},
        with_bias=False,
    )


def randomize(model, seed=0, bias=True):
    """Random biases and BN statistics/affine, so removed units output constants."""
    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        w = _named(layer)
        if bias and "bias" in w:
            w["bias"].assign(rng.normal(0, 0.3, w["bias"].shape).astype("float32"))
        if "moving_variance" in w:
            w["moving_variance"].assign(rng.uniform(0.5, 2, w["moving_variance"].shape).astype("float32"))
            w["moving_mean"].assign(rng.normal(0, 0.3, w["moving_mean"].shape).astype("float32"))
            if "gamma" in w:
                w["gamma"].assign(rng.uniform(0.5, 1.5, w["gamma"].shape).astype("float32"))
            if "beta" in w:
                w["beta"].assign(rng.normal(0, 0.3, w["beta"].shape).astype("float32"))
    return model


def random_unit_masks(model, seed, keep_prob=0.5, skip=()):
    """``{layer: bool[units]}`` for every Dense/Conv* producer not in ``skip``."""
    rng = np.random.default_rng(seed)
    masks = {}
    for layer in all_layers(model):
        kind = type(layer).__name__
        if layer.name in skip or not (kind.startswith("Conv") or kind == "Dense" or "Separable" in kind):
            continue
        units = layer.filters if hasattr(layer, "filters") else layer.units
        masks[layer.name] = rng.random(units) < keep_prob
    return masks


def inputs_for(model, seed=1, batch=3):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch,) + tuple(t.shape[1:])).astype("float32") for t in model.inputs]
    return xs[0] if len(xs) == 1 else xs


def predict(model, x):
    out = model(x, training=False)
    return [np.asarray(o) for o in keras.tree.flatten(out)]


def assert_close(a_model, b_model, x, tol=1e-5):
    for a, b in zip(predict(a_model, x), predict(b_model, x)):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)

"""shrink() on every `keras.applications` architecture (weights=None, small inputs).

For each model: random biases and BN statistics (so removed units output
nonzero constants), a random 50 % unit mask over its producers (the classifier
left whole); the shrunk model must equal the reference (the sparse model with
the removed units' kernel, bias and BN γ/β zeroed) within 1e-5 relative.
Then one DessiLBI step with `structures_for` (filters of every conv, Dense
kernels elementwise) and V set so that supp Γ keeps a random half of each
kernel's units: shrinking by supp Γ equals W* with the removed units zeroed.

A sweep (marked ``sweep``: CI's second step, `make test-sweep`, not `make test`):

    make test-applications
    pytest -m sweep tests/test_shrink_applications.py -k MobileNet

``python -m tests.test_shrink_applications [names]`` prints the table.
"""

import keras
import numpy as np
import pytest

import tf_dessilbi as tfd
from tests import shrink_reference as ref
from tf_dessilbi.shrink import shrink

# The smallest input each builder accepts (32 for the others).
_SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
APPLICATIONS = sorted(n for n in dir(keras.applications) if n[0].isupper())
_TOLERANCE = 1e-5


def build(name, seed=0):
    keras.utils.set_random_seed(seed)
    size = _SIZES.get(name, 32)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=5
    )
    return ref.randomize(model, seed)


def relative_error(a_model, b_model, x) -> float:
    a, b = ref.predict(a_model, x)[0], ref.predict(b_model, x)[0]
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_unit_mask(name, seed=0, model=None):
    """The random-mask check; returns (relative error, report).

    The reference is built in place on the model once `shrink` (which leaves
    its input unchanged) is done: the masked kernel columns, then the removed
    units' kernel, bias and BN γ/β zeroed.
    """
    model = build(name, seed) if model is None else model
    masks = ref.random_unit_masks(model, seed, skip=("predictions",))
    x = ref.inputs_for(model, seed, batch=2)
    small, report = shrink(model, masks, fold_constants=False, return_report=True)
    ref.zero_units(model, {k: np.flatnonzero(~np.asarray(v, bool)) for k, v in masks.items()},
                   with_bias=False)
    return relative_error(small, ref.zero_units(model, report.removed), x), report


def random_support(model, optimizer, seed=0):
    """Sets DessiLBI's V so that supp Γ keeps a random half of each coupled kernel's units.

    V of a kept unit is ±3·λ (every element: its group norm exceeds the
    threshold whatever the structure), V of a removed unit 0, so Γ = κ·prox(V)
    is nonzero exactly on the kept units' columns. One unit per kernel is
    always kept, so no layer is emptied.
    """
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        if optimizer.variable_structure(variable) is None:
            continue
        units = int(variable.shape[-1])
        threshold = np.max(np.abs(keras.ops.convert_to_numpy(optimizer.threshold(variable))))
        keep = rng.random(units) < 0.5
        keep[rng.integers(units)] = True
        signs = np.where(rng.random(tuple(variable.shape)) < 0.5, -1.0, 1.0)
        optimizer.set_v(variable, (3.0 * threshold * signs * keep).astype("float32"))


def check_dessilbi_step(name, seed=0, model=None):
    """One DessiLBI step, then a random supp Γ: shrink by it equals W* with the removed units zeroed."""
    model = build(name, seed) if model is None else model
    # BatchNormalization runs in inference mode for the step (over a batch of 2
    # at 1×1 spatial size its batch variance is near zero and the gradients
    # explode: one step at α = 1e-4 moved EfficientNetB0's stem kernel by 2e5),
    # and the gradient is clipped (the randomized EfficientNetV2M starts at a
    # loss of ~1e3; unclipped, its step gives NaN outputs).
    for layer in ref.all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    opt = tfd.DessiLBI(
        learning_rate=1e-3, kappa=1.0, mu=1.0, lambda_=0.1, structure=tfd.structures_for(model),
        clipnorm=1.0, momentum=0.0,  # no momentum slot: ConvNeXtXLarge's check peaked at 14 GB
    )
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=False),
                  run_eagerly=True)  # one step: tracing the train step would cost far more
    x = ref.inputs_for(model, seed, batch=2)
    model.fit(x, np.array([0, 1]), batch_size=2, epochs=1, verbose=0)
    random_support(model, opt, seed)
    small, report = shrink(model, optimizer=opt, fold_constants=False, return_report=True)
    with tfd.apply_w_star(model, opt):  # the reference, in place: W*, the removed units zeroed
        return relative_error(small, ref.zero_units(model, report.removed), x), report


def check_both(name, seed=0):
    """Both checks on one built model: a build is most of a check's cost.

    The DessiLBI check runs on the mask check's reference weights (some
    units zeroed): it sets its own support through V, so any finite weights do.
    """
    model = build(name, seed)
    mask = check_unit_mask(name, seed, model)
    return mask, check_dessilbi_step(name, seed, model)


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.xdist_group("applications")  # one at a time (make test-sweep: --dist loadgroup): memory
@pytest.mark.parametrize("name", APPLICATIONS)
def test_random_unit_mask_and_dessilbi_support_are_exact(name):
    (mask_error, mask_report), (step_error, step_report) = check_both(name)
    assert mask_error <= _TOLERANCE
    assert mask_report.params_after < mask_report.params_before
    assert step_error <= _TOLERANCE
    assert step_report.params_after < step_report.params_before


if __name__ == "__main__":
    import sys
    import time

    for app in sys.argv[1:] or APPLICATIONS:  # the table of the report
        start = time.time()
        try:
            for check, (error, rep) in zip(("unit mask", "DessiLBI"), check_both(app)):
                print(f"{app}\t{check}\t{error:.1e}\t{rep.params_before}\t{rep.params_after}", flush=True)
            print(f"{app}\t{time.time() - start:.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - the table lists failures too
            print(f"{app}\tFAIL {type(e).__name__}: {str(e)[:200]}", flush=True)
        keras.backend.clear_session()

"""shrink() on every `keras.applications` architecture (weights=None, small inputs).

For each model: random biases and BN statistics (so removed units output
nonzero constants), a random 50 % unit mask over its producers (the classifier
left whole); the shrunk model must equal the reference (the sparse model with
the removed units' kernel, bias and BN γ/β zeroed) within 1e-5 relative.
Then one DessiLBI step with `structures_for` (filters of every conv, Dense
kernels elementwise): shrinking by its supp(Γ) equals `strip` with the same
units zeroed.

Slow (hours on two CPU cores: each model is built, shrunk and run at full
width), so it is its own step, skipped unless TF_DESSILBI_APPLICATIONS=1:

    make test-applications
    TF_DESSILBI_APPLICATIONS=1 pytest tests/test_shrink_applications.py -k MobileNet

``python -m tests.test_shrink_applications [names]`` prints the table
(CHECKS=check_unit_mask for the mask check alone).
"""

import os


import keras
import numpy as np
import pytest
from absl.testing import parameterized

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


def check_unit_mask(name, seed=0):
    """The random-mask check; returns (relative error, report)."""
    model = build(name, seed)
    masks = ref.random_unit_masks(model, seed, skip=("predictions",))
    x = ref.inputs_for(model, seed, batch=2)
    sparse = ref.sparse_model(model, masks)
    small, report = shrink(model, masks, fold_constants=False, return_report=True)
    reference = ref.zero_units(ref.copy_model(sparse), report.removed)
    return relative_error(small, reference, x), report


def check_dessilbi_step(name, seed=0):
    """One DessiLBI step; shrink by supp(Γ) against strip with the removed units zeroed."""
    model = build(name, seed)
    opt = tfd.DessiLBI(
        learning_rate=0.1, kappa=1.0, mu=1.0, lambda_=0.1, structure=tfd.structures_for(model)
    )
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    x = ref.inputs_for(model, seed, batch=2)
    model.fit(x, np.array([0, 1]), batch_size=2, epochs=1, verbose=0)
    small, report = shrink(model, optimizer=opt, fold_constants=False, return_report=True)
    reference = ref.zero_units(tfd.strip(model, opt), report.removed)
    return relative_error(small, reference, x), report


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TF_DESSILBI_APPLICATIONS"),
                    reason="the keras.applications sweep: set TF_DESSILBI_APPLICATIONS=1")
class ApplicationsTest(parameterized.TestCase):
    @parameterized.parameters(*APPLICATIONS)
    def test_random_unit_mask_is_exact(self, name):
        error, report = check_unit_mask(name)
        self.assertLessEqual(error, _TOLERANCE)
        self.assertLess(report.params_after, report.params_before)

    @parameterized.parameters(*APPLICATIONS)
    def test_dessilbi_support_is_exact(self, name):
        error, _ = check_dessilbi_step(name)
        self.assertLessEqual(error, _TOLERANCE)


if __name__ == "__main__":
    import sys
    import time

    checks = [check_unit_mask, check_dessilbi_step]
    if os.environ.get("CHECKS"):  # e.g. CHECKS=check_unit_mask
        checks = [c for c in checks if c.__name__ in os.environ["CHECKS"].split(",")]
    for app in sys.argv[1:] or APPLICATIONS:  # the table of the report
        for check in checks:
            start = time.time()
            try:
                error, rep = check(app)
                print(f"{app}\t{check.__name__}\t{error:.1e}\t{rep.params_before}\t"
                      f"{rep.params_after}\t{time.time() - start:.0f}s", flush=True)
            except Exception as e:  # noqa: BLE001 - the table lists failures too
                print(f"{app}\t{check.__name__}\tFAIL {type(e).__name__}: {str(e)[:200]}",
                      flush=True)
            keras.backend.clear_session()

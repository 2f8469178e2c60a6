"""`SteadyPathSpeed`: the regularization path keeps its speed while the learning rate decays.

DessiLBI's V moves at α/μ (Fu et al., ICML 2020, Alg. 1)::

    V_{k+1} = V_k + (α_k/μ)·(W_k − Γ_k),    Γ_{k+1} = κ·prox_λ(V_{k+1})

so the path's time is t_k = Σ_j α_j/μ. Under a decaying learning rate
(cosine, steps) the path slows with α and freezes as α → 0: the filters that
have not crossed λ by mid-training never enter the support (measured in
``tf_dessilbi/configs/fmnist_dessilbi.py``: with cosine decay conv3 never entered, W* at
chance). Holding μ_k proportional to α_k once α has peaked,

    μ_k = μ₀ · max(α_k / α_peak, floor),

keeps α_k/μ_k = α_peak/μ₀: V advances as under the peak rate, and the
coupling step κ·α_k/μ_k·(W − Γ) keeps its peak strength, so W settles on Γ's
support as the loss gradient's step shrinks. During a warm-up (α_k rising)
μ_k = μ₀, the paper's iteration. μ is the optimizer's existing non-trainable
variable, so nothing retraces; μ₀ is restored when training ends (the
optimizer's config keeps μ₀).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import finetune
from tf_dessilbi.masks import unwrap_optimizer


def path_mu(mu0: float, lr: float, peak_lr: float, floor: float) -> float:
    """μ_k = μ₀ · max(α_k / α_peak, floor), capped at μ₀ (α_k ≥ α_peak gives μ₀)."""
    return mu0 * min(1.0, max(lr / peak_lr, floor))


def _peak_so_far(optimizer) -> float:
    """max_{j ≤ k} α_j, k the optimizer's step count (from its schedule, if it has one)."""
    current = float(ops.convert_to_numpy(optimizer.learning_rate))
    config = optimizer.get_config().get("learning_rate")
    if not isinstance(config, dict):
        return current
    schedule = keras.optimizers.schedules.deserialize(config)
    steps = int(ops.convert_to_numpy(optimizer.iterations)) + 1
    # Schedules take scalar steps; 2,000 evenly spaced ones bound the cost of a long run.
    probe = np.unique(np.linspace(0, steps - 1, num=min(steps, 2000)).round().astype(int))
    return max([current] + [float(ops.convert_to_numpy(schedule(int(k)))) for k in probe])


class SteadyPathSpeed(keras.callbacks.Callback):
    """Holds V's speed α/μ at its peak value while the learning rate decays.

    α_peak is the largest learning rate up to the current step (read from the
    optimizer's schedule at train begin, so a run resumed mid-decay keeps its
    speed; a warm-up sees μ₀ throughout).

    Args:
        floor: the smallest μ_k/μ₀ (keeps μ > 0 when α reaches 0), in
            (0, 1]. Defaults to 1e-3.

    Raises:
        ValueError, TypeError: a bad argument; at train begin, an optimizer
            without a ``mu`` variable (not DessiLBI).
    """

    def __init__(self, floor: float = 1e-3):
        super().__init__()
        self.floor = _validate.real("floor", floor, minimum=0.0, min_open=True, maximum=1.0)
        self._mu0 = None
        self._peak = 0.0

    def _optimizer(self):
        optimizer = unwrap_optimizer(self.model.optimizer)
        if not hasattr(optimizer, "mu") or not hasattr(optimizer, "gamma"):
            raise ValueError(
                "SteadyPathSpeed needs a tf_dessilbi.DessiLBI optimizer. "
                f"Received: {type(optimizer).__name__}"
            )
        return optimizer

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        self._mu0 = float(ops.convert_to_numpy(optimizer.mu))
        self._peak = _peak_so_far(optimizer)

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self._optimizer()
        lr = float(ops.convert_to_numpy(optimizer.learning_rate))
        self._peak = max(self._peak, lr)
        if self._peak <= 0.0 or finetune.is_decoupled(optimizer):
            return  # a WStarFinetune has switched the coupling off: μ is its
        _compat.sync_jax_state(self.model)
        optimizer.mu.assign(path_mu(self._mu0, lr, self._peak, self.floor))

    def on_train_end(self, logs=None):
        if self._mu0 is not None:
            _compat.sync_jax_state(self.model)
            self._optimizer().mu.assign(self._mu0)

    def get_config(self):
        return {"floor": self.floor}

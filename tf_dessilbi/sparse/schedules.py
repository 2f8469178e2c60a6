"""Schedules of the mask methods: pure, serializable functions of the step t.

* Pruning schedules (TF-MOT semantics), ``schedule(t) -> (should_prune, s_t)``:
  an update is due when ``begin_step <= t <= end_step`` (``end_step = -1``:
  no end) and ``(t - begin_step) % frequency == 0``.

  - `ConstantSparsity`: s_t = s.
  - `PolynomialDecay` (Zhu & Gupta 2017 with ``power=3``)::

        p   = clip((t - t₀) / (t_end - t₀), 0, 1)
        s_t = s_f + (s_i - s_f) · (1 - p)^power

* `UpdateSchedule(delta_t, end_step, begin_step)`: when SET / RigL update,
  ``schedule(t) -> bool``, every ΔT steps from begin_step to end_step.
* `CosineDropFraction(initial_fraction, end_step)`: the drop fraction of SET
  / RigL, ``f_t = f₀/2 · (1 + cos(π t / T_end))`` for t ≤ T_end, 0 after.
"""

from __future__ import annotations

import math

import keras

from tf_dessilbi import _validate


def _steps(begin_step, end_step, allow_open_end: bool):
    begin = _validate.integer("begin_step", begin_step, minimum=0)
    end = _validate.integer("end_step", end_step)
    if end == -1 and allow_open_end:
        return begin, end
    if end <= begin:
        raise ValueError(
            f"`end_step` must be > `begin_step` ({begin})"
            + (" or -1 (no end)" if allow_open_end else "")
            + f". Received: end_step={end}"
        )
    return begin, end


class PruningSchedule:
    """Base of the pruning schedules: ``__call__(step) -> (should_prune, sparsity)``."""

    def __init__(self, begin_step: int, end_step: int, frequency: int, allow_open_end: bool):
        self.begin_step, self.end_step = _steps(begin_step, end_step, allow_open_end)
        self.frequency = _validate.positive_int("frequency", frequency)

    def should_prune(self, step: int) -> bool:
        step = int(step)
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int):
        return self.should_prune(step), self.sparsity(step)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class ConstantSparsity(PruningSchedule):
    """A constant target sparsity s, applied every ``frequency`` steps (TF-MOT's).

    Args:
        target_sparsity: s ∈ [0, 1).
        begin_step: first step that prunes. Defaults to `0`.
        end_step: last step that may prune, -1 for none. Defaults to `-1`.
        frequency: steps between prunings. Defaults to `100`.
    """

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1,
                 frequency: int = 100):
        self.target_sparsity = _validate.fraction("target_sparsity", target_sparsity)
        super().__init__(begin_step, end_step, frequency, allow_open_end=True)

    def sparsity(self, step: int) -> float:
        return self.target_sparsity

    def get_config(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class PolynomialDecay(PruningSchedule):
    """Sparsity from s_i to s_f along (1 - p)^power (Zhu & Gupta: power 3; TF-MOT's).

    ::

        p   = clip((t - begin_step) / (end_step - begin_step), 0, 1)
        s_t = s_f + (s_i - s_f) · (1 - p)^power

    Args:
        initial_sparsity: s_i ∈ [0, 1).
        final_sparsity: s_f ∈ [0, 1).
        begin_step: t₀. Defaults to `0`.
        end_step: t₀ + nΔt (> begin_step).
        power: the exponent (> 0). Defaults to `3`.
        frequency: Δt, steps between prunings. Defaults to `100`.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int = 0,
                 end_step: int = 1000, power: float = 3.0, frequency: int = 100):
        self.initial_sparsity = _validate.fraction("initial_sparsity", initial_sparsity)
        self.final_sparsity = _validate.fraction("final_sparsity", final_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            # Masks only ever remove weights: a decreasing target would never be reached.
            raise ValueError(
                "`initial_sparsity` must be <= `final_sparsity` (pruning never regrows "
                f"weights). Received: initial_sparsity={initial_sparsity}, "
                f"final_sparsity={final_sparsity}")
        self.power = _validate.positive("power", power)
        super().__init__(begin_step, end_step, frequency, allow_open_end=False)

    def sparsity(self, step: int) -> float:
        span = self.end_step - self.begin_step
        p = min(1.0, max(0.0, (int(step) - self.begin_step) / span))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** self.power

    def get_config(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class UpdateSchedule:
    """When the drop/grow methods update: every ΔT steps in [begin_step, end_step].

    ``schedule(t)`` is True iff ``begin_step <= t <= end_step`` and
    ``(t - begin_step) % delta_t == 0``.

    Args:
        delta_t: ΔT (≥ 1). RigL's default 100.
        end_step: T_end (> begin_step), the last step that may update
            (RigL: 75 % of training).
        begin_step: the first. Defaults to `0`.
    """

    def __init__(self, delta_t: int, end_step: int, begin_step: int = 0):
        self.delta_t = _validate.positive_int("delta_t", delta_t)
        self.begin_step, self.end_step = _steps(begin_step, end_step, allow_open_end=False)

    def __call__(self, step: int) -> bool:
        step = int(step)
        return self.begin_step <= step <= self.end_step and (step - self.begin_step) % self.delta_t == 0

    def get_config(self) -> dict:
        return {"delta_t": self.delta_t, "end_step": self.end_step, "begin_step": self.begin_step}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class CosineDropFraction:
    """The drop fraction f_t = f₀/2 · (1 + cos(π t / T_end)) for t ≤ T_end, 0 after.

    Args:
        initial_fraction: f₀ ∈ [0, 1]. RigL's default 0.3.
        end_step: T_end (> 0).
    """

    def __init__(self, initial_fraction: float = 0.3, end_step: int = 1000):
        self.initial_fraction = _validate.real("initial_fraction", initial_fraction,
                                               minimum=0.0, maximum=1.0)
        self.end_step = _validate.positive_int("end_step", end_step)

    def __call__(self, step: int) -> float:
        step = int(step)
        if step > self.end_step:
            return 0.0
        return self.initial_fraction / 2.0 * (1.0 + math.cos(math.pi * step / self.end_step))

    def get_config(self) -> dict:
        return {"initial_fraction": self.initial_fraction, "end_step": self.end_step}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class ConstantDropFraction:
    """A constant drop fraction f (SET's original, without decay).

    Args:
        fraction: f ∈ [0, 1].
    """

    def __init__(self, fraction: float = 0.3):
        self.fraction = _validate.real("fraction", fraction, minimum=0.0, maximum=1.0)

    def __call__(self, step: int) -> float:
        return self.fraction

    def get_config(self) -> dict:
        return {"fraction": self.fraction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

"""Temperature (β) schedules for Continuous Sparsification, optax style.

Each factory returns a pure function of the step (or epoch) inside a round
giving β as a Python float. β grows geometrically from 1 to β_final over a
round of E epochs, i.e. along β = β_final^p with p the round progress::

    per epoch (the authors' code):  β(e) = β_final^(e/(E−1))
    per step (default here):        β(t) = β_final^(min(t/S, E−1)/(E−1))

with e the epoch and t the step within the round, S steps per epoch. Both
follow the same geometric path and agree at every epoch start, and both reach
β_final at the start of the last epoch (which trains at β_final). The
per-step path avoids the ×β_final^(1/(E−1)) jumps of the per-epoch one (×14
per epoch for β_final = 200, E = 3), which were measured to drive training to
NaN. For E = 1 the per-step path ramps from 1 to β_final over the single
epoch and the per-epoch one stays at 1.
"""

from __future__ import annotations

from typing import Callable


def _validate(final_beta, epochs, steps_per_epoch=1):
    if isinstance(final_beta, bool) or not isinstance(final_beta, (int, float)) or not final_beta >= 1:
        raise ValueError(
            f"`final_beta` must be a number >= 1. Received: final_beta={final_beta!r}"
        )
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {name}={value!r}"
            )


def per_step_beta(final_beta: float, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """β as a function of the step t within a round (geometric, every step).

    Args:
        final_beta: β_final ≥ 1, reached at the start of the last epoch.
        epochs: E, epochs per round.
        steps_per_epoch: S, optimizer steps per epoch.

    Returns:
        ``schedule(step) -> float``; steps past the ramp give β_final.

    Raises:
        ValueError: a bad argument.

    Example:

    ```python
    schedule = per_step_beta(200.0, epochs=3, steps_per_epoch=100)
    schedule(0), schedule(100), schedule(200)   # 1.0, 14.14..., 200.0
    ```
    """
    _validate(final_beta, epochs, steps_per_epoch)
    final_beta = float(final_beta)
    ramp_epochs = max(epochs - 1, 1)

    def schedule(step: int) -> float:
        progress = min(max(float(step), 0.0) / steps_per_epoch, ramp_epochs) / ramp_epochs
        return final_beta**progress

    return schedule


def per_epoch_beta(final_beta: float, epochs: int) -> Callable[[int], float]:
    """β as a function of the epoch e within a round: β_final^(e/(E−1)).

    The authors' schedule (β ×β_final^(1/(E−1)) after each epoch).

    Args:
        final_beta: β_final ≥ 1, reached at the last epoch.
        epochs: E, epochs per round.

    Returns:
        ``schedule(epoch) -> float``; epochs past the last give β_final.

    Raises:
        ValueError: a bad argument.
    """
    _validate(final_beta, epochs)
    final_beta = float(final_beta)
    if epochs == 1:
        return lambda epoch: 1.0

    def schedule(epoch: int) -> float:
        return final_beta ** (min(max(int(epoch), 0), epochs - 1) / (epochs - 1))

    return schedule

"""`BilevelProblem`: min_x Φ(x) = f(x, y*(x)) with y*(x) = argmin_y g(x, y).

x are the hyperparameters (e.g. log-strengths of penalties), y the model's
weights. The problem is two callables on lists of tensors and batch
samplers; the solvers own the variables holding x and y.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional

Loss = Callable[[List[Any], List[Any], Any], Any]
Sampler = Callable[[], Any]


@dataclasses.dataclass
class BilevelProblem:
    """A stochastic bilevel problem.

    Attributes:
        inner_loss: ``g(x, y, batch) -> scalar``, the training objective,
            strongly convex in y near its minimizer (the Neumann series needs
            that); ``x`` and ``y`` are lists of tensors in the order of the
            solver's variables.
        outer_loss: ``f(x, y, batch) -> scalar``, the validation objective.
        inner_sampler: ``() -> batch`` for g (a mini-batch of training data;
            any nest of tensors, leading dimension the batch).
        outer_sampler: ``() -> batch`` for f (validation data).
        inner_large_sampler: ``() -> batch``, the large batch S₁ of VRBO's
            periodic refresh (e.g. the whole training set). Defaults to
            `None`: VRBO then refuses to run.
        outer_large_sampler: the same for f. Defaults to `None`.
    """

    inner_loss: Loss
    outer_loss: Loss
    inner_sampler: Sampler
    outer_sampler: Sampler
    inner_large_sampler: Optional[Sampler] = None
    outer_large_sampler: Optional[Sampler] = None

    def __post_init__(self):
        for name in ("inner_loss", "outer_loss", "inner_sampler", "outer_sampler"):
            value = getattr(self, name)
            if not callable(value):
                raise TypeError(f"`{name}` must be callable. Received: {name}={value!r}")
        for name in ("inner_large_sampler", "outer_large_sampler"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(
                    f"`{name}` must be callable or None. Received: {name}={value!r}"
                )

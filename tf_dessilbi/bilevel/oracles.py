"""Counting oracle calls, so bilevel solvers compare on work, not iterations.

The complexity results of Yang, Ji & Liang (2021) count four oracles: the
gradients Gc(f) and Gc(g) and the second-order products JV(g) (Jacobian ∇ₓ∇_y g
times a vector) and HV(g) (Hessian ∇²_y g times a vector). Every oracle
function in `tf_dessilbi.bilevel.hypergrad` reports itself to the active
`OracleCounter` with `record`, once per call and with the number of examples
of its batch.

Solvers run their steps as `tf.function`s: Python code, hence `record`, runs
when a step is *traced*, not each time it runs. `counted_function` therefore
records the calls of one trace into a per-step cost and adds that cost to the
counter on every call (eager calls re-record each time). Branches are chosen
in Python (never `tf.cond`), so a trace holds exactly the oracles that run.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Callable, Dict, Optional

import tensorflow as tf

KINDS = ("inner_grad", "outer_grad", "hvp", "jvp")

_ACTIVE = threading.local()


def _batch_size(batch) -> int:
    """Examples in a batch: the static leading dimension of its first tensor."""
    for leaf in tf.nest.flatten(batch):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) and shape[0] is not None:
            return int(shape[0])
    return 1


def record(kind: str, batch=None) -> None:
    """Reports one call of oracle ``kind`` on ``batch`` to the active cost."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    cost = getattr(_ACTIVE, "cost", None)
    if cost is not None:
        cost.calls[kind] += 1
        cost.samples[kind] += _batch_size(batch)


class Cost:
    """Oracle calls and the examples they saw, per kind."""

    def __init__(self):
        self.calls: Dict[str, int] = collections.Counter()
        self.samples: Dict[str, int] = collections.Counter()

    def clear(self):
        self.calls.clear()
        self.samples.clear()


@contextlib.contextmanager
def recording(cost: Cost):
    """Routes `record` calls made inside the block to ``cost``."""
    previous = getattr(_ACTIVE, "cost", None)
    _ACTIVE.cost = cost
    try:
        yield cost
    finally:
        _ACTIVE.cost = previous


class OracleCounter:
    """Running totals of oracle calls (``calls``) and of examples (``samples``).

    ``total`` is the number of oracle calls of all kinds, the x-axis of the
    benchmark plots; ``total_samples`` weighs each call by its batch size (a
    VRBO large-batch refresh counts for its size).
    """

    def __init__(self):
        self.calls: Dict[str, int] = {k: 0 for k in KINDS}
        self.samples: Dict[str, int] = {k: 0 for k in KINDS}

    def add(self, cost: Cost) -> None:
        for kind in KINDS:
            self.calls[kind] += cost.calls[kind]
            self.samples[kind] += cost.samples[kind]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def total_samples(self) -> int:
        return sum(self.samples.values())

    def as_dict(self) -> dict:
        return {**self.calls, "total": self.total, "total_samples": self.total_samples}

    def reset(self) -> None:
        for kind in KINDS:
            self.calls[kind] = 0
            self.samples[kind] = 0

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.calls.items())
        return f"OracleCounter({inner}, total={self.total})"


def counted_function(
    fn: Callable, counter: OracleCounter, use_tf_function: bool = True,
    jit_compile: Optional[bool] = None,
) -> Callable:
    """``fn`` (optionally a `tf.function`) that adds its oracle cost to ``counter``.

    The cost of a traced function is the cost recorded at its latest trace
    (every trace of one function has the same oracles: shapes change, code
    paths do not).
    """
    cost = Cost()

    def traced(*args):
        cost.clear()
        with recording(cost):
            return fn(*args)

    # No AutoGraph: the steps branch in Python and loop with tf.while_loop /
    # tf.cond explicitly, so there is nothing to convert (and no source to re-read).
    compiled = (
        tf.function(traced, jit_compile=jit_compile, autograph=False)
        if use_tf_function else traced
    )

    def call(*args):
        out = compiled(*args)
        counter.add(cost)
        return out

    call.cost = cost
    return call

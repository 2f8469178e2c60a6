"""`BilevelTuner`: train a gated model while a bilevel solver tunes λ per layer.

Each step of the tuner is ``warm_steps`` SGD steps with heavy-ball momentum
on the inner loss (y only, counted as Gc(g) calls; the usual CS optimizer)
followed by one step of the chosen solver
(MRBO, VRBO or stocBiO), which updates y and the per-layer log-strengths x
together. β of every gate grows geometrically from 1 to β_final over the
run (per step, as `tf_dessilbi.callbacks.GateTemperature` does), so the
solver sees the same annealed problem as a hand-tuned CS run.

`train_cs_bilevel` is the command-line entry (method ``"cs_bilevel"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_dessilbi.bilevel import cs
from tf_dessilbi.bilevel import hypergrad
from tf_dessilbi.bilevel import oracles
from tf_dessilbi.bilevel.solvers import positive_int
from tf_dessilbi.bilevel.solvers import positive_number


@dataclasses.dataclass
class BilevelTuneResult:
    """What `BilevelTuner.run` found.

    Attributes:
        allocation: per-layer penalty strength λ_l = λ₀·e^{x_l}.
        log_strengths: per-layer x_l.
        densities: hard per-layer density (fraction of kernel entries kept).
        density: hard global density.
        soft_density: d(s) of the outer objective at the end.
        oracle_calls: `OracleCounter.as_dict()` (warm steps included).
        history: per logged step: step, density, x.
    """

    allocation: Dict[str, float]
    log_strengths: Dict[str, float]
    densities: Dict[str, float]
    density: float
    soft_density: float
    oracle_calls: dict
    history: list


def _write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar under the default writer (as `tf_dessilbi.training.summaries.write_scalar`)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=metadata.SerializeToString())


def _sampler(data):
    if callable(data):
        return data
    iterator = iter(data)
    return lambda: next(iterator)


def _concat_sampler(sampler, count):
    def draw():
        batches = [sampler() for _ in range(count)]
        return tf.nest.map_structure(lambda *t: tf.concat(t, 0), *batches)

    return draw


class BilevelTuner:
    """Per-layer CS penalties for a global density target, tuned while training.

    Args:
        model: a built gated model (`tf_dessilbi.gate_model(..., penalty=0.0)`),
            logits output.
        train_data: batched, repeating ``(images, labels)`` dataset (or a
            ``() -> batch`` callable): the inner loss.
        val_data: the same for the outer loss (held-out data).
        target_density: d_target in (0, 1], fraction of gated kernel weights kept.
        method: ``"mrbo"``, ``"vrbo"`` or ``"stocbio"``. Defaults to `"mrbo"`.
        base_penalty: λ₀, the strength at x = 0. Defaults to `1e-8`.
        density_weight: ρ. Defaults to `10.0`.
        final_beta: β at the end of the run (≥ 1). Defaults to `200.0`.
        outer_lr, inner_lr: solver step sizes (> 0). Default to `1.0`, `0.1`.
        neumann_terms: Q ≥ 1. Defaults to `3`.
        neumann_eta: η. Defaults to `None` (``inner_lr``).
        max_outer_step: clip of each x_l step (log units), see
            `BilevelSolver`. Defaults to `0.05`.
        warm_steps: SGD steps on y before each solver step. Defaults to `0`.
        warm_lr: their learning rate. Defaults to `0.1`.
        warm_momentum: their heavy-ball momentum in [0, 1). Defaults to `0.9`.
        refresh_batches: VRBO's S₁ is this many batches. Defaults to `4`.
        log_dir: TensorBoard directory for scalars ``bilevel/x/<layer>``,
            ``bilevel/density``, ``bilevel/soft_density``,
            ``bilevel/hypergrad_norm``, ``bilevel/oracle_calls``. Defaults to `None`.
        log_every: steps between log records. Defaults to `10`.
        solver_kwargs: extra solver arguments (e.g. ``period``). Defaults to `None`.

    Example:

    ```python
    gated = tf_dessilbi.gate_model(model, penalty=0.0)
    result = BilevelTuner(gated, train_ds, val_ds, target_density=0.2).run(500)
    result.allocation  # {"conv1": 1.3e-8, ...}
    ```
    """

    def __init__(self, model, train_data, val_data, target_density: float,
                 method: str = "mrbo", base_penalty: float = 1e-8,
                 density_weight: float = 10.0, final_beta: float = 200.0,
                 outer_lr: float = 1.0, inner_lr: float = 0.1, neumann_terms: int = 3,
                 neumann_eta: Optional[float] = None, max_outer_step: Optional[float] = 0.05,
                 warm_steps: int = 0, warm_lr: float = 0.1, warm_momentum: float = 0.9,
                 refresh_batches: int = 4, log_dir: Optional[str] = None,
                 log_every: int = 10, solver_kwargs: Optional[dict] = None):
        from tf_dessilbi.bilevel import SOLVERS

        if method not in SOLVERS:
            raise ValueError(
                f"`method` must be one of {sorted(SOLVERS)}. Received: method={method!r}"
            )
        if (isinstance(final_beta, bool) or not isinstance(final_beta, (int, float))
                or not final_beta >= 1):
            raise ValueError(
                f"`final_beta` must be a number >= 1. Received: final_beta={final_beta!r}"
            )
        self.warm_steps = positive_int("warm_steps", warm_steps, minimum=0)
        self.log_every = positive_int("log_every", log_every)
        refresh_batches = positive_int("refresh_batches", refresh_batches)
        self.warm_lr = positive_number("warm_lr", warm_lr)
        if isinstance(warm_momentum, bool) or not isinstance(warm_momentum, (int, float)) \
                or not 0 <= warm_momentum < 1:
            raise ValueError(
                f"`warm_momentum` must be in [0, 1). Received: warm_momentum={warm_momentum!r}"
            )
        self.warm_momentum = float(warm_momentum)
        inner, outer = _sampler(train_data), _sampler(val_data)
        self.problem, self.layout = cs.cs_problem(
            model, inner, outer, target_density, base_penalty, density_weight,
            _concat_sampler(inner, refresh_batches), _concat_sampler(outer, refresh_batches),
        )
        self.model = model
        self.final_beta = float(final_beta)
        self.base_penalty = float(base_penalty)
        self.x = tf.Variable(tf.zeros(len(self.layout.names)), name="log_strengths")
        self.solver = SOLVERS[method](
            self.problem, [self.x], list(model.trainable_variables),
            outer_lr=positive_number("outer_lr", outer_lr), inner_lr=inner_lr,
            neumann_terms=neumann_terms, neumann_eta=neumann_eta,
            max_outer_step=max_outer_step, **(solver_kwargs or {}),
        )
        self.log_dir = log_dir
        self._warm = None

    def _warm_step(self, batch):
        if self._warm is None:
            solver = self.solver
            slots = [tf.Variable(tf.zeros_like(v), trainable=False) for v in solver.y]

            def body(batch):
                x = [tf.identity(self.x)]
                y = [tf.identity(v) for v in solver.y]
                g = hypergrad.inner_grad(self.problem, x, y, batch)
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in g])

                def commit():
                    for v, m, gi in zip(solver.y, slots, g):
                        m.assign(self.warm_momentum * m + gi)
                        v.assign_sub(self.warm_lr * m)
                    return tf.constant(True)

                return tf.cond(finite, commit, lambda: tf.constant(False))

            self._warm = oracles.counted_function(body, solver.counter, solver.use_tf_function)
        if not bool(self._warm(batch)):
            raise FloatingPointError("BilevelTuner warm step: non-finite ∇_y g; nothing updated.")

    def _set_beta(self, step, num_steps):
        beta = self.final_beta ** (step / max(num_steps - 1, 1))
        for gate in self.layout.gates:
            gate.beta.assign(beta)
        return beta

    def _soft_density(self):
        y = [tf.identity(v) for v in self.solver.y]
        betas = [tf.cast(g.beta, tf.float32) for g in self.layout.gates]
        return float(self.layout.soft_density(y, betas))

    def run(self, num_steps: int) -> BilevelTuneResult:
        """Runs ``num_steps`` tuner steps and returns the allocation found."""
        num_steps = positive_int("num_steps", num_steps)
        writer = tf.summary.create_file_writer(self.log_dir) if self.log_dir else None
        history = []
        for step in range(num_steps):
            self._set_beta(step, num_steps)
            for _ in range(self.warm_steps):
                self._warm_step(self.problem.inner_sampler())
            metrics = self.solver.step()
            if step % self.log_every == 0 or step == num_steps - 1:
                record = {"step": step, "density": self.layout.density(),
                          "soft_density": self._soft_density(),
                          "hypergrad_norm": metrics["hypergrad_norm"],
                          "x": dict(zip(self.layout.names, self.x.numpy().tolist())),
                          "oracle_calls": self.solver.counter.total}
                history.append(record)
                logging.info("bilevel step %d: density %.4f (soft %.4f), x %s",
                             step, record["density"], record["soft_density"],
                             np.round(self.x.numpy(), 3).tolist())
                if writer is not None:
                    with writer.as_default():
                        for name, value in record["x"].items():
                            _write_scalar(f"bilevel/x/{name}", value, step)
                        for key in ("density", "soft_density", "hypergrad_norm", "oracle_calls"):
                            _write_scalar(f"bilevel/{key}", record[key], step)
        if writer is not None:
            writer.flush()
        x = dict(zip(self.layout.names, self.x.numpy().tolist()))
        return BilevelTuneResult(
            allocation={k: self.base_penalty * math.exp(v) for k, v in x.items()},
            log_strengths=x,
            densities=self.layout.densities(),
            density=self.layout.density(),
            soft_density=self._soft_density(),
            oracle_calls=self.solver.counter.as_dict(),
            history=history,
        )


def train_cs_bilevel(config, workdir: str, data, strategy=None, return_model: bool = False) -> dict:
    """The ``cs_bilevel`` method: per-layer CS penalties tuned by a bilevel solver.

    Args:
        config: a training config with a ``bilevel`` section
            (``tf_dessilbi/configs/fmnist_cs_bilevel.py``).
        workdir: output folder (``summary.json``, ``tensorboard/``).
        data: `tf_dessilbi.input_pipeline.Datasets`. The outer (validation)
            batches are drawn from a second iterator over ``data.train``
            (no held-out split exists there); ``data.eval`` is only used
            for the reported accuracy.
        strategy: a single-replica `tf.distribute` strategy (or `None`);
            the bilevel steps are not distributed.
        return_model: also return the tuned gated model (in ticket mode)
            under ``"model"``, as the CLI's ``run`` hooks do (it then
            reports, shrinks and exports it). Defaults to `False`.

    Returns:
        The summary: eval accuracy of the soft model and of the ticket (hard
        mask), sparsity, the per-layer allocation, oracle counts, time.

    Raises:
        ValueError: a strategy with more than one replica.
    """
    if not isinstance(return_model, bool):
        raise TypeError(f"`return_model` must be a bool. Received: return_model={return_model!r}")
    from tf_dessilbi.gates.gating import gate_model
    from tf_dessilbi.gates.gating import set_ticket_mode
    from tf_dessilbi import models as models_lib

    if strategy is not None and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            "train_cs_bilevel runs on one replica; the bilevel steps are not "
            f"distributed. Received a strategy with {strategy.num_replicas_in_sync} "
            "replicas: use --config.strategy=default."
        )
    start = time.time()
    b = config.bilevel
    steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    num_steps = int(b.num_steps) or max(
        config.num_epochs * steps_per_epoch // (b.warm_steps + 1), 1)
    kwargs = dict(input_shape=data.input_shape, num_classes=data.num_classes)
    if config.model.weight_decay:
        kwargs["weight_decay"] = config.model.weight_decay
    model = gate_model(
        models_lib.get_model(config.model.name, **kwargs),
        granularity=config.gates.granularity, gate_init=config.gates.gate_init, penalty=0.0,
    )
    log_dir = os.path.join(workdir, "tensorboard") if config.outputs.tensorboard else None
    tuner = BilevelTuner(
        model, data.train, data.train, target_density=b.target_density,
        method=b.method, base_penalty=config.gates.penalty,
        density_weight=b.density_weight, final_beta=config.gates.final_beta,
        outer_lr=b.outer_lr, inner_lr=b.inner_lr, neumann_terms=b.neumann_terms,
        neumann_eta=b.neumann_eta or None, warm_steps=b.warm_steps,
        warm_lr=b.warm_lr, warm_momentum=b.warm_momentum,
        max_outer_step=b.max_outer_step or None,
        log_dir=log_dir, log_every=b.log_every, solver_kwargs=dict(b.solver_kwargs),
    )
    result = tuner.run(num_steps)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    steps = config.eval_steps or None
    soft = model.evaluate(data.eval, steps=steps, verbose=0)
    set_ticket_mode(model, True)
    hard = model.evaluate(data.eval, steps=steps, verbose=0)
    summary = {
        "workdir": os.path.abspath(workdir),
        "method": "cs_bilevel",
        "solver": b.method,
        "model": config.model.name,
        "dataset": config.data.name,
        "steps": num_steps,
        "eval": {"loss": float(soft[0]), "accuracy": float(soft[1])},
        "eval_ticket": {"loss": float(hard[0]), "accuracy": float(hard[1])},
        "sparsity": {"weights_kept_fraction": result.density,
                     "per_layer_density": result.densities},
        "target_density": b.target_density,
        "allocation": result.allocation,
        "oracle_calls": result.oracle_calls,
        "time_s": time.time() - start,
    }
    if not all(math.isfinite(v) for v in result.allocation.values()):
        raise FloatingPointError(f"non-finite allocation {result.allocation}")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if return_model:
        summary["model"] = model
    return summary

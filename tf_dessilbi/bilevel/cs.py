r"""Per-layer Continuous Sparsification penalties tuned for a global density.

With gate scores s_l of gated layer l, temperature β and x_l the log of the
layer's penalty strength (λ_l = λ₀·e^{x_l})::

    inner g(x, y) = L_train(y) + Σ_l λ₀ e^{x_l} Σ σ(β s_l)
    outer f(y)    = L_val(y) + ρ · max(0, d(s) − d_target)²
    d(s)          = d_hard(s) + [d_soft(s) − d_hard(s)]_stop-gradient
    d_soft(s)     = Σ_l n_l Σ σ(β s_l) / Σ_l N_l,   d_hard(s) = Σ_l n_l Σ 1[s_l > 0] / Σ_l N_l

i.e. the value of d is the ticket's (hard) density and its gradient that of
the soft one (straight-through): the penalty stops once the ticket is at the
target, although σ(βs) of scores near 0 stays ≈ ½ (measured: hard density
0.26 with soft density 0.49 after a short run).

y are all the model's trainable weights (kernels, biases, scores), n_l the
kernel entries one gate of layer l covers, N_l the kernel size. The
gates' own fixed penalty λ is not used (build the gates with
``penalty=0``; a non-zero one is ignored here). The reported densities are
hard: the fraction of kernel entries with s > 0, the ticket's.

CS has no stationary inner solution (scores keep moving as β grows), so
the Neumann hypergradient is a local model of how a change of λ_l moves the
scores over the next steps, not the implicit gradient at y*(x): the tuner
is judged on the density and accuracy it reaches (bench/BILEVEL.md).

`train_cs_bilevel` is the command-line entry (method ``"cs_bilevel"``).
TensorFlow backend only (`keras.Model.stateless_call` under
`tf.GradientTape`).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from tf_dessilbi.bilevel.problem import BilevelProblem
from tf_dessilbi.bilevel.solvers import positive_number


def require_tensorflow_backend(what: str) -> None:
    """RuntimeError unless Keras runs on TensorFlow (the tapes need TF tensors)."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} differentiates a Keras model with tf.GradientTape and needs "
            f"the TensorFlow backend; Keras runs on {backend!r}. Set "
            f"KERAS_BACKEND=tensorflow."
        )


def _gates(model):
    import tf_dessilbi as tfd

    gates = tfd.gated_layers(model)
    if not gates:
        raise ValueError(
            f"model {model.name!r} has no SparseGate layers; gate it with "
            f"tf_dessilbi.gate_model(model, penalty=0.0) first."
        )
    return gates


class CSLayout:
    """Where each gated layer's scores sit in ``model.trainable_variables``."""

    def __init__(self, model: keras.Model):
        self.gates = _gates(model)
        self.names = [g.layer.name for g in self.gates]
        trainable = list(model.trainable_variables)
        ids = [id(v) for v in trainable]
        self.score_index: List[int] = []
        self.per_gate: List[float] = []
        self.kernel_sizes: List[int] = []
        for gate in self.gates:
            if id(gate.gate_scores) not in ids:
                raise ValueError(f"gate scores of {gate.name!r} are not trainable.")
            self.score_index.append(ids.index(id(gate.gate_scores)))
            kernel = int(np.prod(gate._kernel_variable.shape))
            gates_n = int(np.prod(gate.gate_scores.shape))
            self.kernel_sizes.append(kernel)
            self.per_gate.append(kernel / gates_n)
        self.total = float(sum(self.kernel_sizes))

    def soft_density(self, y, betas) -> tf.Tensor:
        kept = [
            self.per_gate[i] * tf.reduce_sum(tf.sigmoid(betas[i] * y[j]))
            for i, j in enumerate(self.score_index)
        ]
        return tf.add_n(kept) / self.total

    def density_estimate(self, y, betas) -> tf.Tensor:
        """d(s): the hard density's value with the soft density's gradient."""
        soft = self.soft_density(y, betas)
        kept = [
            self.per_gate[i] * tf.reduce_sum(tf.cast(y[j] > 0, soft.dtype))
            for i, j in enumerate(self.score_index)
        ]
        hard = tf.add_n(kept) / self.total
        return soft + tf.stop_gradient(hard - soft)

    def densities(self) -> Dict[str, float]:
        """Hard per-layer densities: the fraction of kernel entries with s > 0."""
        return {
            name: float(np.mean(g.kept_mask()))
            for name, g in zip(self.names, self.gates)
        }

    def density(self) -> float:
        """Hard global density over all gated kernels."""
        kept = sum(float(np.sum(g.kept_mask())) for g in self.gates)
        return kept / self.total


def cs_problem(
    model: keras.Model,
    inner_sampler,
    outer_sampler,
    target_density: float,
    base_penalty: float = 1e-8,
    density_weight: float = 10.0,
    inner_large_sampler=None,
    outer_large_sampler=None,
):
    """The per-layer CS bilevel problem on a gated classifier (logits output).

    Args:
        model: a built model with `SparseGate` layers.
        inner_sampler / outer_sampler: ``() -> (images, labels)`` of the
            training and validation data.
        target_density: d_target in (0, 1].
        base_penalty: λ₀ > 0, the strength at x = 0. Defaults to `1e-8` (the
            CS authors' λ).
        density_weight: ρ > 0. Defaults to `10.0`.
        inner_large_sampler / outer_large_sampler: S₁ batches for VRBO.

    Returns:
        ``(problem, layout)``; x is one vector of per-layer log-strengths
        (length ``len(layout.names)``), y is ``model.trainable_variables``.
    """
    if not (isinstance(target_density, (int, float)) and 0 < target_density <= 1):
        raise ValueError(
            f"`target_density` must be in (0, 1]. Received: target_density={target_density!r}"
        )
    base_penalty = positive_number("base_penalty", base_penalty)
    density_weight = positive_number("density_weight", density_weight)
    require_tensorflow_backend("cs_problem")
    layout = CSLayout(model)
    non_trainable = list(model.non_trainable_variables)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def betas():
        return [tf.cast(g.beta, tf.float32) for g in layout.gates]

    def forward(y, images, training):
        out = model.stateless_call(list(y), non_trainable, images, training=training)[0]
        return out

    def inner(x, y, batch):
        images, labels = batch
        loss = ce(labels, forward(y, images, True))
        b = betas()
        strengths = base_penalty * tf.exp(x[0])
        penalty = tf.add_n([
            strengths[i] * tf.reduce_sum(tf.sigmoid(b[i] * y[j]))
            for i, j in enumerate(layout.score_index)
        ])
        return loss + penalty

    def outer(x, y, batch):
        images, labels = batch
        loss = ce(labels, forward(y, images, False))
        excess = tf.nn.relu(layout.density_estimate(y, betas()) - target_density)
        return loss + density_weight * tf.square(excess)

    problem = BilevelProblem(inner, outer, inner_sampler, outer_sampler,
                             inner_large_sampler, outer_large_sampler)
    return problem, layout


def config_section():
    """The ``config.bilevel`` section with its defaults (for ``base_config``).

    ``method`` picks the solver; ``num_steps`` 0 means
    ``num_epochs × steps_per_epoch / (warm_steps + 1)`` tuner steps.
    """
    import ml_collections

    b = ml_collections.ConfigDict()
    b.method = "mrbo"  # mrbo | vrbo | stocbio
    b.target_density = 0.27  # fraction of gated kernel weights kept
    b.density_weight = 1000.0  # ρ
    b.outer_lr = 1000.0  # γ (MRBO), α (VRBO, stocBiO) on the log-strengths
    b.max_outer_step = 0.05  # clip of each x_l step in log units (0: none)
    b.inner_lr = 0.05  # the solver's step on the weights
    b.neumann_terms = 3  # Q
    b.neumann_eta = 0.0  # η; 0: inner_lr
    b.warm_steps = 9  # SGD steps on the weights per solver step
    b.warm_lr = 0.05  # as configs/fmnist_sgd.py: lr 0.05, momentum 0.9
    b.warm_momentum = 0.9
    b.num_steps = 0
    b.log_every = 10
    b.solver_kwargs = ml_collections.ConfigDict()  # e.g. period, inner_steps
    return b


def train_cs_bilevel(config, workdir: str, data, strategy=None, return_model: bool = False) -> dict:
    """The ``cs_bilevel`` method: per-layer CS penalties tuned by a bilevel solver.

    Args:
        config: a training config with a ``bilevel`` section
            (``configs/fmnist_cs_bilevel.py``).
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
    import tf_dessilbi as tfd
    from tf_dessilbi import models as models_lib
    from tf_dessilbi.bilevel.tuner import BilevelTuner

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
    model = tfd.gate_model(
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
    tfd.set_ticket_mode(model, True)
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

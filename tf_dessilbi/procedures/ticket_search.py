"""Continuous Sparsification ticket search: rounds, rewinding, the ticket.

The procedure of Savarese, Silva & Maire (2020), Algorithm 1:

1. R rounds of E epochs each, training weights w and gate scores s with
   β annealed from 1 to β_final (`GateTemperature`). In round 0 the weights
   are checkpointed after ``rewind_epoch`` epochs.
2. Between rounds the gates are reset, s ← min(β·s, s₀), β ← 1.
3. After the last round: hard masks 1[s > 0]/σ(s₀) (ticket mode), weights
   rewound to the round-0 checkpoint, and the ticket trained (gate scores
   frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import keras
import numpy as np
from absl import logging
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.gates import gating
from tf_dessilbi.gates.callbacks import GateTemperature
from tf_dessilbi.layers.sparse_gate import check_gate_arguments


def _gate_variable_ids(model):
    ids = set()
    for gate in gating.gated_layers(model):
        ids.update(id(v) for v in (gate.gate_scores, gate.beta, gate.ticket))
    return ids


def _weight_variables(model):
    """Every model variable except the gates' own (scores, β, mode)."""
    gate_ids = _gate_variable_ids(model)
    return [v for v in model.weights if id(v) not in gate_ids]


class _RewindCheckpoint(keras.callbacks.Callback):
    """Keeps a copy of the weights after ``epoch`` epochs of this fit."""

    def __init__(self, epoch: int, variables):
        super().__init__()
        self.epoch = epoch
        self.variables = variables
        self.values = None

    def _take(self):
        _compat.sync_jax_state(self.model)
        self.values = [np.array(ops.convert_to_numpy(v)) for v in self.variables]

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self._take()

    def on_train_end(self, logs=None):
        if self.values is None:
            self._take()


@dataclasses.dataclass
class TicketSearchResult:
    """What `TicketSearch.run` returns.

    Attributes:
        model: the trained ticket (gated model in ticket mode; strip it with
            `tf_dessilbi.strip` for a plain model).
        masks: ``{layer name: bool kernel mask}`` of the ticket.
        rounds: one dict per search round: ``round``, ``weight_fraction``
            (kept by the hard mask), ``weights_kept``, ``weights_total`` and,
            with validation data, ``val_loss``/``val_accuracy`` of the soft
            (search) and hard (ticket-mode) model at the end of the round.
        ticket_history: `History.history` of the ticket training.
        ticket_metrics: validation metrics of the trained ticket (empty
            without validation data).
    """

    model: keras.Model
    masks: dict
    rounds: list
    ticket_history: dict
    ticket_metrics: dict

    @property
    def weight_fraction(self) -> float:
        """Fraction of gated weights the ticket keeps."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.size for m in self.masks.values())
        return kept / max(total, 1)


class TicketSearch:
    """Finds and trains a Continuous Sparsification ticket.

    Args:
        model: a built Keras model, or a no-argument builder returning one.
            Models without `SparseGate` layers are gated with
            `tf_dessilbi.gate_model` (Sequential/Functional); models with gates
            (e.g. subclassed ones) are used as they are.
        optimizer: a no-argument factory returning a fresh optimizer (called
            once per round and once for the ticket), or an optimizer
            identifier string such as ``"sgd"``. The authors use SGD lr 0.1,
            Nesterov momentum 0.9, weight decay 1e-4 on weights only
            (``optimizer.exclude_from_weight_decay(var_names=["gate"])``).
        rounds: R, search rounds. Defaults to `3`.
        epochs_per_round: E, epochs per search round. Defaults to `3`.
        rewind_epoch: k, the weights after k epochs of round 0 are the
            ticket's starting point (0 = the initialization).
            Defaults to `2`.
        final_beta: β_final. Defaults to `200.0`.
        penalty: λ per gate, summed, when the model is gated here.
            Defaults to `1e-8`.
        per_step: anneal β every step (else once per epoch).
            Defaults to `True`.
        ticket_epochs: epochs of ticket training. Defaults to `None`
            (``epochs_per_round``).
        loss: Keras loss. Defaults to
            `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
        metrics: Keras metrics. Defaults to `("accuracy",)`.
        granularity: gate granularity when the model is gated here.
            Defaults to `"weight"`.
        gate_init: s₀ when the model is gated here. Defaults to `0.0`.
        layer_filter: `gate_model` filter when the model is gated here.
            Defaults to `None` (every supported layer).
        jit_compile: passed to ``compile``. Defaults to `"auto"`.

    Raises:
        ValueError / TypeError: bad arguments.

    Example:

    ```python
    search = TicketSearch(
        tf_dessilbi.models.fmnist_cnn_s,
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        rounds=2, epochs_per_round=3, rewind_epoch=1)
    result = search.run(train_ds, val_ds)
    result.weight_fraction, result.ticket_metrics["accuracy"]
    ```

    Run it under ``strategy.scope()`` to train with a distribution strategy.
    """

    def __init__(
        self,
        model: Union[keras.Model, Callable[[], keras.Model]],
        optimizer: Union[str, Callable[[], Any]],
        rounds: int = 3,
        epochs_per_round: int = 3,
        rewind_epoch: int = 2,
        final_beta: float = 200.0,
        penalty: float = 1e-8,
        per_step: bool = True,
        ticket_epochs: Optional[int] = None,
        loss: Any = None,
        metrics=("accuracy",),
        granularity: str = "weight",
        gate_init: float = 0.0,
        layer_filter=None,
        jit_compile="auto",
    ):
        if not (isinstance(model, keras.Model) or callable(model)):
            raise TypeError(
                f"`model` must be a keras.Model or a builder returning one. "
                f"Received: model={model!r}"
            )
        if isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "`optimizer` must be a factory (e.g. `lambda: keras.optimizers."
                "SGD(0.1)`), not an optimizer instance: each round and the "
                "ticket start with a fresh optimizer."
            )
        if not (isinstance(optimizer, str) or callable(optimizer)):
            raise TypeError(
                f"`optimizer` must be a no-argument factory returning an "
                f"optimizer, or an optimizer name. Received: optimizer={optimizer!r}"
            )
        self.rounds = _validate.positive_int("rounds", rounds)
        self.epochs_per_round = _validate.positive_int("epochs_per_round", epochs_per_round)
        self.rewind_epoch = _validate.integer("rewind_epoch", rewind_epoch, minimum=0)
        if rewind_epoch > epochs_per_round:
            raise ValueError(
                f"`rewind_epoch` must be <= epochs_per_round={epochs_per_round}. "
                f"Received: rewind_epoch={rewind_epoch!r}"
            )
        self.ticket_epochs = _validate.positive_int(
            "ticket_epochs", epochs_per_round if ticket_epochs is None else ticket_epochs
        )
        if not isinstance(per_step, bool):
            raise TypeError(f"`per_step` must be a bool. Received: per_step={per_step!r}")
        GateTemperature(final_beta, epochs_per_round, per_step=per_step)  # validates
        granularity, gate_init, penalty = check_gate_arguments(granularity, gate_init, penalty)
        self.gate_kwargs = dict(granularity=granularity, gate_init=gate_init, penalty=penalty)
        self.layer_filter = layer_filter
        self._model_arg = model
        self._optimizer_arg = optimizer
        self.final_beta = float(final_beta)
        self.per_step = per_step
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.metrics = list(metrics) if metrics else []
        self.jit_compile = jit_compile
        self.rewind_weights = None
        self.model = None

    # ----------------------------------------------------------------- pieces
    def _build_model(self) -> keras.Model:
        model = self._model_arg
        if not isinstance(model, keras.Model):
            model = model()
            if not isinstance(model, keras.Model):
                raise TypeError(f"The model builder returned {model!r}, not a keras.Model.")
        if not gating.gated_layers(model):
            model = gating.gate_model(model, self.layer_filter, **self.gate_kwargs)
        return model

    def _optimizer(self):
        if isinstance(self._optimizer_arg, str):
            return keras.optimizers.get(self._optimizer_arg)
        return self._optimizer_arg()

    def _compile(self, model):
        model.compile(
            optimizer=self._optimizer(),
            loss=self.loss,
            metrics=self.metrics,
            jit_compile=self.jit_compile,
        )

    @staticmethod
    def _fit(model, data, epochs, callbacks, fit_kwargs):
        if isinstance(data, tuple) and len(data) == 2:
            return model.fit(data[0], data[1], epochs=epochs, callbacks=callbacks, **fit_kwargs)
        return model.fit(data, epochs=epochs, callbacks=callbacks, **fit_kwargs)

    @staticmethod
    def _evaluate(model, data, verbose):
        if isinstance(data, tuple) and len(data) == 2:
            return model.evaluate(data[0], data[1], verbose=verbose, return_dict=True)
        return model.evaluate(data, verbose=verbose, return_dict=True)

    def _round_record(self, model, index, val_ds, verbose):
        masks = gating.gate_masks(model)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.size for m in masks.values())
        record = {
            "round": index,
            "weights_kept": kept,
            "weights_total": total,
            "weight_fraction": kept / max(total, 1),
        }
        if val_ds is not None:
            for mode, ticket in (("soft", False), ("hard", True)):
                gating.set_ticket_mode(model, ticket)
                for key, value in self._evaluate(model, val_ds, verbose).items():
                    record[f"val_{key}_{mode}"] = float(value)
            gating.set_ticket_mode(model, False)
        logging.info("TicketSearch round %d: %s", index, record)
        return record

    # -------------------------------------------------------------------- run
    def run(self, train_ds, val_ds=None, verbose: int = 0, callbacks=None, **fit_kwargs) -> TicketSearchResult:
        """Runs the search rounds, then trains the rewound ticket.

        Args:
            train_ds: training data as accepted by `fit` (a dataset, or an
                ``(x, y)`` tuple).
            val_ds: validation data for the per-round and final metrics.
                Defaults to `None`.
            verbose: `fit`/`evaluate` verbosity. Defaults to `0`.
            callbacks: extra callbacks for every `fit`. Defaults to `None`.
            **fit_kwargs: other `fit` arguments (``batch_size``,
                ``steps_per_epoch``, ...).

        Returns:
            A `TicketSearchResult`.
        """
        model = self._build_model()
        self.model = model
        callbacks = list(callbacks or [])
        weights = _weight_variables(model)
        rewind = _RewindCheckpoint(self.rewind_epoch, weights)
        records = []
        for index in range(self.rounds):
            if index > 0:
                gating.reset_gates(model)
            gating.set_ticket_mode(model, False)
            self._compile(model)
            temperature = GateTemperature(
                self.final_beta, self.epochs_per_round, per_step=self.per_step,
                steps_per_epoch=fit_kwargs.get("steps_per_epoch"),
            )
            round_callbacks = [temperature] + ([rewind] if index == 0 else []) + callbacks
            self._fit(model, train_ds, self.epochs_per_round, round_callbacks,
                      dict(fit_kwargs, verbose=verbose))
            records.append(self._round_record(model, index, val_ds, verbose))
        self.rewind_weights = rewind.values

        # The ticket: hard masks, weights rewound, gate scores frozen.
        masks = gating.gate_masks(model)
        gating.set_ticket_mode(model, True)
        for variable, value in zip(weights, rewind.values):
            variable.assign(value)
        for gate in gating.gated_layers(model):
            gate.gate_scores.trainable = False
        self._compile(model)
        history = self._fit(model, train_ds, self.ticket_epochs, callbacks,
                            dict(fit_kwargs, verbose=verbose))
        metrics = {}
        if val_ds is not None:
            metrics = {k: float(v) for k, v in self._evaluate(model, val_ds, verbose).items()}
        logging.info("TicketSearch ticket: %s", metrics)
        return TicketSearchResult(
            model=model,
            masks=masks,
            rounds=records,
            ticket_history=dict(history.history),
            ticket_metrics=metrics,
        )

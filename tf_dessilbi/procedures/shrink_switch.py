"""Train on the small network: switch a run to the shrunk model once its structure is fixed.

`WStarFinetune` fixes supp Γ at its fork and then trains the full-width
network, projecting it onto W* after every step. Once the structure is
fixed, the units W* zeroes never come back, so the same computation runs on
the physically smaller network: `switch_to_small` shrinks the model
(`tf_dessilbi.shrink`), cuts the optimizer's state onto it
(`tf_dessilbi.shrink.carry.carry_optimizer`: momentum, Adam's m and v,
DessiLBI's V, the step count and with it the learning-rate schedule) and
compiles it as the big model was; `fit_with_switch` runs one `fit` on the
big model up to the fork and a second `fit(initial_epoch=...)` on the small
one, with the same callbacks.

What is frozen, so that both runs are the same computation. The masked
fine-tune (with ``prune_bias``, the default) zeroes after every step

    W ← W ⊙ 1[Γ ≠ 0],  b_j, γ_j, β_j ← 0 for every unit j outside the support,

so a removed unit outputs exactly 0 (a conv → BN channel: 0·x̂ + 0 even in
training mode; act(0) = 0 for ReLU-like activations), whatever its weights
do inside the step. Its consumers' rows that read it then get zero
gradient, and every other weight's update (SGD, momentum, Nesterov, Adam,
DessiLBI with the coupling off) reads only its own gradient and slots, which
are the same in the small model. The small model keeps the projection for
the entries of kept units that W* still zeroes (`FixedMaskProjection`: an
elementwise support inside a kept neuron, a filter one residual branch
dropped and another kept), with the support frozen at the switch. So N
steps on the small model give the masked fine-tune's weights at the kept
entries, to float32 rounding (convolutions over fewer channels sum in
another order).

Where they differ, and what the switch does about it:

* DessiLBI with the coupling on (``WStarFinetune(decouple=False)``): V still
  moves and a unit can leave the support; the small model's group norms
  ‖V_g‖₂ lose the rows of removed inputs. The switch refuses it (ValueError).
* ``prune_bias=False``, or an activation with act(0) ≠ 0 (sigmoid): a removed
  unit outputs a constant the masked run keeps feeding forward through
  weights that keep training; `shrink` folds it into the consumer's bias
  once. Not the same computation: the switch refuses a shrink that folded.
* ``global_clipnorm``: the norm sums the removed weights' gradients (e.g.
  β of a removed BN channel); Dropout: its random draws follow the tensor
  shapes. Both run, but the two runs then differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import keras
import numpy as np

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi import walk
from tf_dessilbi.dessilbi import finetune as finetune_lib
from tf_dessilbi.dessilbi import w_star as w_star_lib
from tf_dessilbi.masks import unwrap_optimizer
from tf_dessilbi.shrink import api as shrink_api
from tf_dessilbi.shrink import carry as carry_lib


class FixedMaskProjection(keras.callbacks.Callback):
    """After every training step, W ← W ⊙ M for fixed boolean masks M.

    The small model's half of the masked fine-tune: the entries W* still
    zeroes inside the units `shrink` kept, with the support frozen at the
    switch.

    Args:
        masks: ``{variable path: bool array}`` (True = kept), each shaped
            like the model's variable of that path.

    Raises:
        ValueError: at train begin, a path the model has no variable for, or
            a mask of the wrong shape.
    """

    def __init__(self, masks: dict):
        super().__init__()
        if not isinstance(masks, dict):
            raise TypeError(f"`masks` must be a dict {{variable path: bool array}}. "
                            f"Received: masks={masks!r}")
        self.masks = {str(path): np.asarray(mask, bool) for path, mask in masks.items()}
        self._projection = None

    def on_train_begin(self, logs=None):
        variables = {v.path: v for v in self.model.weights}
        targets = []
        for path, mask in self.masks.items():
            if path not in variables:
                raise ValueError(f"FixedMaskProjection: model {self.model.name!r} has no variable "
                                 f"{path!r}. Its variables: {sorted(variables)}")
            if tuple(variables[path].shape) != mask.shape:
                raise ValueError(f"FixedMaskProjection: the mask of {path!r} has shape "
                                 f"{mask.shape}, the variable {tuple(variables[path].shape)}.")
            targets.append((variables[path], mask))

        def projection():
            for variable, mask in targets:
                value = keras.ops.convert_to_tensor(variable)
                variable.assign(keras.ops.where(mask, value, keras.ops.zeros_like(value)))

        self._projection = projection
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self._projection = tf.function(projection)
        self._project()

    def _project(self):
        if self.masks:
            _compat.sync_jax_state(self.model)
            self._projection()

    def on_train_batch_end(self, batch, logs=None):
        self._project()

    def get_config(self):
        return {"masks": {path: mask.tolist() for path, mask in self.masks.items()}}


@dataclasses.dataclass
class Switch:
    """A switch to the small model.

    Attributes:
        model: the shrunk model, compiled with the carried optimizer.
        report: the `ShrinkReport` (``report.kept``: the big model's indices).
        masks: ``{variable path: bool mask}`` the small model keeps
            projecting (`FixedMaskProjection`); ``{}`` when W* zeroes no
            entry of a kept unit.
        step: the optimizer step the small model starts at.
        epoch: the epoch it starts at (``None`` outside `fit_with_switch`).
        big_shapes: ``{layer: kernel shape}`` of the big model's coupled
            kernels, for records kept at the big model's widths (filled by
            the CLI's path recorder).
        sparsity: the big model's `SparsityReport` at the switch (the CLI's:
            supp Γ is fixed, so it is the masked fine-tune's final one).
    """

    model: keras.Model
    report: object
    masks: dict
    step: int
    epoch: Optional[int] = None
    big_shapes: dict = dataclasses.field(default_factory=dict)
    sparsity: object = None

    def projection(self) -> FixedMaskProjection:
        """The callback that keeps the small model on the frozen support."""
        return FixedMaskProjection(self.masks)


def _compile_like(model, small, optimizer) -> None:
    """Compiles ``small`` as ``model`` was (loss, metrics, …), with ``optimizer``."""
    config = model.get_compile_config()
    if not config:
        raise ValueError(f"switch_to_small() needs a compiled model; {model.name!r} is not.")
    config = keras.saving.deserialize_keras_object(config)
    config["optimizer"] = optimizer
    small.compile(**config)


def switch_to_small(model: keras.Model, *, prune_bias: bool = True) -> Switch:
    """The physically small model of a DessiLBI run whose support is fixed, ready to train on.

    Shrinks ``model`` at W* (its removed units gone), cuts the optimizer's
    state onto the small model (`carry_optimizer`) and compiles it as
    ``model`` is. Call it once the support is fixed: during a
    `WStarFinetune` with the coupling off (μ = `finetune.DECOUPLED_MU`),
    after its projection. Then train the small model with
    ``callbacks=[switch.projection(), ...]``: N steps give the weights N
    steps of the masked fine-tune give, at the kept entries (see the module
    docstring for what is frozen).

    Args:
        model: a compiled Sequential / Functional model trained by a built
            `tf_dessilbi.DessiLBI` (a `LossScaleOptimizer` around it is not
            supported).
        prune_bias: as `WStarFinetune`'s: the biases and BN γ/β of units
            outside the support are zeroed. Defaults to `True` (``False``
            is refused: not the same computation, see the module docstring).

    Returns:
        A `Switch`. ``model`` and its optimizer are left as they were.

    Raises:
        TypeError: not a graph model, or an optimizer without a support.
        ValueError: the optimizer is not built or not decoupled, the model is
            not compiled, ``prune_bias=False``, or `shrink` had to fold a
            removed unit's constant output (an activation with act(0) ≠ 0).
    """
    walk.check_graph_model(model, "switch_to_small")
    prune_bias = _validate.boolean("prune_bias", prune_bias)
    if not prune_bias:
        raise ValueError("switch_to_small(prune_bias=False): removed units would output "
                         "act(b) in the masked fine-tune, which the small model cannot follow. "
                         "Received: prune_bias=False")
    optimizer = model.optimizer
    if optimizer is not unwrap_optimizer(optimizer):
        raise TypeError("switch_to_small() carries a plain DessiLBI optimizer; received a "
                        f"{type(optimizer).__name__}.")
    if not hasattr(optimizer, "support"):
        raise TypeError("switch_to_small() needs a tf_dessilbi.DessiLBI optimizer (its support "
                        f"says which units go). Received: {type(optimizer).__name__}")
    if not optimizer.built:
        raise ValueError("switch_to_small() needs a built optimizer (train a step first).")
    if not finetune_lib.is_decoupled(optimizer):
        raise ValueError("switch_to_small() needs the support fixed: the coupling off "
                         f"(μ = {finetune_lib.DECOUPLED_MU:g}, WStarFinetune(decouple=True) once "
                         "started). Received: "
                         f"mu={float(keras.ops.convert_to_numpy(optimizer.mu))}")
    _compat.sync_jax_state(model)
    with _strategy_scope(model):  # the small model's variables distributed as the big one's
        return _switch(model, optimizer, prune_bias)


def _strategy_scope(model):
    """The scope of the `tf.distribute` strategy ``model`` was built under (else a no-op)."""
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow backend only
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _switch(model, optimizer, prune_bias) -> Switch:
    small, report = shrink_api.shrink(model, optimizer=optimizer, return_report=True)
    if report.folded:
        raise ValueError("switch_to_small(): shrink folded the constant outputs of removed units "
                         f"{report.folded} into their consumers' biases (an activation with "
                         "act(0) != 0?); the masked fine-tune keeps training the weights that "
                         "read them, so the small model would not follow it.")
    kept = w_star_lib.w_star_masks(model, optimizer, prune_bias)
    cut = carry_lib.cut_like_weights(model, report, {v.path: m for v, m in kept})
    masks = {path: mask for path, mask in cut.items() if not mask.all()}
    new_optimizer = carry_lib.carry_optimizer(model, small, report, optimizer)
    _compile_like(model, small, new_optimizer)
    return Switch(small, report, masks, int(keras.ops.convert_to_numpy(optimizer.iterations)))


class StopAtFork(keras.callbacks.Callback):
    """Ends the big model's `fit` at the first epoch end at or after a `WStarFinetune`'s fork.

    Attributes:
        epoch: the epoch the small model starts at (``None`` until then).
    """

    def __init__(self, finetune):
        super().__init__()
        self.finetune = finetune
        self.epoch = None

    def on_epoch_end(self, epoch, logs=None):
        start = self.finetune.start_epoch
        if self.finetune.active or (start is not None and epoch + 1 >= start):
            self.epoch = epoch + 1
            self.model.stop_training = True


@dataclasses.dataclass
class SwitchedRun:
    """What `fit_with_switch` returns.

    Attributes:
        model: the model trained last: the small one after a switch.
        history: ``{metric: [one value per epoch]}`` over both fits.
        switch: the `Switch`, or ``None`` when the fork never came (or
            ``switch=False``).
    """

    model: keras.Model
    history: dict
    switch: Optional[Switch]


def fit_with_switch(model: keras.Model, x=None, y=None, *, finetune, epochs: int = 1,
                    initial_epoch: int = 0, callbacks=None, switch: bool = True,
                    **fit_kwargs) -> SwitchedRun:
    """``model.fit`` with a `WStarFinetune`, the fine-tune trained on the physically small model.

    The big model trains (the DessiLBI path, and the masked fine-tune if it
    forks inside an epoch) up to the first epoch end at or after the fork;
    there the fine-tune is started (if the fork's ``epoch`` is the next epoch),
    the model switches (`switch_to_small`) and a second ``fit`` continues
    on the small model from that epoch with the same ``callbacks`` (each is
    handed the small model; their ``on_train_begin`` / ``on_train_end`` run
    once per fit), the optimizer's step count and schedule going on.

    Args:
        model: a compiled model trained by `tf_dessilbi.DessiLBI`.
        x: the training data (default `None`), passed to both fits (a `tf.data.Dataset`
            goes on with its own epoch order).
        y: the targets when ``x`` is an array. Defaults to `None`.
        finetune: the `WStarFinetune` deciding the fork (``decouple=True``,
            ``prune_bias=True``).
        epochs: as `fit`'s. Defaults to `1`.
        initial_epoch: as `fit`'s. Defaults to `0`.
        callbacks: further callbacks for both fits. Defaults to `None`.
        switch: ``False`` runs the masked fine-tune on the big model (the
            comparison run). Defaults to `True`.
        **fit_kwargs: any other `fit` argument (``batch_size``,
            ``validation_data``, ``shuffle``, ``verbose``, ...).

    Returns:
        A `SwitchedRun`.

    Raises:
        TypeError: ``finetune`` is not a `WStarFinetune`.
        ValueError: a fine-tune the small model cannot follow
            (``decouple=False``, ``prune_bias=False``), or as `switch_to_small`.
            A failing switch leaves the big model where the masked
            fine-tune has it (projected on W*, μ back to μ₀).
    """
    if not isinstance(finetune, finetune_lib.WStarFinetune):
        raise TypeError(f"`finetune` must be a WStarFinetune. Received: finetune={finetune!r}")
    switch = _validate.boolean("switch", switch)
    epochs = _validate.integer("epochs", epochs, minimum=1)
    initial_epoch = _validate.integer("initial_epoch", initial_epoch, minimum=0)
    if switch and (not finetune.decouple or not finetune.prune_bias):
        raise ValueError("fit_with_switch(): the small model follows the masked fine-tune only "
                         "with the support fixed and the removed units' biases zeroed. Received: "
                         f"WStarFinetune(decouple={finetune.decouple}, "
                         f"prune_bias={finetune.prune_bias}); pass switch=False to run it masked.")
    if switch and model.optimizer is not unwrap_optimizer(model.optimizer):
        raise TypeError("fit_with_switch() carries a plain DessiLBI optimizer's state; received a "
                        f"{type(model.optimizer).__name__} (mixed_float16's loss scaling). Pass "
                        "switch=False to run the fine-tune masked.")
    callbacks = list(callbacks or [])
    stop = StopAtFork(finetune)
    big = model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch,
                    callbacks=callbacks + [finetune] + ([stop] if switch else []), **fit_kwargs)
    history = {key: list(values) for key, values in big.history.items()}
    if stop.epoch is None or stop.epoch >= epochs:
        return SwitchedRun(model, history, None)
    try:
        finetune.on_epoch_begin(stop.epoch)  # starts it (or decouples again) and projects
        result = switch_to_small(model, prune_bias=finetune.prune_bias)
    except Exception:
        finetune.on_train_end()
        raise
    result.epoch = stop.epoch
    small_fit = result.model.fit(x, y, epochs=epochs, initial_epoch=stop.epoch,
                                 callbacks=callbacks + [result.projection()], **fit_kwargs)
    for key, values in small_fit.history.items():
        history.setdefault(key, []).extend(values)
    return SwitchedRun(result.model, history, result)

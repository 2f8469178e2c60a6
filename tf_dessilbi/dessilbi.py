"""DessiLBI: deep structural splitting by linearized Bregman iteration."""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import ops

from tf_dessilbi import slbi
from tf_dessilbi import structures as structures_lib

LAMBDA_SCALINGS = ("fan_in", "none")


class HyperparameterVariables:
    """κ, μ, λ as non-trainable variables with validating setters.

    Shared by the Keras 3 optimizer and the tf_keras one of the TF-MOT
    bridge; both keep the variables in ``_kappa``, ``_mu`` and ``_lambda``.
    """

    @property
    def kappa(self):
        """κ as a non-trainable variable; assign a float to change it."""
        return self._kappa

    @kappa.setter
    def kappa(self, value):
        self._kappa.assign(_check_real("kappa", value, positive=True))

    @property
    def mu(self):
        """μ (ν in the paper) as a non-trainable variable."""
        return self._mu

    @mu.setter
    def mu(self, value):
        self._mu.assign(_check_real("mu", value, positive=True))

    @property
    def lambda_(self):
        """λ as a non-trainable variable."""
        return self._lambda

    @lambda_.setter
    def lambda_(self, value):
        self._lambda.assign(_check_real("lambda_", value, positive=False))


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class DessiLBI(HyperparameterVariables, keras.optimizers.Optimizer):
    """Split linearized Bregman iteration (DessiLBI) as a Keras optimizer.

    Each coupled weight W gets a structure parameter Γ, sparse by
    construction, and an auxiliary V. With step α (the learning rate), loss
    gradient g and its momentum direction d::

        W ← W − κ·α·(d + (W − Γ)/μ)
        V ← V + (α/μ)·(W_old − Γ)
        Γ ← κ · prox_{λΩ}(V)

    Ω is ‖·‖₁ (``"elementwise"``) or the group lasso Σ_g ‖·_g‖₂ with one
    group per conv filter (``"filter"``) or dense unit (``"neuron"``).
    V = Γ = 0 at the start, so structures enter the support of Γ one by one
    as training proceeds (inverse scale space, simple → complex). The sparse
    model is W* = W on supp(Γ) (`tf_dessilbi.apply_w_star`). Uncoupled
    variables (biases, normalization, …) take ``W ← W − κ·α·d``.

    Momentum follows the authors' (and SGD's heavy-ball) convention: the
    buffer accumulates g, ``b ← momentum·b + g``; ``d = b``, or
    ``d = g + momentum·b`` with Nesterov. The coupling term (W − Γ)/μ does
    not go through momentum.

    κ, μ and λ are non-trainable variables like the learning rate: assigning
    ``optimizer.kappa = 2.0`` (e.g. from a callback) takes effect in the
    compiled train step without retracing.

    Args:
        learning_rate: step α: a float, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable.
            Defaults to `0.1`.
        kappa: κ > 0, the damping factor; Γ = κ·prox(V) and W's step is κ·α.
            Defaults to `1.0`.
        mu: μ > 0 (ν in the paper), the coupling strength between W and Γ.
            Defaults to `100.0`.
        lambda_: λ ≥ 0, the sparsity threshold of the proximal map.
            Defaults to `1.0`.
        momentum: float in [0, 1). Defaults to `0.9`.
        nesterov: whether to use Nesterov momentum. Defaults to `False`.
        structure: ``"auto"`` (Conv1D/2D/3D kernels by filter, Dense kernels
            elementwise) or a mapping ``{regex: structure}`` matched with
            `re.search` against variable paths, the first match winning;
            values are ``"elementwise"``, ``"filter"``, ``"neuron"`` or
            ``None``; unmatched variables are uncoupled. See
            `tf_dessilbi.structures_for`. Defaults to `"auto"`.
        lambda_scaling: ``"fan_in"`` thresholds an elementwise kernel at
            λ/√fan_in (fan_in = entries per output unit) and groups at λ, so
            one λ means the same for every layer and structure; ``"none"``
            thresholds every structure at λ exactly (the authors' base code,
            whose λ = 1 leaves wide dense layers almost empty). Defaults to
            `"fan_in"`.
        **kwargs: the base optimizer arguments (`weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`).

    Example:

    ```python
    model.compile(optimizer=tf_dessilbi.DessiLBI(learning_rate=0.1, mu=100.0),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3)
    with tf_dessilbi.apply_w_star(model, model.optimizer):
        model.evaluate(x_test, y_test)      # the sparse model W*
    print(tf_dessilbi.sparsity_report(model, model.optimizer))
    ```

    References:
        - Fu, Liu, Li, Sun, Zeng, Yao. "DessiLBI: Exploring Structural
          Sparsity of Deep Networks via Differential Inclusion Paths".
          ICML 2020.
    """

    def __init__(
        self,
        learning_rate=0.1,
        kappa=1.0,
        mu=100.0,
        lambda_=1.0,
        momentum=0.9,
        nesterov=False,
        structure="auto",
        lambda_scaling="fan_in",
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="dessilbi",
        **kwargs,
    ):
        # Validate our own hyperparameters before the base class creates
        # variables, so a bad call has no side effects.
        (kappa, mu, lambda_, momentum, nesterov, lambda_scaling,
         structure) = validate_hyperparameters(
            kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.momentum = momentum
        self.nesterov = nesterov
        self.lambda_scaling = lambda_scaling
        self._structure = structure
        with keras.name_scope(self.name, caller=self):
            self._kappa = self._hyper_variable(kappa, "kappa")
            self._mu = self._hyper_variable(mu, "mu")
            self._lambda = self._hyper_variable(lambda_, "lambda")

    def _hyper_variable(self, value, name):
        variable = keras.Variable(
            value,
            name=name,
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
        )
        self._track_variable(variable)
        return variable

    @property
    def structure(self):
        """The validated ``structure`` argument."""
        return self._structure

    # -- state ---------------------------------------------------------------
    def build(self, variables):
        """Creates momentum buffers, and V and Γ for the coupled variables."""
        if self.built:
            return
        resolved = structures_lib.resolve_structures(variables, self._structure)
        super().build(variables)
        self._structures = list(resolved)
        self._threshold_scales = [
            None if s is None
            else slbi.threshold_scale(v.shape, s, self.lambda_scaling)
            for v, s in zip(variables, resolved)
        ]
        self._momentums = []
        if self.momentum != 0.0:
            self._momentums = self.add_optimizer_variables(variables, "momentum")
        self._vs = []
        self._gammas = []
        for variable, structure in zip(variables, resolved):
            if structure is None:
                self._vs.append(None)
                self._gammas.append(None)
            else:
                self._vs.append(
                    self.add_variable_from_reference(variable, "dessilbi_v")
                )
                self._gammas.append(
                    self.add_variable_from_reference(variable, "dessilbi_gamma")
                )

    def update_step(self, gradient, variable, learning_rate):
        """One DessiLBI step for `variable`; see the class docstring."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        kappa = ops.cast(self._kappa, dtype)
        gradient = ops.cast(gradient, dtype)

        buffer = self._momentums[index] if self._momentums else None
        structure = self._structures[index]
        v, gamma = self._vs[index], self._gammas[index]
        w_new, buffer_new, v_new, gamma_new = slbi.step(
            gradient,
            ops.convert_to_tensor(variable),
            None if buffer is None else ops.convert_to_tensor(buffer),
            None if v is None else ops.convert_to_tensor(v),
            None if gamma is None else ops.convert_to_tensor(gamma),
            lr=lr,
            kappa=kappa,
            mu=ops.cast(self._mu, dtype),
            threshold=(
                None if structure is None
                else ops.cast(self._lambda, dtype) * self._threshold_scales[index]
            ),
            momentum=ops.cast(self.momentum, dtype),
            nesterov=self.nesterov,
            structure=structure,
        )
        self.assign(variable, w_new)
        if buffer is not None:
            self.assign(buffer, buffer_new)
        if structure is not None:
            self.assign(v, v_new)
            self.assign(gamma, gamma_new)

    # -- public accessors ----------------------------------------------------
    def variable_structure(self, variable) -> Optional[str]:
        """The structure of a model variable, or ``None`` if uncoupled."""
        self._check_built_for(variable)
        return self._structures[self._get_variable_index(variable)]

    def gamma(self, variable):
        """Γ of a model variable (a tensor), or ``None`` if it is uncoupled."""
        self._check_built_for(variable)
        slot = self._gammas[self._get_variable_index(variable)]
        return None if slot is None else ops.convert_to_tensor(slot)

    def v(self, variable):
        """The auxiliary V of a model variable, or ``None`` if uncoupled."""
        self._check_built_for(variable)
        slot = self._vs[self._get_variable_index(variable)]
        return None if slot is None else ops.convert_to_tensor(slot)

    def support(self, variable):
        """Boolean mask ``Γ ≠ 0`` shaped like `variable`, or ``None`` if uncoupled."""
        gamma = self.gamma(variable)
        return None if gamma is None else ops.not_equal(gamma, 0)

    def coupled_variables(self):
        """The model variables that carry a Γ, with their structures."""
        if not self.built:
            return []
        return [
            (variable, structure)
            for variable, structure in zip(
                self._trainable_variables, self._structures
            )
            if structure is not None
        ]

    def _check_built_for(self, variable):
        if not self.built:
            raise ValueError(
                "The optimizer is not built yet: train a step, or call "
                "`optimizer.build(model.trainable_variables)` first."
            )
        if self._var_key(variable) not in self._trainable_variables_indices:
            raise ValueError(
                f"Variable {getattr(variable, 'path', variable.name)!r} is "
                f"not one of the variables this optimizer was built with."
            )

    def get_config(self):
        config = super().get_config()
        structure = self._structure
        if structure != structures_lib.AUTO:
            structure = [list(item) for item in structure]
        config.update(
            {
                "kappa": float(ops.convert_to_numpy(self._kappa)),
                "mu": float(ops.convert_to_numpy(self._mu)),
                "lambda_": float(ops.convert_to_numpy(self._lambda)),
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "structure": structure,
                "lambda_scaling": self.lambda_scaling,
            }
        )
        return config


def validate_hyperparameters(kappa, mu, lambda_, momentum, nesterov,
                             lambda_scaling, structure):
    """Checks DessiLBI's own arguments (shared with the tf_keras optimizer).

    Returns:
        ``(kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure)``
        normalized: floats, and the structure in `validate_structure` form.

    Raises:
        ValueError, TypeError: naming the argument, the value and what is
            allowed.
    """
    kappa = _check_real("kappa", kappa, positive=True)
    mu = _check_real("mu", mu, positive=True)
    lambda_ = _check_real("lambda_", lambda_, positive=False)
    momentum = _check_real("momentum", momentum, positive=False)
    if not momentum < 1.0:
        raise ValueError(
            f"`momentum` must be in [0, 1). Received: momentum={momentum}"
        )
    if not isinstance(nesterov, bool):
        raise TypeError(
            f"`nesterov` must be a bool. Received: nesterov={nesterov!r}"
        )
    if nesterov and momentum == 0.0:
        raise ValueError(
            "`nesterov=True` needs `momentum` > 0. "
            f"Received: momentum={momentum}, nesterov={nesterov}"
        )
    if lambda_scaling not in LAMBDA_SCALINGS:
        raise ValueError(
            f"`lambda_scaling` must be one of {LAMBDA_SCALINGS}. "
            f"Received: lambda_scaling={lambda_scaling!r}"
        )
    structure = structures_lib.validate_structure(structure)
    return kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure


def _check_real(name, value, positive: bool) -> float:
    """A finite Python float, > 0 if `positive` else ≥ 0; else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.ndim(value) == 0:
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise TypeError(
                f"`{name}` must be a real number. Received: "
                f"{name}={value!r} of type {type(value).__name__}"
            ) from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value}")
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
    if not positive and value < 0:
        raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
    return value

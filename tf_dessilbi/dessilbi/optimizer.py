"""DessiLBI: deep structural splitting by linearized Bregman iteration."""

from __future__ import annotations

import keras

from tf_dessilbi import _compat

from tf_dessilbi.dessilbi.base import LAMBDA_SCALINGS  # noqa: F401  (re-exported)
from tf_dessilbi.dessilbi.base import DessiLBIMixin
from tf_dessilbi.dessilbi.base import validate_hyperparameters
from tf_dessilbi.dessilbi.joint_groups import validate_unit_groups


@keras.saving.register_keras_serializable(package="tf_dessilbi")
class DessiLBI(DessiLBIMixin, keras.optimizers.Optimizer):
    """Split linearized Bregman iteration (DessiLBI) as a Keras optimizer.

    Each coupled weight W gets a structure parameter Γ, sparse by
    construction, and an auxiliary V. With step α (the learning rate), loss
    gradient g and its momentum direction d::

        W ← W − κ·α·(d + (W − Γ)/μ)
        V ← V + (α/μ)·(W_old − Γ)
        Γ ← κ · prox_{λΩ}(V)

    Γ is a function of V, so only V is kept: the optimizer holds 8 B per
    coupled parameter (momentum + V, Adam's footprint), not 12.

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
    compiled train step without retracing. Since only V is kept, Γ is always
    κ·prox_λ(V) with the κ and λ of *now*: a κ or λ assigned between steps k−1
    and k changes Γ_k at once (`gamma`, `support`, W*) and so the coupling
    term of step k, whereas the paper's iteration (and release 0.1, which
    stored Γ) would still use Γ_k = κ_old·prox_{λ_old}(V_k) in step k and
    apply the new value from Γ_{k+1} on. With constant κ, λ the two are the
    same; μ enters the step itself and agrees in both
    (tests/test_dessilbi.py, ``..._changed_mid_run_...``).

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
        structure: a preset — ``"auto"`` (Conv1D/2D/3D kernels by filter,
            Dense kernels elementwise), ``"elementwise"``, ``"filter"`` (conv
            filters, Dense kernels uncoupled) or ``"filter_neuron"`` (conv
            filters, Dense neurons, the logits elementwise), the names the
            CLI's ``config.optimizer.structure`` takes — or a mapping
            ``{regex: structure}`` matched with `re.search` against variable
            paths, the first match winning; a pattern selects kernels unless it
            names another variable (``"conv1/bias"``); values are
            ``"elementwise"``, ``"filter"``, ``"neuron"``, ``"head"`` or
            ``None``; unmatched variables are uncoupled. See
            `tf_dessilbi.structures_for`. Defaults to `"auto"`.
        lambda_scaling: ``"fan_in"`` thresholds an elementwise kernel at
            λ/√fan_in (fan_in = entries per output unit) and groups at λ, so
            one λ means the same for every layer and structure; ``"none"``
            thresholds every structure at λ exactly (the authors' base code,
            whose λ = 1 leaves wide dense layers almost empty);
            ``"init_norm"`` thresholds each kernel at λ × its RMS initial unit
            norm (groups) or entry (elementwise), measured when the optimizer
            is built and saved with its state: λ is a multiple of the layer's
            own initial scale, whatever its initializer and width
            (`slbi.init_norm_scale`); ``"unit_init_norm"`` thresholds each
            unit (filter, neuron) at λ × its own initial norm (elementwise:
            its RMS initial entry), so a unit enters once it grew from its
            own start, whatever θ₀ drew (`slbi.unit_init_norm_scale`: with
            BatchNormalization, ``"init_norm"`` ranks filters almost as θ₀'s
            norms do). Defaults to `"fan_in"`.
        unit_groups: ``None``, or groups of units coupled jointly during the
            whole path: each a list of ``[variable path, unit]`` pairs whose
            units share one group G of the group lasso, Γ_G =
            κ·max(0, 1 − λ_G/‖V_G‖₂)·V_G with λ_G² = Σ_{g∈G} λ_g², so they
            enter and leave supp Γ together. `tf_dessilbi.joint_unit_groups`
            (model) gives the dependency groups of physical removal (the
            filters one residual Add sums), so supp Γ is always what
            `tf_dessilbi.shrink` can remove. Members the structure does not
            couple by groups are left out; paths and units are checked at
            build. Cut such a support to K units by whole groups
            (`WStarFinetune(Fork(units=..., trim=True, dependency_groups=True))`,
            `group_support.align_support`), not unit by unit. See
            `tf_dessilbi.dessilbi.joint_groups`. Defaults to `None`.
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
        unit_groups=None,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        # Validate our own hyperparameters before the base class creates
        # variables, so a bad call has no side effects.
        (kappa, mu, lambda_, momentum, nesterov, lambda_scaling,
         structure) = validate_hyperparameters(
            kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure)
        unit_groups = validate_unit_groups(unit_groups)
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
        with keras.name_scope(self.name, caller=self):
            self._init_dessilbi(kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure,
                                unit_groups)

    # -- framework hooks of DessiLBIMixin -----------------------------------
    def _new_hyper_variable(self, value, name):
        variable = keras.Variable(
            value, name=name, dtype="float32", trainable=False, aggregation="only_first_replica"
        )
        self._track_variable(variable)
        return variable

    def _new_slot(self, variable, name):
        return self.add_variable_from_reference(variable, name)

    def _assign_slot(self, variable, value):
        self.assign(variable, value)

    @staticmethod
    def _variable_path(variable) -> str:
        return getattr(variable, "path", None) or variable.name

    def _slot_index(self, variable) -> int:
        if not self.built:
            raise self._not_built_error()
        if not _compat.optimizer_tracks(self, variable):
            raise self._unknown_variable_error(variable)
        return self._get_variable_index(variable)

    # -- state ---------------------------------------------------------------
    def build(self, variables):
        """Creates the momentum buffers and V (Γ = κ·prox(V) is computed, not stored)."""
        if self.built:
            return
        resolved = self._resolve_structures(variables)
        super().build(variables)
        self._build_dessilbi(variables, resolved)
        deferred, self._deferred_state = getattr(self, "_deferred_state", None), None
        if deferred is not None:  # the state of a pickled built optimizer (`load_own_variables`)
            self.load_own_variables(deferred)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Joint coupling reads V_k of every member: computed once, before the
        # per-variable updates (`DessiLBIMixin._apply_with_joint_thresholds`).
        self._apply_with_joint_thresholds(
            lambda: super(DessiLBI, self)._backend_update_step(grads, trainable_variables, learning_rate))

    def _joint_variables(self) -> dict:
        return {i: self._trainable_variables[i] for i in self._joint.indices}

    def update_step(self, gradient, variable, learning_rate):
        """One DessiLBI step for `variable`; see the class docstring."""
        self._dessilbi_step(self._get_variable_index(variable), gradient, variable, learning_rate)

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

    def load_own_variables(self, store):
        """Loads a `.keras` / `.weights.h5` state, also one saved when Γ was a slot.

        An unbuilt optimizer given the state of a built one (``pickle`` of a
        trained optimizer alone: Keras rebuilds it from its config) keeps that
        state and loads it when it is built on the model's variables.
        """
        values = [store[str(i)] for i in range(len(store.keys()))]
        if not self.built and len(values) > len(self.variables):
            self._deferred_state = {str(i): value for i, value in enumerate(values)}
            return
        values = self._drop_stored_gammas(values)
        super().load_own_variables({str(i): value for i, value in enumerate(values)})

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # TensorFlow checkpoints name optimizer variables by their index in
        # `_variables`; keep the indices release 0.1 gave the Vs (each then
        # followed by its Γ), so its checkpoints restore V and skip Γ.
        children = super()._trackable_children(save_type, **kwargs)
        return _compat.relabel_tracked_list(self, children, "_variables", self._checkpoint_index)

    def _checkpoint_index(self, index: int) -> int:
        coupled = sum(v is not None for v in getattr(self, "_vs", ()))
        head = len(self.variables) - coupled
        return index if index < head else head + 2 * (index - head)

    def get_config(self):
        config = super().get_config()
        config.update(self._dessilbi_config())
        config["unit_groups"] = (None if self._unit_groups is None
                                 else [[[path, unit] for path, unit in group] for group in self._unit_groups])
        return config

"""What the Keras 3 and the tf_keras DessiLBI optimizers share.

`DessiLBIMixin` holds everything but the framework glue: argument validation,
κ/μ/λ as non-trainable variables behind validating setters, the slots
(momentum, V, Γ) created in `build`, the step (maths in `slbi.step`), the
accessors (`gamma`, `v`, `support`, `variable_structure`) and the config. A
subclass supplies five small hooks:

* ``_new_hyper_variable(value, name)`` — a float32 non-trainable variable;
* ``_new_slot(variable, name)`` — a zero slot shaped like ``variable``;

The slots are the momentum buffer and V; Γ = κ·prox_λ(V) is computed where
it is needed (`slbi.gamma_of`), never stored (8 B/parameter, Adam's, instead
of 12). Files written when Γ was a slot still load: `_drop_stored_gammas`
skips those values and Γ is rebuilt from V.
* ``_slot_index(variable)`` — the index of a model variable (raises if unknown);
* ``_assign_slot(variable, value)`` — assignment that works in its framework;
* ``_variable_path(variable)`` — the path structures are resolved against.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from keras import ops

from tf_dessilbi import _compat
from tf_dessilbi import _validate
from tf_dessilbi.dessilbi import joint_groups as joint_lib
from tf_dessilbi.dessilbi import slbi
from tf_dessilbi.dessilbi import structures as structures_lib
from tf_dessilbi.masks import unit_mask_of

LAMBDA_SCALINGS = ("fan_in", "none", "init_norm", "unit_init_norm")


def validate_hyperparameters(kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure):
    """Checks DessiLBI's own arguments (shared by both optimizers).

    Returns:
        ``(kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure)``
        normalized: floats, and the structure in `validate_structure` form.

    Raises:
        ValueError, TypeError: naming the argument, the value and what is allowed.
    """
    kappa = _validate.positive("kappa", kappa)
    mu = _validate.positive("mu", mu)
    lambda_ = _validate.non_negative("lambda_", lambda_)
    momentum = _validate.non_negative("momentum", momentum)
    if not momentum < 1.0:
        raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
    if not isinstance(nesterov, bool):
        raise TypeError(f"`nesterov` must be a bool. Received: nesterov={nesterov!r}")
    if nesterov and momentum == 0.0:
        raise ValueError(
            "`nesterov=True` needs `momentum` > 0. "
            f"Received: momentum={momentum}, nesterov={nesterov}"
        )
    _validate.one_of("lambda_scaling", lambda_scaling, LAMBDA_SCALINGS)
    structure = structures_lib.validate_structure(structure)
    return kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure


class _PathShape:
    """What structure resolution reads of a variable: its path and shape."""

    def __init__(self, path, shape):
        self.path = path
        self.shape = tuple(shape)


class DessiLBIMixin:
    """The framework-independent half of a DessiLBI optimizer (see the module docstring)."""

    # -- construction --------------------------------------------------------
    def _init_dessilbi(self, kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure,
                       unit_groups=None):
        """Stores the validated hyperparameters; creates κ, μ, λ variables."""
        self._unit_groups = unit_groups  # validated (`joint_groups.validate_unit_groups`)
        self._joint = None  # resolved at build: a `joint_groups.JointGroups`, or None
        self._joint_cache = None  # the joint thresholds of the step being applied
        self.momentum = momentum
        self.nesterov = nesterov
        self.lambda_scaling = lambda_scaling
        self._structure = structure
        self._kappa = self._new_hyper_variable(kappa, "kappa")
        self._mu = self._new_hyper_variable(mu, "mu")
        self._lambda = self._new_hyper_variable(lambda_, "lambda")

    # -- κ, μ, λ ---------------------------------------------------------------
    @property
    def kappa(self):
        """κ as a non-trainable variable; assign a float to change it."""
        return self._kappa

    @kappa.setter
    def kappa(self, value):
        self._kappa.assign(_validate.positive("kappa", value))

    @property
    def mu(self):
        """μ (ν in the paper) as a non-trainable variable."""
        return self._mu

    @mu.setter
    def mu(self, value):
        self._mu.assign(_validate.positive("mu", value))

    @property
    def lambda_(self):
        """λ as a non-trainable variable."""
        return self._lambda

    @lambda_.setter
    def lambda_(self, value):
        self._lambda.assign(_validate.non_negative("lambda_", value))

    @property
    def structure(self):
        """The validated ``structure`` argument."""
        return self._structure

    # -- state -----------------------------------------------------------------
    def _resolve_structures(self, variables) -> list:
        """The structure of each variable, and the joint groups (raises before anything is created)."""
        shapes = [_PathShape(self._variable_path(v), v.shape) for v in variables]
        resolved = structures_lib.resolve_structures(shapes, self._structure)
        if self._unit_groups:
            joint = joint_lib.JointGroups(self._unit_groups, [s.path for s in shapes],
                                          [s.shape for s in shapes], resolved)
            self._joint = joint if joint else None
        return resolved

    def _build_dessilbi(self, variables, resolved) -> None:
        """Creates the momentum buffers, V and Γ (``resolved`` from `_resolve_structures`)."""
        self._structures = list(resolved)
        if self.lambda_scaling in slbi.INITIAL_VALUE_SCALINGS:
            # Measured on the values the optimizer is built on (the initial
            # weights) and kept as variables, created before the slots so the
            # Vs stay the last variables: saved and restored with the state.
            scale = (slbi.init_norm_scale if self.lambda_scaling == "init_norm"
                     else slbi.unit_init_norm_scale)
            self._threshold_scales = [
                None if s is None else self._new_hyper_variable(
                    scale(_compat.eager_numpy(v), s), f"lambda_scale_{i}")
                for i, (v, s) in enumerate(zip(variables, resolved))
            ]
        else:
            self._threshold_scales = [
                None if s is None else slbi.threshold_scale(v.shape, s, self.lambda_scaling)
                for v, s in zip(variables, resolved)
            ]
        self._momentums = (
            [self._new_slot(v, "momentum") for v in variables] if self.momentum != 0.0 else []
        )
        self._vs = [None if s is None else self._new_slot(v, "dessilbi_v") for v, s in zip(variables, resolved)]

    def _dessilbi_step(self, index: int, gradient, variable, learning_rate) -> None:
        """One DessiLBI step for model variable ``variable`` (maths: `slbi.step`)."""
        dtype = variable.dtype
        # Densify sparse gradients (JAX BCOO, TF IndexedSlices), as SGD accepts them.
        gradient = ops.cast(ops.convert_to_tensor(gradient, sparse=False), dtype)
        buffer = self._momentums[index] if self._momentums else None
        structure, v = self._structures[index], self._vs[index]
        w_new, buffer_new, v_new = slbi.step(
            gradient,
            ops.convert_to_tensor(variable),
            None if buffer is None else ops.convert_to_tensor(buffer),
            None if v is None else ops.convert_to_tensor(v),
            lr=ops.cast(learning_rate, dtype),
            kappa=ops.cast(self._kappa, dtype),
            mu=ops.cast(self._mu, dtype),
            threshold=None if structure is None else self._prox_threshold(index, dtype),
            momentum=ops.cast(self.momentum, dtype),
            nesterov=self.nesterov,
            structure=structure,
        )
        self._assign_slot(variable, w_new)
        if buffer is not None:
            self._assign_slot(buffer, buffer_new)
        if structure is not None:
            self._assign_slot(v, v_new)

    def _threshold(self, index, dtype):
        """λ·c of variable ``index``: a scalar, or per last-axis unit with ``"unit_init_norm"``."""
        scale = self._threshold_scales[index]
        if not isinstance(scale, float):
            scale = ops.cast(scale, dtype)
        return ops.cast(self._lambda, dtype) * scale

    def _joint_thresholds(self) -> dict:
        """``{index: t_g}`` of the jointly coupled variables from V now (`JointGroups.thresholds`)."""
        joint = self._joint
        return joint.thresholds([ops.convert_to_tensor(self._vs[i]) for i in joint.indices],
                                [self._threshold(i, "float32") for i in joint.indices])

    def _prox_threshold(self, index, dtype):
        """The threshold of variable ``index``'s prox: λ_g, or t_g under joint coupling.

        Inside a step the joint thresholds come from `_joint_cache`, computed
        from V_k of every member before any variable is updated.
        """
        if self._joint is None or index not in self._joint.indices:
            return self._threshold(index, dtype)
        cache = self._joint_cache if self._joint_cache is not None else self._joint_thresholds()
        return ops.cast(cache[index], dtype)

    def _apply_with_joint_thresholds(self, update):
        """Runs ``update()`` (the per-variable steps) with the joint thresholds of V_k cached."""
        if self._joint is None:
            return update()
        self._joint_cache = self._joint_thresholds()
        try:
            return update()
        finally:
            self._joint_cache = None

    @property
    def unit_groups(self):
        """The ``unit_groups`` argument (tuples of ``(variable path, unit)``), or ``None``."""
        return self._unit_groups

    # -- public accessors --------------------------------------------------------
    def variable_structure(self, variable) -> Optional[str]:
        """The structure of a model variable, or ``None`` if uncoupled."""
        index = self._slot_index(variable)
        return self._structures[index]

    def gamma(self, variable):
        """Γ of a model variable (a tensor), or ``None`` if it is uncoupled."""
        return self._gamma_at(self._slot_index(variable))

    def _gamma_at(self, index):
        v = self._vs[index]
        if v is None:
            return None
        v = ops.convert_to_tensor(v)
        return slbi.gamma_of(v, ops.cast(self._kappa, v.dtype), self._prox_threshold(index, v.dtype),
                             self._structures[index])

    def v(self, variable):
        """The auxiliary V of a model variable, or ``None`` if uncoupled."""
        index = self._slot_index(variable)
        slot = self._vs[index]
        return None if slot is None else ops.convert_to_tensor(slot)

    def set_v(self, variable, value) -> None:
        """Sets the auxiliary V of a coupled model variable (a warm start, a carried path).

        Raises:
            ValueError: ``variable`` is uncoupled, or ``value`` has another shape.
        """
        index = self._slot_index(variable)
        slot = self._vs[index]
        if slot is None:
            raise ValueError(f"set_v(): variable {self._variable_path(variable)!r} is not coupled to Γ.")
        if tuple(ops.shape(value)) != tuple(slot.shape):
            raise ValueError(f"set_v(): value of shape {tuple(ops.shape(value))} for V of shape "
                             f"{tuple(slot.shape)} ({self._variable_path(variable)!r}).")
        self._assign_slot(slot, ops.cast(value, slot.dtype))

    def support(self, variable):
        """Boolean mask ``Γ ≠ 0`` shaped like `variable`, or ``None`` if uncoupled."""
        gamma = self.gamma(variable)
        return None if gamma is None else ops.not_equal(gamma, 0)

    def threshold(self, variable):
        """The threshold λ·c of a model variable's prox, or ``None`` if uncoupled.

        A scalar tensor (λ·c_l, one per layer), or with
        ``lambda_scaling="unit_init_norm"`` one per last-axis unit (shape
        ``(units,)``, λ·c_j), broadcasting against V's last axis. This is
        each unit's own λ_g also under joint coupling (``unit_groups``),
        where a group G's prox thresholds ‖V_G‖₂ at λ_G = √(Σ_{g∈G} λ_g²).
        """
        index = self._slot_index(variable)
        v = self._vs[index]
        return None if v is None else self._threshold(index, v.dtype)

    def _group_slot(self, variable, units, what: str):
        """``(V slot, units as ints)`` of a group-coupled variable, checked."""
        index = self._slot_index(variable)
        structure, slot = self._structures[index], self._vs[index]
        if structure not in structures_lib.GROUP_STRUCTURES:
            raise ValueError(f"{what} needs a variable coupled by groups "
                             f"{structures_lib.GROUP_STRUCTURES}; {self._variable_path(variable)!r} "
                             f"has structure {structure!r}.")
        n = slot.shape[-1]
        units = [int(u) for u in units]
        if any(not 0 <= u < n for u in units):
            raise ValueError(f"`units` must lie in [0, {n}) for {self._variable_path(variable)!r}. "
                             f"Received: units={units}")
        return slot, units

    def add_units(self, variable, units) -> None:
        """Puts last-axis units (filters, neurons) of a group-coupled variable into supp Γ.

        For each j in ``units`` outside the support (Γ_j = 0, i.e. ‖V_j‖₂ ≤ λ_j), V_j is
        rescaled to ‖V_j‖₂ = (1 + 2⁻⁸)·λ_j along its own direction (along W_j
        when V_j = 0, along the all-ones filter when W_j = 0 too), so that
        Γ_j = κ·(1 − λ_j/‖V_j‖₂)·V_j ≠ 0: the unit enters as if it had just
        crossed the threshold. Units already in the support are left as
        they are. Under joint coupling (``unit_groups``) a unit enters with
        its group: every member g outside the support, in whichever variable,
        is rescaled so, giving ‖V_G‖₂ ≥ (1 + 2⁻⁸)·λ_G.

        Raises:
            ValueError: ``variable`` is not coupled by groups, or a unit is
                out of range.
        """
        _, units = self._group_slot(variable, units, "add_units")
        index = self._slot_index(variable)
        targets = ({index: units} if self._joint is None
                   else self._joint.members_of(index, units))
        outside = {}
        for i, members in targets.items():  # supports before anything moves
            in_support = unit_mask_of(ops.convert_to_numpy(ops.not_equal(self._gamma_at(i), 0)), (-1,))
            outside[i] = [j for j in members if not in_support[j]]
        weights = {index: variable}
        if self._joint is not None:
            weights.update(self._joint_variables())
        for i, members in outside.items():
            if members:
                self._raise_units(i, weights[i], members)

    def _raise_units(self, index, variable, units) -> None:
        """V_j ← (1 + 2⁻⁸)·λ_j·(direction of V_j, else W_j, else ones) for ``units`` (see `add_units`)."""
        slot = self._vs[index]
        v = np.array(ops.convert_to_numpy(slot), dtype=np.float64)
        w = np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)
        threshold = np.broadcast_to(
            np.asarray(ops.convert_to_numpy(self._threshold(index, slot.dtype)), np.float64),
            v.shape[-1:])
        flat_v, flat_w = v.reshape(-1, v.shape[-1]), w.reshape(-1, w.shape[-1])
        for j in units:
            norm = np.linalg.norm(flat_v[:, j])
            direction = flat_v[:, j] if norm > 0 else flat_w[:, j]
            if not np.any(direction):
                direction = np.ones_like(direction)
            direction = direction / np.linalg.norm(direction)
            target = threshold[j] * (1.0 + 2.0 ** -8)
            flat_v[:, j] = direction * (target if target > 0 else 2.0 ** -8)
        slot.assign(ops.cast(v.reshape(slot.shape), slot.dtype))

    def _joint_variables(self) -> dict:
        """``{index: model variable}`` of the jointly coupled variables (a framework hook)."""
        raise NotImplementedError

    def drop_units(self, variable, units) -> None:
        """Takes last-axis units (filters, neurons) of a group-coupled variable out of supp Γ.

        Sets V[..., j] = 0 for each j in ``units``, so Γ[..., j] =
        κ·prox_λ(V)[..., j] = 0; the unit re-enters only if the iteration
        grows ‖V_j‖ past λ again. Under joint coupling (``unit_groups``) this
        takes the unit alone out; the rest of its group G stays while
        ‖V_G‖₂ > λ_G (`align_support` drops whole groups).

        Raises:
            ValueError: ``variable`` is not coupled by groups, or a unit is
                out of range.
        """
        slot, units = self._group_slot(variable, units, "drop_units")
        keep = np.ones((slot.shape[-1],), dtype=bool)
        keep[units] = False
        slot.assign(ops.convert_to_tensor(slot) * ops.cast(keep, slot.dtype))

    def _drop_stored_gammas(self, values: list) -> list:
        """Optimizer variable values of a file saved when Γ was a slot, without the Γs.

        Such files hold the V and Γ of each coupled variable interleaved
        after the other variables; today's optimizer holds the Vs alone.
        Any other length is returned unchanged (and the caller's own check
        reports a mismatch).
        """
        coupled = sum(v is not None for v in getattr(self, "_vs", ()))
        expected = len(self.variables)
        if coupled == 0 or len(values) != expected + coupled:
            return values
        head = expected - coupled
        return values[:head] + values[head::2]

    def _not_built_error(self):
        return ValueError(
            "The optimizer is not built yet: train a step, or call "
            "`optimizer.build(model.trainable_variables)` first."
        )

    def _unknown_variable_error(self, variable):
        return ValueError(
            f"Variable {self._variable_path(variable)!r} is not one of the "
            f"variables this optimizer was built with."
        )

    def _dessilbi_config(self) -> dict:
        """DessiLBI's own constructor arguments (for `get_config`)."""
        structure = self._structure
        if structure not in structures_lib.PRESETS:
            structure = [list(item) for item in structure]
        return {
            "kappa": float(ops.convert_to_numpy(self._kappa)),
            "mu": float(ops.convert_to_numpy(self._mu)),
            "lambda_": float(ops.convert_to_numpy(self._lambda)),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "structure": structure,
            "lambda_scaling": self.lambda_scaling,
        }


"""`DessiLBI` for tf_keras models (TF-MOT): the Keras 3 optimizer's twin.

Both optimizers are `tf_dessilbi.dessilbi.base.DessiLBIMixin` plus framework
glue: validation, κ/μ/λ, slots, the step (`slbi.step`), accessors and config
exist once. The class subclasses a tf_keras class, so it is created on first
access of ``tf_dessilbi.tfmot.DessiLBI``.
"""

from __future__ import annotations

import functools

from tf_dessilbi import _compat
from tf_dessilbi.dessilbi.base import DessiLBIMixin
from tf_dessilbi.dessilbi.base import validate_hyperparameters
from tf_dessilbi.tfmot._lazy import modules


@functools.lru_cache(maxsize=None)
def dessilbi_class():
    tf_keras, _ = modules()
    import tensorflow as tf

    @tf_keras.utils.register_keras_serializable(package="tf_dessilbi")
    class DessiLBI(DessiLBIMixin, tf_keras.optimizers.Optimizer):
        """DessiLBI for tf_keras models (TF-MOT), same maths as `tf_dessilbi.DessiLBI`.

        The update rule is `tf_dessilbi.dessilbi.slbi` (shared with the
        Keras 3 optimizer)::

            W ← W − κ·α·(d + (W − Γ)/μ)
            V ← V + (α/μ)·(W_old − Γ)
            Γ ← κ · prox_{λΩ}(V)

        Structures are resolved from variable names without the ``:0``
        suffix (``"auto"``: conv kernels by filter, dense kernels
        elementwise), so a mapping from `tf_dessilbi.structures_for` on the
        Keras 3 model applies to the model carried by `to_tf_keras`.

        Args:
            learning_rate: step α (float or tf_keras schedule). Defaults to `0.1`.
            kappa: κ > 0. Defaults to `1.0`.
            mu: μ > 0 (ν in the paper). Defaults to `100.0`.
            lambda_: λ ≥ 0. Defaults to `1.0`.
            momentum: float in [0, 1). Defaults to `0.9`.
            nesterov: Nesterov momentum. Defaults to `False`.
            structure: ``"auto"`` or ``{regex: structure}``. Defaults to `"auto"`.
            lambda_scaling: ``"fan_in"``, ``"none"``, ``"init_norm"`` or
                ``"unit_init_norm"`` (see `tf_dessilbi.DessiLBI`). Defaults
                to `"fan_in"`.
            **kwargs: tf_keras optimizer arguments (``clipnorm``,
                ``jit_compile``, ``name``, ...).

        References:
            - Fu et al. "DessiLBI: Exploring Structural Sparsity of Deep
              Networks via Differential Inclusion Paths". ICML 2020.
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
            jit_compile=True,
            name="dessilbi",
            **kwargs,
        ):
            hyper = validate_hyperparameters(
                kappa, mu, lambda_, momentum, nesterov, lambda_scaling, structure
            )
            super().__init__(
                name=name,
                weight_decay=weight_decay,
                clipnorm=clipnorm,
                clipvalue=clipvalue,
                global_clipnorm=global_clipnorm,
                use_ema=use_ema,
                ema_momentum=ema_momentum,
                ema_overwrite_frequency=ema_overwrite_frequency,
                jit_compile=jit_compile,
                **kwargs,
            )
            self._learning_rate = self._build_learning_rate(learning_rate)
            with tf.init_scope():
                self._init_dessilbi(*hyper)

        # -- framework hooks of DessiLBIMixin ----------------------------
        @staticmethod
        def _new_hyper_variable(value, name):
            return tf.Variable(
                value,
                name=name,
                dtype=tf.float32,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        def _new_slot(self, variable, name):
            return self.add_variable_from_reference(variable, name)

        @staticmethod
        def _assign_slot(variable, value):
            variable.assign(value)

        @staticmethod
        def _variable_path(variable) -> str:
            name = variable.name
            return name[: -len(":0")] if name.endswith(":0") else name

        def _slot_index(self, variable) -> int:
            if not getattr(self, "_built", False):
                raise self._not_built_error()
            index = _compat.tf_keras_variable_index(self, variable)
            if index is None:
                raise self._unknown_variable_error(variable)
            return index

        # -- tf_keras optimizer API ----------------------------------------
        def build(self, var_list):
            """Momentum buffers and V for the coupled variables (Γ is computed from V)."""
            if getattr(self, "_built", False):
                super().build(var_list)
                return
            resolved = self._resolve_structures(var_list)
            super().build(var_list)
            self._build_dessilbi(var_list, resolved)
            self._built = True
            deferred, self._deferred_state = getattr(self, "_deferred_state", None), None
            if deferred is not None:  # the state of a pickled built optimizer (`__reduce__`)
                if len(deferred) != len(self.variables):
                    raise ValueError(
                        f"The pickled DessiLBI state holds {len(deferred)} variables; built on "
                        f"these variables it has {len(self.variables)}: build it on the "
                        f"variables of the model it was pickled with.")
                for variable, value in zip(self.variables, deferred):
                    variable.assign(value)

        def __reduce__(self):
            # tf_keras optimizers do not pickle (weak references); this one
            # pickles as its config plus, once built, its variables' values,
            # loaded when the unpickled optimizer is built on the same model.
            state = ([v.numpy() for v in self.variables] if getattr(self, "_built", False)
                     else None)
            return _unpickle, (self.get_config(), state)

        def update_step(self, gradient, variable):
            """One DessiLBI step for `variable` (maths in `slbi.step`)."""
            index = _compat.tf_keras_variable_index(self, variable)
            self._dessilbi_step(index, gradient, variable, self.learning_rate)

        def get_config(self):
            config = super().get_config()
            config.update(self._dessilbi_config())
            config["learning_rate"] = self._serialize_hyperparameter(self._learning_rate)
            return config

    DessiLBI.__qualname__ = "DessiLBI"
    DessiLBI.__module__ = "tf_dessilbi.tfmot"
    return DessiLBI


def _unpickle(config, state):
    """A tf_keras `DessiLBI` from `__reduce__`'s config and (deferred) state."""
    optimizer = dessilbi_class().from_config(config)
    optimizer._deferred_state = state
    return optimizer

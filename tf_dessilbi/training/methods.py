"""The sparsity methods the CLI trains, picked by name (``config.method``).

A `Method` is a few hooks (all optional) around the one training loop of
`tf_dessilbi.training.train`:

* ``prepare(config, model, data, steps_per_epoch) -> keras.Model`` — called
  on the freshly built dense model, before compile (wrap it, score it on a
  few batches of ``data.train``, ...);
* ``callbacks(config, model, steps_per_epoch) -> list`` — extra fit callbacks;
* ``finish(config, model, evaluate) -> dict`` — extra entries of the summary
  after training (``evaluate()`` returns ``{"loss", "accuracy"}`` on the eval
  set), e.g. the accuracy of W* or of the hard gate mask;

or, for a multi-round procedure, the whole run:

* ``run(config, workdir, data, strategy) -> dict`` — a JSON-able summary with
  at least ``"eval": {"loss", "accuracy"}`` and ``"sparsity":
  report.to_dict()``; an optional ``"model"`` entry (the final
  `keras.Model`, taken out of the summary) is exported like a fit run's.

Registering one is one line::

    METHODS["rigl"] = Method(prepare=rigl.prepare, callbacks=rigl.callbacks)
    METHODS["cs_bilevel"] = Method(run=train_cs_bilevel)

With ``config.method = ""`` (the default) the method follows from the older
fields, so existing configs keep working: `default_method`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import keras


@dataclasses.dataclass(frozen=True)
class Method:
    """The hooks of one sparsity method; see the module docstring."""

    prepare: Optional[Callable] = None
    callbacks: Optional[Callable] = None
    finish: Optional[Callable] = None
    run: Optional[Callable] = None
    description: str = ""

    def __post_init__(self):
        hooks = {"prepare": self.prepare, "callbacks": self.callbacks, "finish": self.finish}
        for name, hook in {**hooks, "run": self.run}.items():
            if hook is not None and not callable(hook):
                raise TypeError(f"`{name}` must be a function or None. Received: {name}={hook!r}")
        if self.run is not None and any(h is not None for h in hooks.values()):
            raise ValueError(
                "A Method is either a whole run (`run`) or hooks around the fit loop "
                "(`prepare`, `callbacks`, `finish`), not both."
            )


def default_method(config) -> str:
    """The method a config without ``config.method`` means (the older fields)."""
    if config.gates.enabled:
        return "cs_search" if config.gates.rounds > 1 else "cs"
    return "dessilbi" if config.optimizer.name == "dessilbi" else "sgd"


def method_name(config) -> str:
    """``config.method`` or, when empty, `default_method`."""
    return config.get("method", "") or default_method(config)


def get(config) -> Method:
    """The `Method` of `config`.

    Raises:
        ValueError: an unknown ``config.method``.
    """
    name = method_name(config)
    if name not in METHODS:
        raise ValueError(
            f"config.method={name!r} is invalid: allowed one of {tuple(sorted(METHODS))} "
            f"(or '' for the method the optimizer/gates fields imply)."
        )
    return METHODS[name]


# -- DessiLBI -------------------------------------------------------------------
def _dessilbi_finish(config, model, evaluate) -> dict:
    from tf_dessilbi.dessilbi.w_star import apply_w_star

    with apply_w_star(model, model.optimizer):
        return {"eval_w_star": evaluate()}


def _dessilbi_callbacks(config, model, steps_per_epoch) -> list:
    import warnings

    from tf_dessilbi.dessilbi import finetune, path_speed
    from tf_dessilbi.training import dessilbi_config
    from tf_dessilbi.training.callbacks import FinetuneLog

    cbs = []
    if config.dessilbi.steady_path:
        cbs.append(path_speed.SteadyPathSpeed())
    fork = dessilbi_config.build_fork(config)
    if fork is not None:
        with warnings.catch_warnings():  # validate() already warned for the deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            cbs.append(finetune.WStarFinetune(fork, **dessilbi_config.finetune_kwargs(config)))
        cbs.append(FinetuneLog(cbs[-1], steps_per_epoch))
    return cbs


# -- Continuous Sparsification ---------------------------------------------------
def _cs_prepare(config, model, data, steps_per_epoch) -> keras.Model:
    from tf_dessilbi.gates.gating import gate_model

    g = config.gates
    return gate_model(
        model, granularity=g.granularity, gate_init=g.gate_init, penalty=g.penalty
    )


def _cs_callbacks(config, model, steps_per_epoch) -> list:
    from tf_dessilbi.gates.callbacks import GateTemperature

    return [
        GateTemperature(
            final_beta=config.gates.final_beta,
            epochs=config.num_epochs,
            steps_per_epoch=steps_per_epoch,
            per_step=config.gates.per_step,
        )
    ]


def _cs_finish(config, model, evaluate) -> dict:
    from tf_dessilbi.gates.gating import set_ticket_mode

    set_ticket_mode(model, True)  # the hard mask 1[s > 0]/σ(s₀): the ticket
    return {"eval_ticket": evaluate()}


def _cs_search_run(config, workdir, data, strategy) -> dict:
    """Continuous Sparsification with rounds and rewinding (`TicketSearch`).

    No backup here: a killed search starts again from round 0.
    """
    from tf_dessilbi import models as models_lib
    from tf_dessilbi.procedures.ticket_search import TicketSearch
    from tf_dessilbi.sparsity import sparsity_report
    from tf_dessilbi.training.callbacks import EpochLog
    from tf_dessilbi.training.components import build_optimizer
    from tf_dessilbi.training.components import evaluate_model

    g = config.gates
    steps_per_epoch = config.steps_per_epoch or max(data.num_train // config.batch_size, 1)
    with strategy.scope():
        search = TicketSearch(
            lambda: models_lib.get_model(
                config.model.name, input_shape=data.input_shape,
                num_classes=data.num_classes,
                **({"weight_decay": config.model.weight_decay} if config.model.weight_decay else {}),
            ),
            lambda: build_optimizer(config, None, steps_per_epoch),
            rounds=g.rounds, epochs_per_round=config.num_epochs,
            rewind_epoch=g.rewind_epoch, final_beta=g.final_beta, penalty=g.penalty,
            per_step=g.per_step, granularity=g.granularity, gate_init=g.gate_init,
            jit_compile=config.jit_compile,
        )
        result = search.run(
            data.train, data.eval, verbose=config.verbose,
            callbacks=[EpochLog(config.num_epochs)], steps_per_epoch=steps_per_epoch,
        )
    model = result.model
    report = sparsity_report(model)
    evaluation = evaluate_model(model, data.eval, config.eval_steps)
    return {
        "model": model,
        "rounds": result.rounds,
        "history": {k: [float(x) for x in v] for k, v in result.ticket_history.items()},
        "eval": evaluation,
        "eval_ticket": evaluation,
        "ticket_weight_fraction": result.weight_fraction,
        "sparsity": report.to_dict(),
    }


METHODS: Dict[str, Method] = {
    "sgd": Method(description="dense training with the configured optimizer"),
    "dessilbi": Method(callbacks=_dessilbi_callbacks, finish=_dessilbi_finish, description="DessiLBI: W and Γ, W* on supp(Γ)"),
    "cs": Method(
        prepare=_cs_prepare, callbacks=_cs_callbacks, finish=_cs_finish,
        description="Continuous Sparsification: soft gates annealed to a hard mask",
    ),
    "cs_search": Method(run=_cs_search_run, description="Continuous Sparsification ticket search"),
}


def _cs_bilevel_run(config, workdir, data, strategy) -> dict:
    from tf_dessilbi.bilevel.tuner import train_cs_bilevel

    return train_cs_bilevel(config, workdir, data, strategy, return_model=True)


METHODS["cs_bilevel"] = Method(run=_cs_bilevel_run, description="CS with per-layer penalties tuned by MRBO/VRBO")


def _register_mask_methods() -> None:
    """GMP, SET, RigL, SNIP, GraSP (`tf_dessilbi.sparse`): each module's prepare/callbacks hooks."""
    from tf_dessilbi import sparse

    for name, module in sparse.METHODS.items():
        METHODS[name] = Method(
            prepare=module.prepare, callbacks=module.callbacks,
            description=(module.__doc__ or name).strip().splitlines()[0],
        )


_register_mask_methods()


def _procedure(module_name: str):
    def run(config, workdir, data, strategy):
        import importlib

        from tf_dessilbi.training.components import build_optimizer

        module = importlib.import_module(f"tf_dessilbi.procedures.{module_name}")
        return module.run(config, workdir, data, strategy, build_optimizer=build_optimizer)

    return run


METHODS["imp"] = Method(run=_procedure("imp"), description="iterative magnitude pruning with rewinding + sanity checks")
METHODS["greedy"] = Method(run=_procedure("greedy"), description="greedy forward selection of units")

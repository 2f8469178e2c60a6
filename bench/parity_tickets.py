"""The early tickets of `bench.parity`: supp Γ retrained from θ₀ or from rewound weights, with controls.

A ticket is the support of a DessiLBI run taken at a fraction of its steps
(``support_<...>_step<k>.npz``), retrained with SGD under `bench.protocol`
with its mask fixed, beside the lottery-ticket controls of Ma et al. (2021)
(`tf_dessilbi.procedures.early_tickets.ticket_with_controls`: the same mask
from a fresh initialization, a random mask with the same layer-wise
densities) and, on request, as many random whole filters per layer
(`random_units_run`, the like-for-like control of a filter ticket).
`ticket_at` is one step's ticket for `bench.parity.run`, cached, and reused
for a later step whose support is the same mask.

``rewind_epoch`` R chooses the start (Frankle et al., 2020, "Linear mode
connectivity and the lottery ticket hypothesis"):

* R = 0: the ticket starts from θ₀ and trains the whole budget (E epochs,
  the protocol's schedule);
* R ≥ 1: it starts from the run's W at the end of epoch R
  (``weights_<...>_step<R·steps>.npz``, saved by `bench.parity.dessilbi_run`)
  and trains the remaining E − R epochs: the protocol's batches of epochs
  R + 1 … E and its learning rate from step R · steps on. Every control gets
  the same start (the re-initialization: a fresh draw instead), batches and
  schedule, so all contenders train under the same budget.
"""

from __future__ import annotations

import os

import bench
from bench import protocol

_log = bench.logger("parity")


def weights_name(model_name, structure, recipe, epochs, seed, step) -> str:
    """The file a DessiLBI run saves its weights to at ``step`` (the rewind point)."""
    return f"weights_{model_name}_{structure}_{recipe}_e{epochs}_s{seed}_step{step}.npz"


def _inputs(model_name, seed, epochs, work, support_file, limit, rewind_epoch, rewind_file):
    """``(data, start weights, the saved support)`` in a fresh Keras session.

    The start weights are θ₀ (the model built after ``set_random_seed(seed)``)
    or, with ``rewind_file``, the weights saved there at the end of ``rewind_epoch``.
    """
    import keras

    from bench import parity_recipe
    from tf_dessilbi import masks as masks_lib
    from tf_dessilbi.procedures import early_tickets

    if bool(rewind_epoch) != bool(rewind_file):
        raise ValueError("`rewind_epoch` and `rewind_file` go together (both or neither); received "
                         f"rewind_epoch={rewind_epoch!r}, rewind_file={rewind_file!r}.")
    keras.utils.clear_session()
    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    theta0 = [keras.ops.convert_to_numpy(w) for w in parity_recipe.build(model_name, seed).weights]
    if rewind_file:
        start = early_tickets.load_weights(os.path.join(work, rewind_file))
        if [w.shape for w in start] != [w.shape for w in theta0]:
            raise ValueError(f"The rewind weights {rewind_file!r} do not fit {model_name!r}.")
    else:
        start = theta0
    return data, start, masks_lib.Mask.load(os.path.join(work, support_file))


def _budget(data, epochs, rewind_epoch):
    """``(train batches, epochs to train, optimizer factory)`` of a start at the end of ``rewind_epoch``."""
    rewind_epoch = int(rewind_epoch)
    if not 0 <= rewind_epoch < epochs:
        raise ValueError(f"`rewind_epoch` must lie in [0, epochs={epochs}); received {rewind_epoch}.")
    spe = data.steps_per_epoch
    return (data.train_from(rewind_epoch), epochs - rewind_epoch,
            lambda: protocol.make_sgd(spe, epochs, start_epoch=rewind_epoch))


def ticket_run(model_name, seed, epochs, work, support_file, dense_accuracy, limit=0,
               rewind_epoch=0, rewind_file=None) -> dict:
    """The ticket and Ma et al.'s two controls (``rewind_file``: W saved at the end of ``rewind_epoch``)."""
    from bench import parity_recipe
    from tf_dessilbi.procedures import early_tickets

    data, start, mask = _inputs(model_name, seed, epochs, work, support_file, limit, rewind_epoch,
                                rewind_file)
    train, train_epochs, make_optimizer = _budget(data, epochs, rewind_epoch)
    result = early_tickets.ticket_with_controls(
        lambda: parity_recipe.build(model_name), start, mask, train, data.test, train_epochs,  # the controls seed it
        data.steps_per_epoch, make_optimizer, dense_accuracy, seed=seed)
    result.update(rewind_epoch=int(rewind_epoch), trained_steps=train_epochs * data.steps_per_epoch)
    _log(f"{model_name} ticket {support_file} from {rewind_file or 'θ₀'}: {result['verdict']}")
    return result


def random_units_run(model_name, seed, epochs, work, support_file, limit=0, rewind_epoch=0,
                     rewind_file=None) -> dict:
    """The structured control of a filter ticket: as many random whole filters per layer, same start.

    `tf_dessilbi.procedures.sanity.random_mask_like` with ``units=True``
    (seeded like the elementwise random-mask control), retrained with SGD
    under the protocol by `early_tickets.retrain_ticket`.
    """
    from bench import parity_recipe
    from tf_dessilbi.procedures import early_tickets, sanity

    data, start, support = _inputs(model_name, seed, epochs, work, support_file, limit, rewind_epoch,
                                   rewind_file)
    train, train_epochs, make_optimizer = _budget(data, epochs, rewind_epoch)
    mask = sanity.random_mask_like(support, seed=seed, units=True)
    result = early_tickets.retrain_ticket(
        lambda: parity_recipe.build(model_name), start, mask, train, data.test, train_epochs,
        data.steps_per_epoch, make_optimizer)
    result.update(rewind_epoch=int(rewind_epoch))
    _log(f"{model_name} random filters like {support_file} from {rewind_file or 'θ₀'}: "
         f"{result['accuracy']}")
    return result


def ticket_at(args, work, tag, seed, step, rewind, rewind_step, auto, suffix, cached, trained):
    """The ticket at ``step`` from θ₀ (``rewind`` 0) or from W at the end of epoch ``rewind``
    (saved at ``rewind_step``), with its controls; ``None`` when the run saved neither.

    ``trained`` lists ``(support, step, ticket)`` for every support already
    retrained from this start. A support equal to one of them
    (`tf_dessilbi.masks.Mask` equality; supp Γ is frozen once a W* fine-tune
    starts) gets that result, marked ``same_support_as``: every run is
    seeded, so retraining it would repeat it.
    """
    support = auto["supports"].get(str(step))
    rewind_file = auto.get("rewind", {}).get(str(rewind_step)) if rewind else None
    if not support or (rewind and not rewind_file):
        return None
    from tf_dessilbi import masks as masks_lib

    path = os.path.join(work, support["file"])
    mask = masks_lib.Mask.load(path) if os.path.exists(path) else None  # --render: maybe gone
    for seen, first, ticket in trained if mask is not None else ():
        if seen == mask:
            return dict(ticket, same_support_as=first)
    name = f"{args.model}_{tag}_s{seed}_step{step}{suffix}" + (f"_rw{rewind}" if rewind else "")
    ticket = cached(work, f"ticket_{name}", lambda: ticket_run(
        args.model, seed, args.epochs, work, support["file"], auto["w_accuracy"], args.limit,
        rewind, rewind_file))
    if ticket and ticket.get("sanity") and args.random_units:
        control = cached(work, f"ticket_units_{name}", lambda: random_units_run(
            args.model, seed, args.epochs, work, support["file"], args.limit, rewind, rewind_file))
        if control:
            ticket = dict(ticket, random_units_accuracy=control["accuracy"])
    if ticket and mask is not None:
        trained.append((mask, step, ticket))
    return ticket

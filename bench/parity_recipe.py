"""The recipe of `bench.parity`: the model (`build`), DessiLBI's hyperparameters (`HPARAMS`) and the
recipe names (``+``-joined tokens, parsed into the settings of a DessiLBI run).

Here, not in `bench.parity`, so that the modules `bench.parity` imports (its report and its
tickets) read them without importing `bench.parity` back."""

from __future__ import annotations

# DessiLBI's hyperparameters under the protocol (λ: the parity table's; searched elsewhere).
HPARAMS = {"kappa": 1.0, "mu": 20.0, "lambda_": 1.5, "momentum": 0.9, "nesterov": True,
           "lambda_scaling": "fan_in"}


def build(model_name: str, seed=None):
    """The model, its weights drawn after ``set_random_seed(seed)`` (``None``: the current RNG state)."""
    import keras

    from tf_dessilbi import models

    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    if model_name == "fmnist":
        return models.fmnist_cnn_s()
    return models.resnet20(input_shape=(28, 28, 1), num_classes=10)

_RECIPE_KEYS = {"lam": "lambda_", "mu": "mu", "kappa": "kappa"}
_RECIPE_FLAGS = ("trim", "groups", "joint", "gmax")  # tokens that switch a setting on


def parse_recipe(spec: str) -> dict:
    """A recipe name as settings: ``+``-joined tokens.

    ``paper`` (the paper's iteration with the protocol's α), ``init``
    (``lambda_scaling="init_norm"``), ``unitinit`` (``"unit_init_norm"``), ``steady``
    (`tf_dessilbi.dessilbi.path_speed.SteadyPathSpeed`), ``ft<N>`` (W* fine-tuned
    in the last N epochs with the coupling off, `WStarFinetune`), ``cft<N>``
    (the same with the coupling on), ``u<x>`` (the fine-tune starts once
    supp Γ holds a fraction x of the conv filters, checked every step, at
    the latest with ``ftN``; ``trim`` cuts that support back to exactly
    ⌈x·N⌉ filters, `WStarFinetune(trim=True)`; ``groups`` sets it to whole
    dependency groups of physical removal, `WStarFinetune(dependency_groups=True)`;
    ``joint`` couples those groups during the whole path, ``DessiLBI(unit_groups=
    joint_unit_groups(model))``; ``gmax`` ranks the groups by their strongest
    member, ``group_margin="max"``),
    ``w<x>`` (the same once it holds a fraction x of the coupled weights: an
    elementwise run's density), ``widths<a>-<b>-<c>`` (when the fine-tune
    starts, FMNIST-CNN-S's conv1/conv2/conv3 keep exactly a/b/c filters,
    those of largest margin ‖V_g‖/λ_g: `WStarFinetune(layer_units=...)`, not
    with ``trim``), ``round<r>`` (then each conv's support is raised to a
    multiple of r filters, the largest margins entering: `WStarFinetune(
    round_to=r)`; with ``groups``, each channel space's whole groups),
    ``lam<x>`` / ``mu<x>`` / ``kappa<x>``
    (override `HPARAMS`). E.g. ``steady+ft1+lam2``, ``init+lam0.5+u0.49``.
    """
    out = {"hparams": {}, "steady": False, "finetune_epochs": 0, "decouple": True,
           "units_fraction": None, "weights_fraction": None, "widths": None, "round_to": 1,
           **dict.fromkeys(_RECIPE_FLAGS, False)}
    for token in spec.split("+"):
        if token == "paper":
            continue
        if token == "steady":
            out["steady"] = True
            continue
        if token in _RECIPE_FLAGS:
            out[token] = True
            continue
        if token == "init":
            out["hparams"]["lambda_scaling"] = "init_norm"
            continue
        if token == "unitinit":
            out["hparams"]["lambda_scaling"] = "unit_init_norm"
            continue
        if token.startswith("ft") and token[2:].isdigit():
            out["finetune_epochs"] = int(token[2:])
            continue
        if token.startswith("cft") and token[3:].isdigit():  # the coupling kept on
            out["finetune_epochs"], out["decouple"] = int(token[3:]), False
            continue
        if token.startswith("round"):
            if not token[len("round"):].isdigit() or int(token[len("round"):]) < 2:
                raise ValueError(f"Recipe token {token!r} in {spec!r} needs an integer r >= 2 after "
                                 "'round', e.g. round16.")
            out["round_to"] = int(token[len("round"):])
            continue
        if token.startswith("widths"):
            parts = token[len("widths"):].split("-")
            if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f"Recipe token {token!r} in {spec!r} needs three positive widths: "
                                 "widths<conv1>-<conv2>-<conv3>, e.g. widths12-16-28.")
            out["widths"] = [int(p) for p in parts]
            continue
        if token[:1] in ("u", "w"):  # fine-tune once supp Γ holds this fraction of the filters / weights
            key = "units_fraction" if token[0] == "u" else "weights_fraction"
            try:
                out[key] = float(token[1:])
            except ValueError:
                raise ValueError(f"Recipe token {token!r} in {spec!r} needs a number after {token[0]!r}.")
            if not 0.0 < out[key] <= 1.0:
                raise ValueError(f"Recipe token {token!r} in {spec!r}: the fraction must lie in (0, 1].")
            continue
        for prefix, key in _RECIPE_KEYS.items():
            if token.startswith(prefix):
                try:
                    out["hparams"][key] = float(token[len(prefix):])
                except ValueError:
                    break
                break
        else:
            raise ValueError(f"Unknown recipe token {token!r} in {spec!r}: use paper, init, unitinit, steady, "
                             f"ft<N>, cft<N>, u<x>, {', '.join(_RECIPE_FLAGS)}, w<x>, widths<a>-<b>-<c>, "
                             "round<r>, lam<x>, mu<x>, kappa<x> joined by '+'.")
        if key not in out["hparams"]:
            raise ValueError(f"Recipe token {token!r} in {spec!r} needs a number after {prefix!r}.")
    if out["round_to"] > 1 and out["widths"]:
        raise ValueError(f"Recipe {spec!r}: round<r> rounds the widths the path chose; "
                         "drop widths.")
    if out["widths"] and (out["trim"] or out["groups"]):
        raise ValueError(f"Recipe {spec!r}: widths<a>-<b>-<c> sets each layer's width itself; "
                         "drop trim/groups.")
    return out


# The settings of `parse_recipe` that start or shape the fine-tune of W* (the rest shape the path).
_FINETUNE_SETTINGS = ("finetune_epochs", "decouple", "units_fraction", "weights_fraction", "trim",
                      "groups", "gmax", "widths", "round_to")


def path_recipe(spec: str) -> str:
    """``spec`` without its fine-tune: the coupled iteration that the fine-tune forks from.

    Drops the tokens that start or shape the fine-tune of W* (``ft<N>``,
    ``cft<N>``, ``u<x>``, ``w<x>``, ``trim``, ``groups``, ``gmax``,
    ``widths<a>-<b>-<c>``, ``round<r>``) and keeps those of the path (λ, μ, κ,
    the scaling, ``steady``, ``joint``), in their order. Both runs take the
    same steps until the fine-tune starts, so the path recipe's dense W at
    the end and ``spec``'s W* are the paper's two models: the coupled
    iteration's W, and the support retrained (Fu et al. retrain the support
    of an early Γ). ``"paper"`` when no token is left.
    """
    parse_recipe(spec)  # a bad recipe fails here, naming its token
    off = parse_recipe("paper")
    # One token at a time, through parse_recipe's own grammar: a token belongs to the fine-tune
    # when it sets one of its settings (no single token trips the checks that combine tokens).
    kept = [t for t in spec.split("+")
            if all(parse_recipe(t)[k] == off[k] for k in _FINETUNE_SETTINGS)]
    return "+".join(kept) or "paper"

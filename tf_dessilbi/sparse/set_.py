"""SET (Mocanu et al. 2018): fixed-count sparse training, grow at random.

The model starts from random masks at per-layer densities d_l (uniform or
ERK, `tf_dessilbi.sparse.densities`), each keeping exactly round(d_l · n_l)
weights. Every ΔT steps until T_end each layer drops the k = round(f_t ·
n_active) active weights of smallest |W| and grows k inactive weights chosen
uniformly at random (new weights start at 0), with
f_t = f₀/2 · (1 + cos(π t / T_end)). The number of active weights never changes.
"""

from __future__ import annotations

from typing import Optional

import keras

from tf_dessilbi import _validate
from tf_dessilbi.sparse import callback as callback_lib
from tf_dessilbi.sparse import densities as densities_lib
from tf_dessilbi.sparse import schedules
from tf_dessilbi.sparse import topk
from tf_dessilbi.sparse import updater as updater_lib


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**31 - 1)
    return value


def random_masks(shapes: dict, layer_densities: dict, seed: int = 0) -> dict:
    """Uniformly random masks keeping exactly round(d_l · n_l) weights per layer."""
    seed = _validate.integer("seed", seed, minimum=0)
    scores = {
        key: keras.random.uniform(shape, seed=_seed(seed, i, 7919))
        for i, (key, shape) in enumerate(shapes.items())
    }
    return topk.topk_masks(scores, layer_densities)


def layer_densities(model, sparsity: float, distribution: str = "erdos_renyi_kernel",
                    first_layer_dense: bool = False) -> dict:
    """``{key: d_l}`` for the masked model at the global ``sparsity``."""
    sparsity = _validate.fraction("sparsity", sparsity)
    return densities_lib.densities(distribution, densities_lib.model_shapes(model), 1.0 - sparsity,
                                   first_layer_dense=first_layer_dense)


class SET(updater_lib.MaskUpdater):
    """SET's drop/grow updater: drop smallest |W|, grow at random.

    Args:
        end_step: T_end, the last step that updates (and the cosine's period).
        delta_t: ΔT, steps between updates. Defaults to `100`.
        initial_fraction: f₀. Defaults to `0.3`.
        begin_step: the first step that may update. Defaults to `0`.
        drop_fraction: a schedule ``step -> f_t`` replacing the cosine
            (e.g. `ConstantDropFraction`). Defaults to
            ``CosineDropFraction(initial_fraction, end_step)``.
        seed: seed of the random growth. Defaults to `0`.
    """

    kind = "drop_grow"

    def __init__(self, end_step: int, delta_t: int = 100, initial_fraction: float = 0.3,
                 begin_step: int = 0, drop_fraction=None, seed: int = 0,
                 name: Optional[str] = None):
        self.update_schedule = schedules.UpdateSchedule(delta_t, end_step, begin_step)
        self.drop_fraction = drop_fraction or schedules.CosineDropFraction(initial_fraction, end_step)
        if not callable(self.drop_fraction):
            raise TypeError(f"`drop_fraction` must be a schedule step -> f. Received: {drop_fraction!r}")
        self.seed = _validate.integer("seed", seed, minimum=0)
        super().__init__(scope="layer", name=name or type(self).__name__)

    def amount(self, step: int):
        if not self.update_schedule(step):
            return None
        f = float(self.drop_fraction(step))
        return f if f > 0.0 else None

    def grow_scores(self, targets_, gradients, step: int) -> dict:
        """Uniform random scores (a random choice among the inactive weights)."""
        return {t.key: keras.random.uniform(tuple(t.weight.shape), seed=_seed(self.seed, step, i))
                for i, t in enumerate(targets_)}

    def get_config(self) -> dict:
        return {"update_schedule": self.update_schedule.get_config(),
                "drop_fraction": keras.saving.serialize_keras_object(self.drop_fraction),
                "seed": self.seed, "name": self.name}


def sparsify(model: keras.Model, sparsity: float, updater: updater_lib.MaskUpdater, *,
             distribution: str = "erdos_renyi_kernel", first_layer_dense: bool = False,
             seed: int = 0) -> keras.Model:
    """A masked copy of ``model`` with random masks at the layer densities, ``updater`` attached.

    Args:
        model: a built Sequential / Functional model (left untouched), or a
            `mask_model` copy (its masks are replaced).
        sparsity: the global target s ∈ [0, 1).
        updater: the `SET` / `RigL` updater that will drive it.
        distribution: ``"erdos_renyi_kernel"`` (ERK), ``"erdos_renyi"`` or ``"uniform"``.
        first_layer_dense: keep the first masked layer dense.
        seed: seed of the initial masks.

    Raises:
        ValueError / TypeError: bad arguments (checked before any copy is made).
    """
    from tf_dessilbi.sparse.gmp import sparse_copy

    if not isinstance(updater, updater_lib.MaskUpdater):
        raise TypeError(f"`updater` must be a MaskUpdater (SET, RigL). Received: {updater!r}")
    _validate.fraction("sparsity", sparsity)
    _validate.integer("seed", seed, minimum=0)
    masked = sparse_copy(model)
    dens = layer_densities(masked, sparsity, distribution, first_layer_dense)
    shapes = densities_lib.model_shapes(masked)
    updater_lib.assign_masks(masked, random_masks(shapes, dens, seed))
    updater.bind(masked)
    callback_lib.attach(masked, [updater])
    return masked


# -- CLI hooks (methods.md) ------------------------------------------------------------
def _section(config):
    return config.get("sparse", None) or {}


def make_updater(config, steps_per_epoch: int, cls=SET, **extra):
    """The updater a config asks for (T_end = end_fraction × training steps)."""
    sp = _section(config)
    total = int(config.num_epochs) * int(steps_per_epoch)
    end = max(1, int(round(float(sp.get("end_fraction", 0.75)) * total)))
    return cls(end_step=end, delta_t=int(sp.get("delta_t", 100)),
               initial_fraction=float(sp.get("drop_fraction", 0.3)),
               seed=int(sp.get("seed", config.get("seed", 0))), **extra)


def prepare(config, model, data, steps_per_epoch: int) -> keras.Model:
    """SET: random masks at the config's densities, the SET updater attached."""
    sp = _section(config)
    return sparsify(model, float(sp.get("sparsity", 0.9)), make_updater(config, steps_per_epoch),
                    distribution=str(sp.get("distribution", "erdos_renyi_kernel")),
                    first_layer_dense=bool(sp.get("first_layer_dense", False)),
                    seed=int(sp.get("seed", config.get("seed", 0))))


def callbacks(config, model, steps_per_epoch: int) -> list:
    """``[UpdateMasks()]`` driving the attached updater."""
    return [callback_lib.UpdateMasks()]

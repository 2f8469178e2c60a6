"""Mask methods: fixed-count sparse training and pruning on `MaskedLayer` masks.

Shared machinery (stable API; the prune-family methods build on it):

* `tf_dessilbi.sparse.topk` — selection.
  ``topk_masks(scores, density=None, *, scope="global"|"layer",
  candidates=None, counts=None) -> {key: bool tensor}``: keep the
  ``round(d·n)`` highest scores (``kept_count(n, d)``), over all tensors
  together (``scope="global"``) or per tensor (``"layer"``, or a
  ``{key: d_l}`` density); ``counts`` gives exact numbers (an int: global,
  a mapping: per layer); ``candidates`` restrict the choice. Ties go to the
  earlier weight (flat order, then mapping order). ``topk_mask(score, d)``
  for one tensor.
* `tf_dessilbi.sparse.updater` — the one mask update.
  ``targets(model) -> [Target(key, wrapper, weight, mask)]`` (every
  `MaskedLayer`, keys as in `tf_dessilbi.masks.Mask`),
  ``assign_masks(model, masks, zero=None)`` (all-or-nothing),
  ``prune(masks, scores, density, scope)``, ``drop_grow(masks, drop_scores,
  grow_scores, counts)``; ``MaskUpdater`` (``kind`` "prune" | "drop_grow",
  ``amount(step)``, ``drop_scores(targets, gradients)``,
  ``grow_scores(targets, gradients, step)``, ``needs_gradients``,
  ``gradients(model)``, ``prepare(model)``, ``update(model, step,
  gradients=None)``, ``get_state`` / ``set_state``). A one-shot method
  (SNIP, GraSP, IMP) is a prune-only updater whose ``drop_scores`` are its
  saliencies — ``PruneOnce(sparsity, at_step=0, scope="global")`` is that
  base — or simply ``assign_masks(model, topk_masks(scores, d))``.
* `tf_dessilbi.sparse.schedules` — ``ConstantSparsity`` / ``PolynomialDecay``
  (TF-MOT: ``schedule(t) -> (should_prune, s_t)``), ``UpdateSchedule(delta_t,
  end_step, begin_step)(t) -> bool``, ``CosineDropFraction(f0, T_end)(t) -> f_t``.
* `tf_dessilbi.sparse.densities` — ``densities(method, shapes, density,
  dense=(), first_layer_dense=False)`` for "uniform", "erdos_renyi",
  "erdos_renyi_kernel" (rigl's ``sparse_utils``), ``model_shapes(model)``.
* `tf_dessilbi.sparse.callback` — ``UpdateMasks(updaters=None)`` (fit) and
  ``update_masks(model, updaters, step, grads=None)`` (custom loops, cross-
  replica context); ``attach(model, updaters)`` / ``attached(model)``.

Methods: ``gmp`` (``prune_low_magnitude``, ``UpdatePruningStep``,
``MagnitudePruning``), ``set_`` (``SET``, ``sparsify``), ``rigl`` (``RigL``,
``sparsify``, ``effective_gradients``); each has the CLI hooks
``prepare(config, model, data, steps_per_epoch)`` and ``callbacks(config,
model, steps_per_epoch)`` (``METHODS`` maps ``config.method`` to them).
"""

from tf_dessilbi.sparse import densities
from tf_dessilbi.sparse import gmp
from tf_dessilbi.sparse import grasp
from tf_dessilbi.sparse import rigl
from tf_dessilbi.sparse import schedules
from tf_dessilbi.sparse import set_
from tf_dessilbi.sparse import snip
from tf_dessilbi.sparse import topk
from tf_dessilbi.sparse import updater
from tf_dessilbi.sparse.callback import UpdateMasks
from tf_dessilbi.sparse.callback import update_masks
from tf_dessilbi.sparse.gmp import MagnitudePruning
from tf_dessilbi.sparse.gmp import UpdatePruningStep
from tf_dessilbi.sparse.gmp import prune_low_magnitude
from tf_dessilbi.sparse.gmp import strip_pruning
from tf_dessilbi.sparse.rigl import RigL
from tf_dessilbi.sparse.schedules import ConstantDropFraction
from tf_dessilbi.sparse.schedules import ConstantSparsity
from tf_dessilbi.sparse.schedules import CosineDropFraction
from tf_dessilbi.sparse.schedules import PolynomialDecay
from tf_dessilbi.sparse.schedules import UpdateSchedule
from tf_dessilbi.sparse.set_ import SET
from tf_dessilbi.sparse.topk import kept_count
from tf_dessilbi.sparse.topk import topk_mask
from tf_dessilbi.sparse.topk import topk_masks
from tf_dessilbi.sparse.updater import MaskUpdater
from tf_dessilbi.sparse.updater import PruneOnce

# config.method -> the module with prepare(config, model, data, steps_per_epoch)
# and callbacks(config, model, steps_per_epoch) (methods.md).
METHODS = {"gmp": gmp, "set": set_, "rigl": rigl, "snip": snip, "grasp": grasp}

__all__ = [
    "METHODS",
    "ConstantDropFraction",
    "ConstantSparsity",
    "CosineDropFraction",
    "MagnitudePruning",
    "MaskUpdater",
    "PolynomialDecay",
    "PruneOnce",
    "RigL",
    "SET",
    "UpdateMasks",
    "UpdatePruningStep",
    "UpdateSchedule",
    "densities",
    "gmp",
    "kept_count",
    "prune_low_magnitude",
    "rigl",
    "schedules",
    "set_",
    "strip_pruning",
    "topk",
    "topk_mask",
    "topk_masks",
    "update_masks",
    "updater",
]

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
  `MaskedLayer`, keys as in `tf_dessilbi.masks.Mask`), ``current_masks``,
  ``assign_masks(model, masks, zero=None)`` (all-or-nothing),
  ``prune(masks, scores, density, scope)``, ``drop_grow(masks, drop_scores,
  grow_scores, counts)``; ``MaskUpdater`` (``kind`` "prune" | "drop_grow",
  ``amount(step)``, ``drop_scores(targets, gradients)``,
  ``grow_scores(targets, gradients, step)``, ``needs_gradients``,
  ``gradients(model)``, ``prepare(model)``, ``update(model, step,
  gradients=None)``, ``get_state`` / ``set_state``). A one-shot method
  (SNIP, GraSP, IMP) is a prune-only updater whose ``drop_scores`` are its
  saliencies, or simply ``assign_masks(model, topk_masks(scores, d))``.
"""

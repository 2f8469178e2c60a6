"""Top-k masks: keep the k highest-scored weights, globally or per layer.

The selection every mask method shares (GMP, SNIP, GraSP, IMP, SET, RigL).
For scores s over n weights and a density d, the kept set is

::

    K = the k = round(d · n) indices with the largest s,

ties broken deterministically: among equal scores the earlier one wins, in
flat (row-major) order inside a tensor and, for a global selection, in the
order of the ``scores`` mapping. ``candidates`` restrict the choice (a weight
outside them is never kept). Pure `keras.ops` maths (TF, JAX, PyTorch),
eager: k is a Python int.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Union

import numpy as np
from keras import ops

from tf_dessilbi import _validate

SCOPES = ("global", "layer")


def kept_count(size: int, density: float) -> int:
    """k = round(d · n), the number of weights a density keeps (TF-MOT's rounding)."""
    return int(min(size, max(0, math.floor(density * size + 0.5))))


def _density(name: str, value) -> float:
    return _validate.real(name, value, minimum=0.0, maximum=1.0)


def _flat_scores(key, score, candidate):
    flat = ops.reshape(ops.cast(ops.convert_to_tensor(score), "float32"), (-1,))
    finite = ops.all(ops.isfinite(flat)) if candidate is None else ops.all(
        ops.logical_or(ops.isfinite(flat), ops.logical_not(candidate))
    )
    if not bool(ops.convert_to_numpy(finite)):
        raise ValueError(
            f"The scores of {key!r} must be finite (NaN or ±inf found); a diverged "
            f"training run or a broken scoring rule?"
        )
    if candidate is not None:
        flat = ops.where(candidate, flat, ops.full_like(flat, -np.inf))
    return flat


def _select(flat, k: int):
    """Bool mask of the k largest entries of a 1-D tensor, ties to the lower index."""
    n = int(flat.shape[0])
    if k == 0:
        return ops.zeros((n,), "bool")
    if k == n:
        return ops.ones((n,), "bool")
    order = ops.argsort(ops.negative(flat))  # stable on every backend: ties keep index order
    chosen = ops.expand_dims(ops.cast(order[:k], "int32"), -1)
    marks = ops.scatter(chosen, ops.ones((k,), "int32"), (n,))
    return ops.greater(marks, 0)


def _candidates(scores, candidates):
    if candidates is None:
        return {key: None for key in scores}
    if not isinstance(candidates, Mapping):
        raise TypeError(f"`candidates` must be a mapping of bool tensors. Received: {candidates!r}")
    missing = [k for k in scores if k not in candidates]
    extra = [k for k in candidates if k not in scores]
    if missing or extra:
        raise ValueError(
            f"`candidates` must have the keys of `scores`. Missing: {missing[:6]}, extra: {extra[:6]}"
        )
    result = {}
    for key, score in scores.items():
        cand = ops.convert_to_tensor(candidates[key])
        if tuple(cand.shape) != tuple(ops.shape(score)):
            raise ValueError(
                f"`candidates[{key!r}]` has shape {tuple(cand.shape)}; its scores {tuple(ops.shape(score))}."
            )
        result[key] = ops.reshape(ops.cast(cand, "bool"), (-1,))
    return result


def _count_candidates(candidate, size: int) -> int:
    if candidate is None:
        return size
    return int(ops.convert_to_numpy(ops.sum(ops.cast(candidate, "int32"))))


def topk_masks(
    scores: Mapping,
    density: Union[None, float, Mapping] = None,
    *,
    scope: str = "global",
    candidates: Optional[Mapping] = None,
    counts: Union[None, int, Mapping] = None,
) -> dict:
    """Masks keeping the highest scores.

    Args:
        scores: ``{key: tensor}`` of per-weight scores (higher = keep).
        density: the fraction kept, d ∈ [0, 1]: a float (one density,
            selected over all tensors together when ``scope="global"``, in
            every tensor alone when ``scope="layer"``) or ``{key: d_l}``
            (per layer; its keys must be those of ``scores``). Ignored when
            ``counts`` is given.
        scope: ``"global"`` (one k over the concatenated scores) or
            ``"layer"``. Defaults to ``"global"``.
        candidates: ``{key: bool tensor}``; only candidates can be kept.
            Defaults to None (every weight is a candidate).
        counts: keep exact numbers instead of a density: ``{key: k_l}``
            per layer (what the drop/grow update uses), or an int k over all
            tensors together.

    Returns:
        ``{key: bool tensor shaped like the scores}``, in the order of ``scores``.

    Raises:
        TypeError: ``scores`` is not a mapping.
        ValueError: no scores, a density outside [0, 1], unknown keys,
            non-finite scores, or more weights asked for than there are
            candidates.
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"`scores` must be a mapping {{key: tensor}}. Received: {scores!r}")
    if not scores:
        raise ValueError("`scores` is empty: there is no weight to select from.")
    _validate.one_of("scope", scope, SCOPES)
    shapes = {key: tuple(ops.shape(s)) for key, s in scores.items()}
    sizes = {key: int(np.prod(shape)) for key, shape in shapes.items()}
    cands = _candidates(scores, candidates)
    if isinstance(counts, Mapping):
        if set(counts) != set(scores):
            raise ValueError(
                f"`counts` must have the keys of `scores`. Received keys: {sorted(counts)[:8]}"
            )
        per_layer = {k: _validate.integer(f"counts[{k!r}]", counts[k], minimum=0) for k in scores}
        scope = "layer"
    elif counts is not None:
        total_k = _validate.integer("counts", counts, minimum=0)
        scope = "global"
    elif isinstance(density, Mapping):
        if set(density) != set(scores):
            raise ValueError(
                f"Per-layer densities must have the keys of `scores`. Missing: "
                f"{[k for k in scores if k not in density][:6]}, extra: "
                f"{[k for k in density if k not in scores][:6]}"
            )
        per_layer = {k: kept_count(sizes[k], _density(f"density[{k!r}]", density[k])) for k in scores}
        scope = "layer"
    else:
        d = _density("density", density)
        per_layer = {k: kept_count(sizes[k], d) for k in scores}
        total_k = kept_count(sum(sizes.values()), d)
    flats = {key: _flat_scores(key, s, cands[key]) for key, s in scores.items()}
    available = {key: _count_candidates(cands[key], sizes[key]) for key in scores}
    if scope == "layer":
        for key, k in per_layer.items():
            if k > available[key]:
                raise ValueError(
                    f"Cannot keep {k} weights of {key!r}: only {available[key]} are candidates."
                )
        return {
            key: ops.reshape(_select(flats[key], per_layer[key]), shapes[key]) for key in scores
        }
    if total_k > sum(available.values()):
        raise ValueError(
            f"Cannot keep {total_k} weights: only {sum(available.values())} are candidates."
        )
    keys = list(scores)
    chosen = _select(ops.concatenate([flats[k] for k in keys], axis=0), total_k)
    result, start = {}, 0
    for key in keys:
        result[key] = ops.reshape(chosen[start:start + sizes[key]], shapes[key])
        start += sizes[key]
    return result


def topk_mask(score, density: float, candidates=None):
    """One tensor's mask keeping its ``round(d · n)`` highest scores (see `topk_masks`)."""
    result = topk_masks(
        {"score": score}, density, scope="layer",
        candidates=None if candidates is None else {"score": candidates},
    )
    return result["score"]

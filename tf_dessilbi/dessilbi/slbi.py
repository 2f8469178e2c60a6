"""One step of split linearized Bregman iteration, as pure tensor maths.

Shared by the Keras 3 optimizer (`tf_dessilbi.DessiLBI`) and the tf_keras
optimizer of the TF-MOT bridge, so the update rule exists once.

For a coupled weight W with structure parameter Γ and auxiliary V (paper:
Fu et al., ICML 2020, Alg. 1; step α, scale κ, coupling ν written ``mu``)::

    Γ      = κ · prox_{λΩ}(V)               (a function of V: never stored)
    d      = momentum buffer of the loss gradient g
    W_new  = W − κ·α·(d + (W − Γ)/μ)
    V_new  = V + (α/μ)·(W − Γ)

An uncoupled weight takes ``W_new = W − κ·α·d``.

Γ_{k+1} = κ·prox(V_{k+1}) is exactly the paper's third line, so keeping V
alone (and computing Γ where it is needed: the coupling term, the accessors,
W*) gives the same iterates with one slot fewer per coupled weight: 8 B per
parameter (momentum + V) instead of 12.
"""

from __future__ import annotations

from tf_dessilbi.dessilbi import proximal
from tf_dessilbi.dessilbi.structures import ELEMENTWISE, GROUP_STRUCTURES, HEAD


def momentum_direction(gradient, buffer, momentum, nesterov: bool):
    """Heavy-ball or Nesterov direction (the convention of SGD with momentum).

    ``buffer_new = momentum·buffer + g``; the direction is ``buffer_new``, or
    ``g + momentum·buffer_new`` with Nesterov. With ``buffer=None`` (momentum
    0) the direction is ``g``.

    Returns:
        ``(direction, buffer_new)``; ``buffer_new`` is ``None`` without buffer.
    """
    if buffer is None:
        return gradient, None
    buffer_new = momentum * buffer + gradient
    if nesterov:
        return gradient + momentum * buffer_new, buffer_new
    return buffer_new, buffer_new


def prox(v, threshold, structure: str):
    """``prox_{threshold·Ω}(v)`` for a structure name."""
    if structure == ELEMENTWISE:
        return proximal.soft_threshold(v, threshold)
    if structure in GROUP_STRUCTURES:
        return proximal.group_soft_threshold(v, threshold)
    if structure == HEAD:  # one group per head: every axis but -2
        rank = len(v.shape)
        return proximal.group_soft_threshold(v, threshold, axis=tuple(
            a for a in range(rank) if a != rank - 2))
    raise ValueError(f"Unknown structure {structure!r}")


def gamma_of(v, kappa, threshold, structure: str):
    """Γ = κ · prox_{threshold·Ω}(V)."""
    return kappa * prox(v, threshold, structure)


def coupled_update(w, direction, v, lr, kappa, mu, threshold, structure):
    """New ``(W, V)`` of a coupled variable, with Γ = κ·prox(V); see the module docstring."""
    gap = w - gamma_of(v, kappa, threshold, structure)
    w_new = w - kappa * lr * (direction + gap / mu)
    v_new = v + (lr / mu) * gap
    return w_new, v_new


def step(gradient, w, buffer, v, *, lr, kappa, mu, threshold, momentum, nesterov: bool, structure):
    """One full DessiLBI step of a variable, as new values (nothing assigned).

    Args:
        gradient: loss gradient g (dense tensor, in W's dtype).
        w: current W.
        buffer: momentum buffer, or ``None`` without momentum.
        v: V, or ``None`` for an uncoupled variable.
        lr, kappa, mu, threshold, momentum: α, κ, μ, the λ-threshold of this
            variable and the momentum coefficient, in W's dtype.
        nesterov: Nesterov momentum.
        structure: the variable's structure, or ``None`` if uncoupled.

    Returns:
        ``(w_new, buffer_new, v_new)``; ``buffer_new`` is ``None`` without
        momentum, ``v_new`` for uncoupled variables. Γ_new is
        ``gamma_of(v_new, ...)``.
    """
    direction, buffer_new = momentum_direction(gradient, buffer, momentum, nesterov)
    if structure is None:
        return w - kappa * lr * direction, buffer_new, None
    w_new, v_new = coupled_update(w, direction, v, lr, kappa, mu, threshold, structure)
    return w_new, buffer_new, v_new


INITIAL_VALUE_SCALINGS = ("init_norm", "unit_init_norm")  # measured on W₀ when the optimizer is built


def threshold_scale(shape, structure: str, lambda_scaling: str) -> float:
    """Factor c with per-variable threshold ``λ·c``.

    ``"none"``: c = 1 everywhere (λ is the raw threshold on |V| or ‖V_g‖).
    ``"init_norm"`` and ``"unit_init_norm"`` depend on the initial values:
    see `init_norm_scale` and `unit_init_norm_scale`.
    ``"fan_in"``: c = 1 for groups and ``1/√fan_in`` for elementwise kernels,
    fan_in being the entries per output unit (all axes but the last). A group
    of n entries of size a has norm a·√n, so this makes λ mean the same for a
    single weight as for the unit that holds it, whatever the layer width.
    """
    if lambda_scaling in INITIAL_VALUE_SCALINGS:
        raise ValueError(f"lambda_scaling={lambda_scaling!r} needs the initial values: use "
                         f"init_norm_scale() or unit_init_norm_scale().")
    if lambda_scaling == "none" or structure != ELEMENTWISE:
        return 1.0
    fan_in = 1
    for dim in shape[:-1]:
        fan_in *= int(dim)
    return 1.0 / (max(fan_in, 1) ** 0.5)


def init_norm_scale(initial, structure: str) -> float:
    """Factor c of ``lambda_scaling="init_norm"``, from a kernel's initial value W₀.

    Groups: c = the RMS initial unit norm, √(Σ W₀² / units); elementwise:
    c = the RMS initial entry, √(mean W₀²) (= the former / √fan_in, so one λ
    means the same for a unit and for its entries, as with ``"fan_in"``).
    λ is then a multiple of the layer's typical initial norm: under the
    coupling an unimportant unit's ‖V_g‖ tends to its initial ‖W₀_g‖, so
    λ > 1 admits only units that grew. An all-zero W₀ gives the
    ``"fan_in"`` factor.
    """
    import numpy as np

    w = np.asarray(initial, dtype=np.float64)
    units = int(w.shape[-2 if structure == HEAD else -1]) if w.ndim else 1
    total = float((w ** 2).sum())
    if total == 0.0 or w.size == 0:
        return threshold_scale(w.shape, structure, "fan_in")
    if structure == ELEMENTWISE:
        return (total / w.size) ** 0.5
    return (total / max(units, 1)) ** 0.5


def unit_init_norm_scale(initial, structure: str):
    """Factors c_j of ``lambda_scaling="unit_init_norm"``: one per last-axis unit j.

    Groups: c_j = ‖W₀[..., j]‖₂, each unit's own initial norm, so unit j
    enters supp Γ once ‖V_j‖ > λ·‖W₀_j‖; elementwise: c_j = ‖W₀[..., j]‖₂ /
    √fan_in, the unit's RMS initial entry (one λ means the same for a unit
    and its entries, as with ``"fan_in"``). `init_norm_scale` divides by one
    number per layer, so the spread of the initial unit norms inside a layer
    still ranks the units: before a unit enters, V_j is the α/μ-weighted
    integral of W_j, and behind a BatchNormalization (whose output does not
    depend on ‖W_j‖; without weight decay ‖W_j‖ only grows by O(α²)) that
    integral ranks the filters almost as θ₀ does. Per unit, the initial
    scale cancels and what ranks the units is how much each grew and kept
    its direction. A unit whose W₀ is all zero gets the layer's
    `init_norm_scale`.

    Returns:
        float32 array of shape ``(units,)``, broadcasting against the last
        axis of V.
    """
    import numpy as np

    from tf_dessilbi.masks import unit_norms

    w = np.asarray(initial, dtype=np.float64).reshape(np.shape(initial) or (1,))
    if structure == HEAD:  # one factor per head, shaped (H, 1) to broadcast over (d, H, d_h)
        norms = unit_norms(np.moveaxis(w, -2, -1))[:, None]
        return np.where(norms > 0, norms, init_norm_scale(w, structure)).astype(np.float32)
    norms = unit_norms(w)
    if structure == ELEMENTWISE:
        norms = norms / np.sqrt(max(w.size // max(w.shape[-1], 1), 1))
    fallback = init_norm_scale(w, structure)
    return np.where(norms > 0, norms, fallback).astype(np.float32)

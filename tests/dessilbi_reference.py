"""Independent NumPy reference of DessiLBI, written from the paper's equations.

Fu et al. (ICML 2020), with step α, scale κ, coupling μ (ν in the paper) and
threshold λ, for each coupled weight W with structure parameter Γ and V:

    b ← momentum·b + g;   d = b  (heavy ball)  or  d = g + momentum·b  (Nesterov)
    W_{k+1} = W_k − κα (d + (W_k − Γ_k)/μ)
    V_{k+1} = V_k + (α/μ)(W_k − Γ_k)
    Γ_{k+1} = κ · prox_λ(V_{k+1})

prox is sign(V)·max(|V| − λ, 0) (lasso) or V_g·max(0, 1 − λ/‖V_g‖₂) (group
lasso, one group per last-axis slice). Uncoupled weights: W ← W − κα d.
Nothing here imports tf_dessilbi.
"""

import numpy as np


def soft_threshold(v, lam):
    return np.sign(v) * np.maximum(np.abs(v) - lam, 0.0)


def group_soft_threshold(v, lam):
    """λ a scalar, or one threshold per last-axis unit."""
    out = np.zeros_like(v)
    flat = v.reshape(-1, v.shape[-1])
    lams = np.broadcast_to(np.asarray(lam, np.float64), (v.shape[-1],))
    for j in range(v.shape[-1]):
        norm = np.sqrt(np.sum(flat[:, j].astype(np.float64) ** 2))
        if norm > lams[j]:
            out[..., j] = v[..., j] * (1.0 - lams[j] / norm)
    return out


def threshold(lam, shape, structure, lambda_scaling, w0=None):
    if lambda_scaling == "unit_init_norm":
        # λ × each unit's own initial norm (elementwise: that norm / √fan_in), per last-axis unit.
        w0 = np.asarray(w0, np.float64)
        out = np.empty(w0.shape[-1])
        for j in range(w0.shape[-1]):
            norm = np.sqrt(np.sum(w0[..., j] ** 2))
            if structure == "elementwise":
                norm /= np.sqrt(np.prod(w0.shape[:-1]))
            out[j] = lam * norm
        return out
    if lambda_scaling == "init_norm":
        # λ × the RMS initial entry (elementwise) or RMS initial unit norm (groups).
        w0 = np.asarray(w0, np.float64)
        if structure == "elementwise":
            return lam * np.sqrt(np.mean(w0 ** 2))
        units = w0.reshape(-1, w0.shape[-1])
        return lam * np.sqrt(np.mean(np.sum(units ** 2, axis=0)))
    if structure == "elementwise" and lambda_scaling == "fan_in":
        return lam / np.sqrt(np.prod(shape[:-1]))
    return lam


class ReferenceDessiLBI:
    """Holds W, b, V, Γ per variable and applies the equations above."""

    def __init__(self, weights, structures, kappa, mu, lam, momentum,
                 nesterov, lambda_scaling):
        self.w = [np.array(w, dtype=np.float64) for w in weights]
        self.w0 = [w.copy() for w in self.w]
        self.structures = structures
        self.b = [np.zeros_like(w) for w in self.w]
        self.v = [np.zeros_like(w) for w in self.w]
        self.gamma = [np.zeros_like(w) for w in self.w]
        self.kappa, self.mu, self.lam = kappa, mu, lam
        self.momentum, self.nesterov = momentum, nesterov
        self.lambda_scaling = lambda_scaling

    def step(self, grads, lr):
        k, mu = self.kappa, self.mu
        for i, g in enumerate(grads):
            g = np.asarray(g, dtype=np.float64)
            if self.momentum > 0:
                self.b[i] = self.momentum * self.b[i] + g
                d = g + self.momentum * self.b[i] if self.nesterov else self.b[i]
            else:
                d = g
            s = self.structures[i]
            if s is None:
                self.w[i] = self.w[i] - k * lr * d
                continue
            w_old, gamma_old = self.w[i], self.gamma[i]
            self.w[i] = w_old - k * lr * (d + (w_old - gamma_old) / mu)
            self.v[i] = self.v[i] + (lr / mu) * (w_old - gamma_old)
            lam = threshold(self.lam, self.w[i].shape, s, self.lambda_scaling, self.w0[i])
            if s == "elementwise":
                self.gamma[i] = k * soft_threshold(self.v[i], lam)
            else:
                self.gamma[i] = k * group_soft_threshold(self.v[i], lam)


def joint_group_gammas(v, lams, kappa, groups):
    """Γ of group-coupled V's under joint coupling (tf_dessilbi's ``unit_groups``).

    ``v``/``lams``: {index: V, per-unit λ_g}; ``groups``: lists of (index,
    unit) whose columns form one group G of Ω = Σ_G λ_G‖Γ_G‖₂ with
    λ_G = √(Σ λ_g²): Γ_G = κ·max(0, 1 − λ_G/‖V_G‖₂)·V_G, written on the
    concatenated group. Units in no group take the per-unit prox.
    """
    out = {i: kappa * group_soft_threshold(v[i], lams[i]) for i in v}
    for group in groups:
        columns = np.concatenate([v[i].reshape(-1, v[i].shape[-1])[:, u] for i, u in group])
        lam_g = np.sqrt(sum(np.broadcast_to(lams[i], (v[i].shape[-1],))[u] ** 2 for i, u in group))
        norm = np.sqrt(np.sum(columns ** 2))
        scale = kappa * (1.0 - lam_g / norm) if norm > lam_g else 0.0
        for i, u in group:
            out[i][..., u] = v[i][..., u] * scale
    return out


class JointReferenceDessiLBI(ReferenceDessiLBI):
    """`ReferenceDessiLBI` whose group-coupled Γ's are `joint_group_gammas` over ``groups``."""

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = [list(g) for g in groups]

    def step(self, grads, lr):
        super().step(grads, lr)  # W, V from W_k, Γ_k (Jacobi); the per-unit Γ is replaced below
        idx = [i for i, s in enumerate(self.structures) if s in ("filter", "neuron")]
        lams = {i: threshold(self.lam, self.w[i].shape, self.structures[i], self.lambda_scaling, self.w0[i])
                for i in idx}
        gammas = joint_group_gammas({i: self.v[i] for i in idx}, lams, self.kappa, self.groups)
        for i in idx:
            self.gamma[i] = gammas[i]

"""``path.npz`` read back (`load_path`) and drawn to a PNG (`plot_path`)."""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import numpy as np

from tf_dessilbi import _validate

MAX_LINES = 30  # units drawn as lines per panel; the rest as a band


def _title(name: str, rec: dict, support: np.ndarray) -> str:
    total = int(rec.get("total") or 0)
    kept = int(rec["kept"][-1]) if len(rec.get("kept", [])) else 0
    units = f"{int(support.sum())}/{support.size} units"
    if total:
        return f"{name}: {100 * kept / total:.1f}% of weights kept ({kept}/{total}), {units}"
    return f"{name}: {units} in support"


def _panel(ax, x, rec, name):
    gamma = np.stack(rec["gamma"])
    w = np.stack(rec["w"])
    support = gamma[-1] > 0
    order = np.argsort(-w[-1])  # largest final ‖W_g‖ first
    drawn = order[:MAX_LINES]
    rest = order[MAX_LINES:]
    marker = "o" if len(x) == 1 else None
    if rest.size:
        band = w[:, rest]
        ax.fill_between(x, band.min(axis=1), band.max(axis=1), color="0.85", lw=0,
                        label=f"other {rest.size} units (range)")
        ax.plot(x, np.median(band, axis=1), color="0.5", lw=0.8, ls=":")
    for unit in drawn:
        if support[unit]:
            ax.plot(x, w[:, unit], color="tab:red", lw=1.0, marker=marker)
            ax.plot(x, gamma[:, unit], color="tab:red", lw=0.8, ls="--", alpha=0.6)
        else:
            ax.plot(x, w[:, unit], color="0.55", lw=0.8, alpha=0.8, marker=marker)
    ax.set_title(_title(name, rec, support), fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("unit norm ‖W_g‖")
    if len(x) == 1:
        ax.set_xlim(x[0] - 0.5, x[0] + 0.5)


def _columns(panels: int) -> int:
    """Panels per row: 3 up to 12 panels (FMNIST-CNN-S, LeNet), 4 beyond (ResNets)."""
    return min(3 if panels <= 12 else 4, max(panels, 1))


def load_path(filename: str):
    """Reads ``path.npz`` back: ``(epochs, steps, {layer: {"gamma", "w", "kept", "total"}})``."""
    with np.load(filename) as data:
        epochs = [float(e) for e in data["epochs"]]
        steps = [int(s) for s in data["steps"]] if "steps" in data.files else list(range(len(epochs)))
        history = {}
        for key in data.files:
            if "/" not in key:
                continue
            name, kind = key.rsplit("/", 1)
            rec = history.setdefault(name, {})
            rec[kind] = int(data[key]) if kind == "total" else list(data[key])
        for rec in history.values():
            rec.setdefault("kept", [int(np.count_nonzero(g)) for g in rec["gamma"]])
            rec.setdefault("total", 0)
    return epochs, steps, history


def plot_path(
    npz_file: str,
    png_file: str,
    layers: Optional[Sequence[str]] = None,
    max_layers: int = 48,
) -> str:
    """Draws the regularization path in ``path.npz`` to a PNG.

    One panel per layer: every unit's ‖W_g‖ against the (fractional) epoch,
    the units in the support of Γ at the last record in red (dashed: their
    ‖Γ_g‖) and the others in grey. Wide layers draw their 30 units with the
    largest final ‖W_g‖ as lines and the range of the others as a grey band.
    Titles give the fraction of weights kept (elementwise layers keep weights,
    not whole units) and the units in the support. matplotlib is imported
    here, with the non-interactive Agg backend.

    Args:
        npz_file: a file written by `RegularizationPath` / `save_path`.
        png_file: output image.
        layers: layer names to draw. Defaults to all, up to `max_layers`.
        max_layers: most panels when `layers` is not given (a ResNet-20 has 21
            coupled layers, a ResNet-56 57). Defaults to `48`; a figure that
            leaves layers out says so in its title and warns.

    Returns:
        `png_file`.

    Raises:
        ImportError: matplotlib is not installed (``pip install
            tf_dessilbi[plot]``).
        ValueError: an unknown layer name, or `max_layers` < 1.
        TypeError: `max_layers` is not an integer.
    """
    max_layers = _validate.positive_int("max_layers", max_layers)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plot_path() needs matplotlib: `pip install tf_dessilbi[plot]`."
        ) from e
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch


    epochs, _, history = load_path(npz_file)
    names = list(history)
    if layers is not None:
        unknown = [n for n in layers if n not in history]
        if unknown:
            raise ValueError(f"Unknown layers {unknown}; recorded: {names}")
        names = list(layers)
    left_out = "" if layers is not None or len(names) <= max_layers else (
        f"the first {max_layers} of {len(names)} coupled layers (plot_path(layers=[...]) picks others)")
    if left_out:
        warnings.warn(f"plot_path: {left_out}.", stacklevel=2)
        names = names[:max_layers]
    cols = _columns(len(names))
    rows = -(-max(len(names), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.4 * rows), squeeze=False)
    if left_out:
        fig.suptitle(left_out[0].upper() + left_out[1:], fontsize=10)
    x = np.asarray(epochs, dtype=np.float64)
    for ax, name in zip(axes.flat, names):
        _panel(ax, x, history[name], name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(
        [
            Line2D([], [], color="tab:red"),
            Line2D([], [], color="tab:red", ls="--"),
            Line2D([], [], color="0.55"),
            Patch(color="0.85"),
        ],
        ["‖W_g‖, in the support", "‖Γ_g‖", "‖W_g‖, not in the support",
         f"units beyond the {MAX_LINES} largest (range; dotted: median)"],
        loc="lower center",
        ncol=4,
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.07 * 4 / max(rows, 4), 1, 0.97 if left_out else 1))
    tmp = png_file + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_file)
    return png_file

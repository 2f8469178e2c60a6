"""The regularization path of a DessiLBI run: per-filter ‖Γ_g‖ and ‖W_g‖ by epoch.

`RegularizationPath` is a Keras callback that records, at the end of every
epoch, the norm of each output unit (conv filter, dense neuron) of every
coupled kernel, for Γ and for W, and writes them to ``path.npz``;
`plot_path` draws them like Figure 1 of the DessiLBI paper (Fu et al., ICML
2020): filter norm against epoch, the units in the final support of Γ in one
colour and the others in another, so one sees the important filters enter
the support early (inverse scale space). Gated models (Continuous
Sparsification) are recorded too, with the gate's kept units as support.

``path.npz`` holds, per layer ``L``: ``L/gamma`` and ``L/w`` of shape
``(epochs, units)``, plus ``epochs`` (1-based).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import keras
import numpy as np

from tf_dessilbi.sparsity import unwrap_optimizer


def unit_norms(kernel: np.ndarray) -> np.ndarray:
    """L2 norm of each output unit (last axis) of a kernel."""
    kernel = np.asarray(kernel, dtype=np.float64)
    return np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))


def coupled_kernels(model: keras.Model, optimizer) -> list:
    """``(layer_name, W, Γ)`` NumPy arrays for every kernel the optimizer couples.

    Args:
        model: the trained model.
        optimizer: a built `tf_dessilbi.DessiLBI` (possibly wrapped in a
            `LossScaleOptimizer`), or ``None``.

    Returns:
        A list, empty when `optimizer` has no Γ.
    """
    optimizer = unwrap_optimizer(optimizer)
    if optimizer is None or not hasattr(optimizer, "gamma"):
        return []
    if not getattr(optimizer, "built", False):
        return []
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer._trainable_variables:
            if variable.path.split("/")[-1] != "kernel":
                continue
            gamma = optimizer.gamma(variable)
            if gamma is None:
                continue
            out.append(
                (
                    layer.name,
                    keras.ops.convert_to_numpy(variable),
                    keras.ops.convert_to_numpy(gamma),
                )
            )
    return out


def _gated_kernels(model: keras.Model) -> list:
    """``(layer_name, W ⊙ soft mask, W ⊙ hard mask)`` for gated layers, if any."""
    try:
        from tf_dessilbi.gates import gating
    except ImportError:
        return []
    out = []
    for layer in gating.gated_layers(model):
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        mask = np.broadcast_to(
            keras.ops.convert_to_numpy(layer.kept_mask()), kernel.shape
        )
        out.append((layer.name, kernel, np.where(mask, kernel, 0.0)))
    return out


class RegularizationPath(keras.callbacks.Callback):
    """Records per-unit ‖Γ_g‖ and ‖W_g‖ every epoch; writes path.npz (and path.png).

    Args:
        workdir: folder for ``path.npz`` and ``path.png``.
        optimizer: the `DessiLBI` optimizer. Defaults to the model's.
        plot: redraw ``path.png`` after every epoch. Defaults to `True`.

    The recorded history survives `keras.callbacks.BackupAndRestore`
    restarts: it is reloaded from ``path.npz`` when training starts.
    """

    def __init__(self, workdir: str, optimizer=None, plot: bool = True):
        super().__init__()
        self.workdir = workdir
        self.optimizer = optimizer
        self.plot = plot
        self.npz_path = os.path.join(workdir, "path.npz")
        self.png_path = os.path.join(workdir, "path.png")
        self.history = {}  # layer -> {"gamma": [..], "w": [..]}
        self.epochs = []

    def on_train_begin(self, logs=None):
        if os.path.exists(self.npz_path):
            self.epochs, self.history = load_path(self.npz_path)

    def _snapshot(self):
        optimizer = self.optimizer or getattr(self.model, "optimizer", None)
        kernels = coupled_kernels(self.model, optimizer) or _gated_kernels(self.model)
        return [(name, unit_norms(w), unit_norms(g)) for name, w, g in kernels]

    def on_epoch_end(self, epoch, logs=None):
        epoch = epoch + 1
        if self.epochs and self.epochs[-1] >= epoch:  # re-run after a restore
            keep = [i for i, e in enumerate(self.epochs) if e < epoch]
            self.epochs = [self.epochs[i] for i in keep]
            for rec in self.history.values():
                for key in rec:
                    rec[key] = [rec[key][i] for i in keep]
        self.epochs.append(epoch)
        for name, w, g in self._snapshot():
            rec = self.history.setdefault(name, {"gamma": [], "w": []})
            rec["gamma"].append(g)
            rec["w"].append(w)
        save_path(self.npz_path, self.epochs, self.history)
        if self.plot and self.history:
            plot_path(self.npz_path, self.png_path)


def save_path(filename: str, epochs: Sequence[int], history: dict) -> None:
    """Writes the recorded path to `filename` (``.npz``), atomically."""
    arrays = {"epochs": np.asarray(epochs, dtype=np.int64)}
    for name, rec in history.items():
        arrays[f"{name}/gamma"] = np.stack(rec["gamma"]).astype(np.float32)
        arrays[f"{name}/w"] = np.stack(rec["w"]).astype(np.float32)
    tmp = filename + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, filename)


def load_path(filename: str):
    """Reads ``path.npz`` back: ``(epochs, {layer: {"gamma": [...], "w": [...]}})``."""
    with np.load(filename) as data:
        epochs = [int(e) for e in data["epochs"]]
        history = {}
        for key in data.files:
            if key == "epochs":
                continue
            name, kind = key.rsplit("/", 1)
            history.setdefault(name, {})[kind] = list(data[key])
    return epochs, history


def plot_path(
    npz_file: str,
    png_file: str,
    layers: Optional[Sequence[str]] = None,
    max_layers: int = 6,
) -> str:
    """Draws the regularization path in ``path.npz`` to a PNG.

    One panel per layer: every unit's ‖W_g‖ against epoch, the units in the
    support of Γ at the last epoch in red and the others in grey (dashed
    lines: ‖Γ_g‖ of the support). matplotlib is imported here, with the
    non-interactive Agg backend.

    Args:
        npz_file: a file written by `RegularizationPath` / `save_path`.
        png_file: output image.
        layers: layer names to draw. Defaults to all, up to `max_layers`.
        max_layers: most panels when `layers` is not given. Defaults to `6`.

    Returns:
        `png_file`.

    Raises:
        ImportError: matplotlib is not installed (``pip install
            tf_dessilbi[plot]``).
        ValueError: an unknown layer name.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plot_path() needs matplotlib: `pip install tf_dessilbi[plot]`."
        ) from e
    from matplotlib.ticker import MaxNLocator

    epochs, history = load_path(npz_file)
    names = list(history)
    if layers is not None:
        unknown = [n for n in layers if n not in history]
        if unknown:
            raise ValueError(f"Unknown layers {unknown}; recorded: {names}")
        names = list(layers)
    else:
        names = names[:max_layers]
    cols = min(3, max(len(names), 1))
    rows = -(-max(len(names), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    x = np.asarray(epochs)
    for ax, name in zip(axes.flat, names):
        gamma = np.stack(history[name]["gamma"])
        w = np.stack(history[name]["w"])
        support = gamma[-1] > 0
        for unit in np.flatnonzero(~support):
            ax.plot(x, w[:, unit], color="0.6", lw=0.8, alpha=0.7)
        for unit in np.flatnonzero(support):
            ax.plot(x, w[:, unit], color="tab:red", lw=1.0)
            ax.plot(x, gamma[:, unit], color="tab:red", lw=0.8, ls="--", alpha=0.6)
        ax.set_title(f"{name}: {int(support.sum())}/{support.size} in support", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("filter norm ‖W_g‖")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    fig.legend(
        [
            Line2D([], [], color="tab:red"),
            Line2D([], [], color="tab:red", ls="--"),
            Line2D([], [], color="0.6"),
        ],
        ["‖W_g‖, in supp(Γ)", "‖Γ_g‖", "‖W_g‖, not in supp(Γ)"],
        loc="lower center",
        ncol=3,
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    tmp = png_file + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_file)
    return png_file

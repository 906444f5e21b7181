"""Figures: training curves, confusion matrices, scaling studies.

matplotlib is imported inside each function with the Agg backend, so the library never needs
a display and never pays matplotlib's import time unless a figure is drawn. Every PNG is
written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet.files import atomic_write

if TYPE_CHECKING:
    import torch

    from effnet.profile.study import ScaleRow


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    _pyplot().close(fig)
    return out


def plot_curves(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Loss (train, val) and validation top-1 per epoch, from ``metrics.csv`` rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = _pyplot().subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [r["train_loss"] for r in rows], label="train")
    a.plot(epochs, [r["val_loss"] for r in rows], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [r["val_top1"] for r in rows], label="val top-1")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    b.legend()
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def plot_confusion(confusion: torch.Tensor, names: list[str], path: str | Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted); counts written in the cells
    up to 20 classes, class names on the axes up to 40."""
    n = len(names)
    fig, ax = _pyplot().subplots(figsize=(max(4, 0.4 * n + 2), max(4, 0.4 * n + 2)))
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def plot_compound_study(rows: list[ScaleRow], path: str | Path, title: str = "") -> Path:
    """Measured FLOPs ratio against the predicted (alpha*beta^2*gamma^2)^phi (log scale), and
    parameters, per phi."""
    if not rows:
        raise ValueError("plot_compound_study: no rows to plot")
    phis = [r.phi for r in rows]
    fig, (a, b) = _pyplot().subplots(1, 2, figsize=(10, 4))
    a.plot(phis, [r.flops_ratio for r in rows], "o-", label="measured")
    a.plot(phis, [r.flops_ratio_predicted for r in rows], "--", label="predicted (alpha*beta^2*gamma^2)^phi")
    a.set_yscale("log")
    a.set_xlabel("phi")
    a.set_ylabel("FLOPs / base FLOPs")
    a.legend()
    b.plot(phis, [r.params / 1e6 for r in rows], "o-")
    for r in rows:
        b.annotate(f"{r.resolution}px", (r.phi, r.params / 1e6), textcoords="offset points", xytext=(4, -10),
                   fontsize=8)
    b.set_xlabel("phi")
    b.set_ylabel("parameters (M)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi=90)

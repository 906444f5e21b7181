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

    from effnet.profile.sweep import ScaleRow


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use: the
    figure modules (:mod:`effnet.viz.cam`, :mod:`effnet.viz.figures`) draw through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int, fmt: str = "png") -> Path:
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    pyplot().close(fig)
    return out


def save_fig(fig: Any, path: str | Path, dpi: int, fmt: str | None = None) -> Path:
    """Write ``fig`` atomically and close it, in the format named by ``fmt`` or by the file's suffix
    (png, svg, pdf)."""
    fmt = fmt or Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"{path}: expected a .png, .svg or .pdf file name, got format {fmt!r}")
    return _save(fig, path, dpi, fmt)


def plot_curves(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Loss (train, val) and validation top-1 per epoch, from ``metrics.csv`` rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 4))
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


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads on a cell of colour ``rgba`` (0-1): white where the
    cell's relative luminance (ITU-R BT.709 weights on the linearised sRGB channels) is below
    0.18, about the middle grey that contrasts equally with both (WCAG contrast ratios)."""
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgba[:3])
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.18 else "black"


def plot_confusion(confusion: torch.Tensor, names: list[str], path: str | Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted); counts written in the cells
    up to 20 classes, class names on the axes up to 40."""
    n = len(names)
    fig, ax = pyplot().subplots(figsize=(max(4, 0.4 * n + 2), max(4, 0.4 * n + 2)))
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    value = int(confusion[i, j])
                    ax.text(j, i, value, ha="center", va="center", fontsize=7,
                            color=text_colour(image.cmap(image.norm(value))))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def plot_scale_sweep(rows: list[ScaleRow], path: str | Path, title: str = "") -> Path:
    """Measured FLOPs ratio against the predicted (alpha*beta^2*gamma^2)^phi (log scale), and
    parameters, per phi."""
    if not rows:
        raise ValueError("plot_scale_sweep: no rows to plot")
    phis = [r.phi for r in rows]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 4))
    a.plot(phis, [r.flops_ratio for r in rows], "o-", label="measured")
    strategy = getattr(rows[0], "strategy", "compound")
    # compound and v2 predict (alpha*beta^2*gamma^2)^phi; the other strategies aim at 2^phi.
    rule = "(alpha*beta^2*gamma^2)^phi" if strategy in ("compound", "v2") else "2^phi"
    a.plot(phis, [r.flops_ratio_predicted for r in rows], "--", label=f"predicted {rule} ({strategy})")
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


def plot_accuracy_flops(path: str | Path, points: list[dict[str, Any]], best: dict[str, Any] | None = None,
                        title: str = "") -> Path:
    """Validation top-1 against FLOPs for trained candidates (``points``: label,
    flops, top1, pruned), the best one marked: the scaling search's result."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [p for p in points if not p.get("pruned")]
    cut = [p for p in points if p.get("pruned")]
    ax.scatter([p["flops"] / 1e6 for p in done], [p["top1"] for p in done], s=28, label="trained to the end")
    if cut:
        ax.scatter([p["flops"] / 1e6 for p in cut], [p["top1"] for p in cut], s=28, marker="x", color="grey",
                   label="pruned (last reported epoch)")
    if best is not None:
        ax.scatter([best["flops"] / 1e6], [best["top1"]], s=160, marker="*", color="crimson", zorder=3,
                   label=best["label"])
    if len(points) <= 20:
        for p in points:
            ax.annotate(p["label"], (p["flops"] / 1e6, p["top1"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color="dimgrey")
    return _finish_accuracy(fig, ax, [p["flops"] for p in points], title, path)


def plot_strategies(path: str | Path, lines: dict[str, list[tuple[float, float]]],
                    baseline: tuple[float, float] | None = None, title: str = "") -> Path:
    """Accuracy against FLOPs, one line per scaling strategy from the shared baseline
    (EfficientNet Figure 3 / Figure 8 layout)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in lines.items():
        ax.plot([f / 1e6 for f, _ in pts], [a for _, a in pts], "o-", label=name)
    if baseline is not None:
        ax.scatter([baseline[0] / 1e6], [baseline[1]], s=90, color="black", zorder=3, label="baseline")
    flops = [f for pts in lines.values() for f, _ in pts] + ([baseline[0]] if baseline is not None else [])
    return _finish_accuracy(fig, ax, flops, title, path)


def cost_axis(ax: Any, values: list[float], label: str) -> None:
    """The x axis of a cost (FLOPs, parameters, time): a log scale only when the values span more
    than 4x (a grid at one phi spans little, and log ticks there read as 1.3 x 10^2), with plain
    tick labels at 1, 2, 5 x 10^k; one value alone is centred instead of on a 1% wide axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if values and max(values) == min(values):
        ax.set_xlim(values[0] * 0.5, values[0] * 1.5)
    if values and max(values) > 4 * min(values):
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 300, not 3 x 10^2
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        label += " (log scale)"
    ax.set_xlabel(label)
    ax.grid(alpha=0.3, which="major")


def _finish_accuracy(fig: Any, ax: Any, flops: list[float], title: str, path: str | Path) -> Path:
    """Axes of an accuracy-against-FLOPs figure, then save it (FLOPs in millions)."""
    cost_axis(ax, [f / 1e6 for f in flops], "FLOPs (M multiply-adds)")
    ax.set_ylabel("validation top-1 (%)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def plot_search(path: str | Path, points: list[dict[str, Any]], *, base_step_ms: float, pareto: bool = False,
                ylabel: str = "reward", title: str = "") -> Path:
    """An architecture search's trials against measured training step time (``points``:
    step_ms, y, label, pruned, front, base, best), the base's step time S0 as a dashed line
    and the base's own trial, if any, marked. With ``pareto`` the non-dominated trials (the
    front of accuracy against step time and parameters) are drawn in their own colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plain = [p for p in points if not p.get("pruned") and not p.get("front")]
    cut = [p for p in points if p.get("pruned")]
    front = [p for p in points if p.get("front")]
    ax.scatter([p["step_ms"] for p in plain], [p["y"] for p in plain], s=28,
               label="dominated trials" if pareto else "trials")
    if front:
        # Markers only: the front is non-dominated in three objectives, so a line through its
        # 2-D projection would suggest a trade-off curve it is not.
        ax.scatter([p["step_ms"] for p in front], [p["y"] for p in front], s=40, color="tab:orange",
                   label="Pareto front (top-1, step time, params)")
    if cut:
        ax.scatter([p["step_ms"] for p in cut], [p["y"] for p in cut], s=28, marker="x", color="grey",
                   label="pruned (last reported epoch)")
    ax.axvline(base_step_ms, ls="--", color="black", lw=1, label=f"base step time S0 = {base_step_ms:.1f} ms")
    for p in points:
        if p.get("base"):
            ax.scatter([p["step_ms"]], [p["y"]], s=110, marker="s", facecolor="none", edgecolor="black", lw=1.5,
                       zorder=3, label="base network")
        if p.get("best"):
            ax.scatter([p["step_ms"]], [p["y"]], s=170, marker="*", color="crimson", zorder=4,
                       label=f"best ({p['label']})")
    if len(points) <= 30:
        for p in points:
            ax.annotate(p["label"], (p["step_ms"], p["y"]), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color="dimgrey")
    ax.set_xlabel("training step time S (ms, measured)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=110)

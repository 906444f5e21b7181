"""Figures for scaling studies."""

from __future__ import annotations

from pathlib import Path

from effnet.scaling.study import ScaleRow
from effnet.weights.format import atomic_write


def plot_compound_study(rows: list[ScaleRow], path: str | Path, title: str = "") -> Path:
    """Measured FLOPs ratio against the predicted (alpha*beta^2*gamma^2)^phi (log scale), and
    parameters, per phi; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_compound_study: no rows to plot")
    phis = [r.phi for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
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
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return out

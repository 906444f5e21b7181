"""Plots (matplotlib, imported lazily so the library never needs a display)."""

from effnet.viz.plots import plot_compound_study, plot_confusion, plot_curves

__all__ = ["plot_compound_study", "plot_confusion", "plot_curves"]

"""Figures and class activation maps (matplotlib imported lazily, so the library never needs a
display): training curves, confusion matrices, scaling plots; CAM / Grad-CAM
(:mod:`effnet.viz.cam`); accuracy against FLOPs and parameters beside the published curves
(:mod:`effnet.viz.figures`)."""

from __future__ import annotations

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): a training run that draws its curves needs only
# effnet.viz.plots, not CAM (which builds models) or the published-results figures (which read
# the profile's counts).
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.viz.cam", ("CamOutput", "ImageCam", "class_activation_maps", "image_cam", "plot_cams")),
    ("effnet.viz.figures", ("ResultPoint", "paper_points", "plot_results", "read_json_points")),
    ("effnet.viz.plots", ("plot_confusion", "plot_curves", "plot_scale_sweep")),
) for name in names}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

"""Figures and class activation maps (matplotlib imported lazily, so the library never needs a
display): training curves, confusion matrices, scaling plots; CAM / Grad-CAM
(:mod:`effnet.viz.cam`); accuracy against FLOPs and parameters beside the published curves
(:mod:`effnet.viz.figures`)."""

from effnet.viz.cam import CamOutput, ImageCam, class_activation_maps, image_cam, plot_cams
from effnet.viz.figures import ResultPoint, paper_points, plot_results, read_json_points
from effnet.viz.plots import plot_confusion, plot_curves, plot_scale_sweep

__all__ = [
    "CamOutput",
    "ImageCam",
    "ResultPoint",
    "class_activation_maps",
    "image_cam",
    "paper_points",
    "plot_cams",
    "plot_confusion",
    "plot_curves",
    "plot_results",
    "plot_scale_sweep",
    "read_json_points",
]

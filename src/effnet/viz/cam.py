"""Class activation maps: where in an image the network found the evidence for a class.

Two methods, both on the network's last feature map (stride 32):

- **CAM** (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization"). Every
  EfficientNet ends in global average pooling and one linear layer, so the class score is
  exactly ``logit_k = mean_xy(sum_c W[k, c] * F[c, x, y]) + b_k``: the map
  ``M_k(x, y) = sum_c W[k, c] * F[c, x, y]`` is the class score spread over the positions it
  came from, with no approximation.
- **Grad-CAM** (Selvaraju et al. 2017): channel weights are the spatial mean of the gradient of
  the class score with respect to a feature map, and the map is ``ReLU(sum_c weight_c * A_c)``.
  It works at any layer (``layer="stages.4"``); at the last feature map of a GAP + linear head
  the gradient is ``W[k, c] / (h * w)`` everywhere, so Grad-CAM there is ``ReLU(CAM) / (h * w)``.

Both are a few lines on top of :meth:`ConvNet.forward_features` and
:meth:`ConvNet.forward_head`, so no attribution library is needed (captum's
``LayerGradCam`` serves as the tests' independent reference).

Images: the map is drawn over the *original* image, whatever its aspect ratio. ``view="full"``
(the default) feeds the whole image, shorter side resized as the evaluation transform does
(``resolution / crop_pct``) so objects appear at the scale the network was evaluated at, and
the map covers the whole picture; ``view="crop"`` feeds exactly the evaluation centre crop
(the same pixels as ``effnet predict``) and maps it back onto the region of the original that
the crop came from (outside it there is no map). Decoding files and loading weights happen in
the caller (``effnet.commands.viz``), since ``effnet.viz`` sits below those layers.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from effnet.model import ConvNet
from effnet.preprocessing import Preprocessing, center_crop_geometry, resample
from effnet.viz.plots import pyplot, save_fig

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

CAM_METHODS = ("cam", "gradcam")
VIEWS = ("full", "crop")


@dataclass
class CamOutput:
    """Raw maps at the feature map's resolution, with the logits of the same forward pass."""

    maps: torch.Tensor    # (N, h, w): CAM (signed) or Grad-CAM (>= 0)
    logits: torch.Tensor  # (N, num_classes)
    target: torch.Tensor  # (N,) the class index each map explains


def class_activation_maps(
    model: ConvNet, x: torch.Tensor, target: int | Sequence[int] | None = None, *, method: str = "cam",
    layer: str | None = None,
) -> CamOutput:
    """CAM or Grad-CAM of ``model`` (an effnet network, evaluated in eval mode) for normalised
    input ``x`` (N, C, H, W). ``target``: one class for every image, one per image, or ``None``
    for each image's top-1 class. ``layer`` (Grad-CAM only): the module whose output is
    explained (``"stages.4"``...; default the final feature map, ``"head"``)."""
    if method not in CAM_METHODS:
        raise ValueError(f"method: expected one of {', '.join(CAM_METHODS)}, got {method!r}")
    if not isinstance(model, ConvNet):
        raise TypeError(f"class_activation_maps: expected an effnet ConvNet, got {type(model).__name__}")
    if not isinstance(model.classifier, nn.Linear):
        raise ValueError("class_activation_maps: the model has no classifier (num_classes=0); "
                         "load a model with a classification head")
    if method == "cam" and layer not in (None, "head"):
        raise ValueError(f"layer={layer!r}: CAM is defined on the final feature map only (the classifier's "
                         "input); use method='gradcam' for another layer")
    was_training = model.training
    model.eval()  # BatchNorm running statistics and no dropout: the maps explain the evaluated network
    try:
        if method == "cam":
            return _cam(model, x, target)
        return _gradcam(model, x, target, layer or "head")
    finally:
        model.train(was_training)


def _targets(target: int | Sequence[int] | None, logits: torch.Tensor) -> torch.Tensor:
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.tensor([target] * n if isinstance(target, int) else list(target), device=logits.device)
    if t.numel() != n:
        raise ValueError(f"target: expected one class or {n} (one per image), got {t.numel()}")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"target: class indices must be in 0..{k - 1}, got {t.tolist()}")
    return t


@torch.no_grad()
def _cam(model: ConvNet, x: torch.Tensor, target: int | Sequence[int] | None) -> CamOutput:
    feats = model.forward_features(x)  # (N, C, h, w)
    logits = model.forward_head(feats)
    t = _targets(target, logits)
    w = model.classifier.weight[t]  # (N, C): each image's class row
    maps = torch.einsum("nc,nchw->nhw", w.to(feats.dtype), feats)
    return CamOutput(maps.float(), logits.float(), t)


def _gradcam(model: ConvNet, x: torch.Tensor, target: int | Sequence[int] | None, layer: str) -> CamOutput:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n.count(".") <= 1 and n]
        close = difflib.get_close_matches(layer, names, n=3)
        raise ValueError(f"layer {layer!r} is not a module of {model.spec.name}"
                         + (f"; did you mean {', '.join(close)}?" if close else f"; e.g. {', '.join(names[:6])}")) from None
    seen: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        # Continue the forward from a leaf copy of the activation: its gradient is then
        # available even when the weights are frozen (requires_grad False).
        leaf = out.detach().requires_grad_(True)
        seen["a"] = leaf
        return leaf

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            if "a" not in seen:
                raise ValueError(f"layer {layer!r} did not run in the forward pass; choose a module on the path")
            t = _targets(target, logits.detach())
            score = logits.gather(1, t[:, None]).sum()  # images are independent: one backward for all
            (grad,) = torch.autograd.grad(score, seen["a"])
    finally:
        handle.remove()
    a = seen["a"].detach()
    if a.ndim != 4:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(a.shape)}; Grad-CAM needs a (N, C, h, w) feature map")
    weights = grad.mean(dim=(2, 3))  # (N, C)
    maps = torch.relu(torch.einsum("nc,nchw->nhw", weights, a))
    return CamOutput(maps.float(), logits.detach().float(), t)


# --- images -------------------------------------------------------------------------------
@dataclass
class ImageCam:
    """A map drawn over one original image, with the predictions of the same forward pass."""

    heatmap: np.ndarray               # (H, W) of the original image, 0..1; NaN where the model saw nothing
    top: list[tuple[str, float]]      # (class name, probability), best first
    target: tuple[int, str, float]    # the class the map explains: index, name, probability
    method: str
    view: str
    box: tuple[float, float, float, float]  # the region of the original the model saw: x0, y0, x1, y1
    input_size: tuple[int, int]       # (width, height) fed to the network
    image: Any = field(repr=False, default=None)  # the original PIL image
    layer: str | None = None          # Grad-CAM's module, when not the last feature map

    @property
    def peak(self) -> tuple[int, int]:
        """(x, y) of the hottest pixel, in original image coordinates."""
        y, x = np.unravel_index(np.nanargmax(self.heatmap), self.heatmap.shape)
        return int(x), int(y)

    @property
    def title(self) -> str:
        """The panel title: method, explained class and the top-k predictions."""
        name = "CAM" if self.method == "cam" else "Grad-CAM" + (f" at {self.layer}" if self.layer else "")
        top = ", ".join(f"{n} {p:.2f}" for n, p in self.top)
        return f"{name} of {self.target[1]!r}\ntop-{len(self.top)}: {top}"


def resolve_class(cls: int | str | None, class_names: Sequence[str]) -> int | None:
    """A class index from an index or a class name (``"tiger cat"``, ``"281"``); ``None`` stays
    ``None`` (each image's top-1)."""
    if cls is None:
        return None
    if isinstance(cls, str) and cls.strip().lstrip("-").isdigit():
        cls = int(cls)
    if isinstance(cls, int):
        if not 0 <= cls < len(class_names):
            raise ValueError(f"class {cls}: expected an index in 0..{len(class_names) - 1}")
        return cls
    if cls in class_names:
        return list(class_names).index(cls)
    lower = [n.lower() for n in class_names]
    if cls.lower() in lower:
        return lower.index(cls.lower())
    close = difflib.get_close_matches(cls, list(class_names), n=3)
    raise ValueError(f"class {cls!r} is not one of the model's {len(class_names)} classes"
                     + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; give an index"))


def view_geometry(width: int, height: int, geometry: Preprocessing, view: str = "full") -> tuple[
        tuple[int, int], tuple[int, int, int, int] | None, tuple[float, float, float, float]]:
    """How an image of ``width`` x ``height`` is fed: ``(resized size (w, h), crop box in the
    resized image or None, the region seen in original coordinates (x0, y0, x1, y1))``.

    The shorter side goes to ``floor(resolution / crop_pct)`` as in the evaluation transform; the
    crop view takes the evaluation transform's own box (:func:`effnet.preprocessing.center_crop_geometry`),
    so it feeds the very pixels ``effnet predict`` does."""
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {', '.join(VIEWS)}, got {view!r}")
    if view == "full":
        s = geometry.resize / min(width, height)
        size = (max(1, round(width * s)), max(1, round(height * s)))
        return size, None, (0.0, 0.0, float(width), float(height))
    (nw, nh), (left, top, right, bottom) = center_crop_geometry(width, height, geometry.resize, geometry.resolution)
    sx, sy = width / nw, height / nh
    return (nw, nh), (left, top, right, bottom), (left * sx, top * sy, right * sx, bottom * sy)


def image_input(image: Image.Image, geometry: Preprocessing, view: str = "full") -> tuple[
        torch.Tensor, tuple[float, float, float, float]]:
    """The uint8 (3, H, W) tensor fed to the network for ``image`` (RGB) and the region of the
    original it covers (see :func:`view_geometry`)."""

    if image.mode != "RGB":  # grayscale, palette, RGBA: the network takes three channels
        image = image.convert("RGB")
    size, crop, box = view_geometry(*image.size, geometry, view)
    img = image.resize(size, resample(geometry.interpolation))
    if crop is not None:
        img = img.crop(crop)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return x, box


def to_image_map(raw: torch.Tensor, image_size: tuple[int, int], box: tuple[float, float, float, float],
                 method: str) -> np.ndarray:
    """A raw (h, w) map -> the original image's (H, W) grid, scaled to 0..1 (CAM: min to max;
    Grad-CAM: 0 to max, its zero meaning "no positive evidence"); NaN outside ``box``."""
    width, height = image_size
    m = raw.detach().float().cpu()
    m = m - m.min() if method == "cam" else m.clamp(min=0)
    top = float(m.max())
    m = m / top if top > 0 else torch.zeros_like(m)
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    # Bilinear with align_corners=False: feature cell i covers input pixels [i*S, (i+1)*S), so its
    # value lands at the centre of that span on the image.
    up = nn.functional.interpolate(m[None, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0, 0]
    out = np.full((height, width), np.nan, dtype=np.float32)
    out[y0:y1, x0:x1] = up.clamp(0, 1).numpy()
    return out


def image_cam(
    model: ConvNet, image: Image.Image, geometry: Preprocessing, normalize: Callable[[torch.Tensor], torch.Tensor],
    class_names: Sequence[str], *, method: str = "cam", target: int | None = None, view: str = "full",
    topk: int = 3, layer: str | None = None,
) -> ImageCam:
    """The map of ``target`` (default: the top-1 class) drawn on the original ``image`` (PIL,
    RGB), fed as ``view`` describes; ``normalize`` turns uint8 pixels into the model's input
    (``effnet.preprocessing.Normalize(preprocessing)``)."""
    x, box = image_input(image, geometry, view)
    device = next(model.parameters()).device
    out = class_activation_maps(model, normalize(x[None].to(device)), target, method=method, layer=layer)
    probs = out.logits[0].softmax(0)
    p, i = probs.topk(min(topk, len(probs)))
    t = int(out.target[0])
    names = list(class_names) if class_names else [str(k) for k in range(len(probs))]
    heat = to_image_map(out.maps[0], image.size, box, method)
    return ImageCam(heat, [(names[j], float(q)) for q, j in zip(p.tolist(), i.tolist())],
                    (t, names[t], float(probs[t])), method, view, box, (x.shape[2], x.shape[1]), image,
                    layer if method == "gradcam" and layer not in (None, "head") else None)


# --- figures ------------------------------------------------------------------------------
def plot_cams(path: str | Path, grid: Sequence[Sequence[ImageCam]], *, row_labels: Sequence[str] = (),
              col_labels: Sequence[str] = (), title: str = "", alpha: float = 0.5, fmt: str | None = None) -> Path:
    """Overlays in a grid (EfficientNet Figure 7 layout: a row per image, a column per model or
    method), each panel titled with the explained class and the top-k predictions. Where the
    model saw nothing (outside a centre crop) the image is dimmed and left without a map."""
    plt = pyplot()
    rows, cols = len(grid), max(len(r) for r in grid)
    # Panel size from the images' aspect ratio, so a 451x300 photo is not squeezed into a square.
    aspect = max(c.heatmap.shape[0] / c.heatmap.shape[1] for r in grid for c in r)
    pw = 4.2
    fig, axes = plt.subplots(rows, cols, figsize=(pw * cols + (0.6 if row_labels else 0), (pw * aspect + 0.9) * rows),
                             squeeze=False)
    for r, row in enumerate(grid):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            cam = row[c]
            img = np.asarray(cam.image.convert("RGB"), dtype=np.float32) / 255.0
            seen = ~np.isnan(cam.heatmap)
            shown = np.where(seen[..., None], img, img * 0.35)  # dim what the model did not see
            ax.imshow(shown)
            ax.imshow(np.ma.masked_invalid(cam.heatmap), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if not seen.all():
                x0, y0, x1, y1 = cam.box
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1, ls="--"))
            px, py = cam.peak
            ax.plot([px], [py], marker="+", color="white", ms=12, mew=2)
            head = f"{col_labels[c]}\n" if r == 0 and c < len(col_labels) else ""
            ax.set_title(head + cam.title, fontsize=8)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_fig(fig, path, dpi=110, fmt=fmt)

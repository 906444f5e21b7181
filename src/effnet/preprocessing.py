"""Input preprocessing, in one place: how raw RGB pixels become a model's input.

Weight files record a :class:`Preprocessing`; evaluation decodes with :class:`EvalTransform`;
:class:`Normalize` applies the recorded scaling on the device; the training loop picks its
normalisation with :func:`choose_normalisation`. Nothing here knows about weight files or
data sets, so both ``effnet.weights`` and ``effnet.data`` build on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB pixels (0-255) become the model's input.

    ``x = (pixels * scale - mean) / std`` per channel, after resizing the shorter side to
    ``resolution / crop_pct`` with ``interpolation`` and center-cropping ``resolution``.
    torchvision/timm: scale 1/255 with ImageNet mean/std; Keras EfficientNet V1: its own
    Rescaling+Normalization layers; Keras V2: scale 1/128 with mean 1 (Rescaling(1/128, offset=-1)).
    """

    resolution: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0 / 255.0

    @property
    def resize(self) -> int:
        """The shorter side before the centre crop: ``floor(resolution / crop_pct)``."""
        return int(math.floor(self.resolution / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        d["mean"] = tuple(d.get("mean", IMAGENET_MEAN))
        d["std"] = tuple(d.get("std", IMAGENET_STD))
        return cls(**d)


def choose_normalisation(
    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, initial: Preprocessing | None
) -> dict[str, Any]:
    """The training loop's input normalisation (``scale``, ``mean``, ``std``): ``mean``/``std``
    when given, else what the initial weights were trained with (e.g. [-1, 1] for Keras V2 and
    TF ports: fine-tuning must feed the weights what they learned on), else ImageNet mean/std
    on pixels / 255."""
    if mean is not None or std is not None or initial is None:
        return {"scale": 1.0 / 255.0, "mean": tuple(mean or IMAGENET_MEAN), "std": tuple(std or IMAGENET_STD)}
    return {"scale": initial.scale, "mean": tuple(initial.mean), "std": tuple(initial.std)}


class Normalize(nn.Module):
    """uint8 pixels -> model input ``(pixels * scale - mean) / std`` (see :class:`Preprocessing`)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        p = preprocessing
        self.scale = p.scale
        self.register_buffer("mean", torch.tensor(p.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(p.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: pixels 0..255 (uint8 or float)."""
        return (x.float() * self.scale - self.mean) / self.std

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float pixels in [0, 1], as the kornia augmentation returns them."""
        return (x * (255.0 * self.scale) - self.mean) / self.std


class PreprocessedModel(nn.Module):
    """Wraps a model so it takes raw RGB pixels (float 0-255, NCHW) and normalises them itself
    with the scaling recorded in the weight file: ``(x * scale - mean) / std``."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        self.normalize = Normalize(preprocessing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def resample(name: str) -> int:
    """PIL's resampling filter for an interpolation name (``bilinear``, ``bicubic``, ``nearest``)."""
    if name not in _RESAMPLE:
        raise ValueError(f"interpolation: expected one of {sorted(_RESAMPLE)}, got {name!r}")
    return _RESAMPLE[name]


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def center_crop_geometry(width: int, height: int, resize: int, crop: int) -> tuple[
        tuple[int, int], tuple[int, int, int, int]]:
    """Where the evaluation view of a ``width`` x ``height`` image comes from: the size its shorter
    side goes to ``resize`` at (aspect kept, never below ``crop``), and the centred ``crop`` box
    in that resized image (left, top, right, bottom). The one home of this rounding: the
    evaluation transform and the CAM's crop view both use it."""
    s = resize / min(width, height)
    nw, nh = max(crop, round(width * s)), max(crop, round(height * s))
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return (nw, nh), (left, top, left + crop, top + crop)


def resize_center_crop(img: Image.Image, resize: int, crop: int, interpolation: str) -> Image.Image:
    """Shorter side to ``resize`` (aspect kept), then a centred ``crop`` x ``crop`` square."""
    size, box = center_crop_geometry(*img.size, resize, crop)
    return img.resize(size, resample(interpolation)).crop(box)


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation view recorded in a weight file's :class:`Preprocessing`: shorter side to
    ``resolution / crop_pct``, centre crop ``resolution`` (EfficientNet evaluation, crop 0.875)."""

    preprocessing: Preprocessing

    @property
    def size(self) -> int:
        return self.preprocessing.resolution

    def __call__(self, img: Image.Image) -> torch.Tensor:
        p = self.preprocessing
        return to_uint8_tensor(resize_center_crop(img, p.resize, p.resolution, p.interpolation))

"""The peer libraries' model names as data: which effnet architecture each one is, and how it
was trained (BatchNorm eps, padding) and evaluated (preprocessing).

Only the *runtime* differences live here; the layer shapes all come from the effnet registry,
and the converters check every tensor against them.

Sources of the numbers: torchvision ``models/efficientnet.py`` (weights enums and
``norm_layer``), timm ``models/efficientnet.py`` (``default_cfgs`` and ``_gen_*``), Keras
``applications/efficientnet.py`` and ``efficientnet_v2.py``, lukemelas ``efficientnet_pytorch``
``utils.py`` (``efficientnet_params``, ``batch_norm_epsilon``), tensorflow/tpu ``preprocessing.py``
(``CROP_PADDING``) and ``lite/efficientnet_lite_builder.py`` (``MEAN_RGB``/``STDDEV_RGB``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from effnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from effnet.registry import get_spec
from effnet.specs.base import ModelSpec

SOURCES = ("torchvision", "timm", "keras", "efficientnet_pytorch")

#: TF/Keras BatchNormalization default epsilon; PyTorch's is 1e-5.
TF_BN_EPS = 1e-3
TORCH_BN_EPS = 1e-5
#: timm's "inception" normalisation, i.e. pixels mapped to [-1, 1].
HALF = (0.5, 0.5, 0.5)
#: EfficientNet-Lite's (pixels - 127) / 128 on pixels / 255.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class PeerModel:
    """One model name of a peer library, resolved to an effnet architecture."""

    source: str        # "torchvision" | "timm" | "keras"
    name: str          # the peer's own name, e.g. "tf_efficientnet_b3"
    effnet_name: str   # the effnet registry name with the same layer shapes
    bn_eps: float
    padding: str       # "same" for TF-trained weights (asymmetric stride-2 padding)
    preprocessing: Preprocessing

    def spec(self, num_classes: int | None = None) -> ModelSpec:
        """The effnet spec these weights run on: registry shapes + the peer's runtime details."""
        spec = get_spec(self.effnet_name).replace(
            bn_eps=self.bn_eps, padding=self.padding, source=f"{self.source}:{self.name}"
        )
        return spec.replace(num_classes=num_classes) if num_classes else spec


def _pre(resolution: int, crop_pct: float, interpolation: str = "bicubic",
         mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
         scale: float = 1.0 / 255.0) -> Preprocessing:
    return Preprocessing(resolution=resolution, crop_pct=round(crop_pct, 4),
                         interpolation=interpolation, mean=mean, std=std, scale=scale)


def _table() -> dict[tuple[str, str], PeerModel]:
    rows: list[PeerModel] = []

    def add(source: str, name: str, effnet_name: str, bn_eps: float, padding: str,
            pre: Preprocessing) -> None:
        rows.append(PeerModel(source, name, effnet_name, bn_eps, padding, pre))

    # torchvision: B0-B4 are ports of timm's PyTorch-trained weights (BN eps 1e-5), B5-B7 of
    # the TF checkpoints but run with BN eps 1e-3 and symmetric padding; V2 uses eps 1e-3.
    # (crop, resize, interpolation) of each IMAGENET1K_V1 transform:
    tv_v1 = {0: (224, 256, "bicubic"), 1: (240, 256, "bicubic"), 2: (288, 288, "bicubic"),
             3: (300, 320, "bicubic"), 4: (380, 384, "bicubic"), 5: (456, 456, "bicubic"),
             6: (528, 528, "bicubic"), 7: (600, 600, "bicubic")}
    for i, (crop, resize, interp) in tv_v1.items():
        add("torchvision", f"efficientnet_b{i}", f"efficientnet_b{i}",
            TORCH_BN_EPS if i <= 4 else TF_BN_EPS, "symmetric", _pre(crop, crop / resize, interp))
    for v, interp, mean, std in (("s", "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                                 ("m", "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                                 ("l", "bicubic", HALF, HALF)):
        res = get_spec(f"efficientnetv2_{v}").resolution
        add("torchvision", f"efficientnet_v2_{v}", f"efficientnetv2_{v}", TF_BN_EPS, "symmetric",
            _pre(res, 1.0, interp, mean, std))

    # timm: "tf_" models are ported TF checkpoints (TF "SAME" padding, eps 1e-3); the others
    # were trained in PyTorch (symmetric padding, eps 1e-5). crop_pct from timm default_cfgs.
    crop = {"b0": 0.875, "b1": 0.882, "b2": 0.890, "b3": 0.904, "b4": 0.922, "b5": 0.934,
            "b6": 0.942, "b7": 0.949, "b8": 0.954, "l2": 0.961}
    for v, pct in crop.items():
        res = get_spec(f"efficientnet_{v}").resolution
        add("timm", f"efficientnet_{v}", f"efficientnet_{v}", TORCH_BN_EPS, "symmetric", _pre(res, pct))
        add("timm", f"tf_efficientnet_{v}", f"efficientnet_{v}", TF_BN_EPS, "same", _pre(res, pct))
    for v in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3"):
        res = get_spec(f"efficientnetv2_{v}").resolution
        # The S/M/L/XL TF checkpoints were trained on [-1, 1] inputs, the B ones on ImageNet mean/std.
        mean, std, pct = (HALF, HALF, 1.0) if v[0] != "b" else (IMAGENET_MEAN, IMAGENET_STD, 0.875)
        add("timm", f"efficientnetv2_{v}", f"efficientnetv2_{v}", TORCH_BN_EPS, "symmetric",
            _pre(res, pct, "bicubic", mean, std))
        add("timm", f"tf_efficientnetv2_{v}", f"efficientnetv2_{v}", TF_BN_EPS, "same",
            _pre(res, pct, "bicubic", mean, std))

    # Keras: TF "SAME" padding (V1 pads explicitly with correct_pad, which is the same thing),
    # eps 1e-3. The input scaling is part of the Keras model; V1 keeps it in a Normalization
    # layer whose statistics the converter reads from the file (these are the defaults).
    # Keras applications resize the whole image to the input size (no centre crop).
    for i in range(8):
        res = get_spec(f"efficientnet_b{i}").resolution
        add("keras", f"EfficientNetB{i}", f"efficientnet_b{i}", TF_BN_EPS, "same", _pre(res, 1.0))
    for v in ("B0", "B1", "B2", "B3", "S", "M", "L"):
        res = get_spec(f"efficientnetv2_{v.lower()}").resolution
        # Keras V2: B variants Rescaling(1/255) + Normalization(ImageNet mean, std^2);
        # S/M/L Rescaling(1/128, offset=-1), i.e. x/128 - 1 = (x/128 - 1) / 1.
        pre = (_pre(res, 1.0) if v[0] == "B"
               else _pre(res, 1.0, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), scale=1.0 / 128.0))
        add("keras", f"EfficientNetV2{v}", f"efficientnetv2_{v.lower()}", TF_BN_EPS, "same", pre)
    # efficientnet_pytorch (lukemelas): ports of the TF checkpoints, TF "SAME" padding, BN eps
    # 1e-3. Evaluated as the TF code does (tensorflow/tpu preprocessing.py
    # ``_decode_and_center_crop``): centre crop of res / (res + 32) of the shorter side
    # (CROP_PADDING = 32), bicubic resize to res, ImageNet mean/std (AdvProp: --advprop).
    for v in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2"):
        res = get_spec(f"efficientnet_{v}").resolution
        add("efficientnet_pytorch", f"efficientnet-{v}", f"efficientnet_{v}", TF_BN_EPS, "same",
            _pre(res, res / (res + 32)))
    # The EfficientNet-Lite fork of the port (same names, no SE, ReLU6): the official Lite
    # checkpoints, trained on (pixels - 127) / 128 (efficientnet_lite_builder MEAN_RGB = 127,
    # STDDEV_RGB = 128), i.e. scale 1/255 with mean 127/255 and std 128/255; same crop rule.
    for i in range(5):
        res = get_spec(f"efficientnet_lite{i}").resolution
        add("efficientnet_pytorch", f"efficientnet-lite{i}", f"efficientnet_lite{i}", TF_BN_EPS, "same",
            _pre(res, res / (res + 32), mean=LITE_MEAN, std=LITE_STD))
    return {(r.source, r.name): r for r in rows}


PEERS: dict[tuple[str, str], PeerModel] = _table()


def list_peers(source: str | None = None) -> list[str]:
    """``source:name`` of every supported peer model (optionally of one source)."""
    return [f"{s}:{n}" for (s, n) in PEERS if source in (None, s)]


def get_peer(source: str, name: str) -> PeerModel:
    """The table row for ``name`` in ``source``, with close-match suggestions when unknown."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {SOURCES}")
    try:
        return PEERS[(source, name)]
    except KeyError:
        names = [n for (s, n) in PEERS if s == source]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown {source} model {name!r}{hint} (supported: {', '.join(names)})"
        ) from None

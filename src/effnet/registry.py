"""Model names -> registry entries. An entry holds a model's spec (built once from the published
tables and family rows) and, where ImageNet weights are published, the file they come from.
:func:`resolve` is the one place that checks a caller's overrides; ``effnet.create_model``
builds what it returns.

Checksums of the published files are recorded as published, which is not always a full SHA-256:

- torchvision and timm name their files ``<name>-<first 8 hex digits of the SHA-256>.pth``
  (the ``torch.hub`` convention): only that prefix is known, and only it is checked.
- Keras publishes MD5 digests (``WEIGHTS_HASHES`` in ``keras.applications``), checked in full.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from effnet.scaling.compound import from_family
from effnet.specs.base import FamilyRow, ModelSpec
from effnet.specs.baselines import BASELINES
from effnet.specs.edgetpu import EDGETPU_FAMILY
from effnet.specs.lite import LITE_FAMILY
from effnet.specs.tinynet import TINYNET_FAMILY
from effnet.specs.v1 import V1_FAMILY
from effnet.specs.v2 import V2_FAMILY


def _member(name: str, entry: ModelSpec | FamilyRow) -> ModelSpec:
    """A family entry as a spec: a table (B0, V2-S ...) is its own spec; a row is its base scaled."""
    if isinstance(entry, FamilyRow):
        return from_family(name, entry)
    if entry.name != name:
        raise ValueError(f"family entry {name!r}: expected a spec named {name!r}, got {entry.name!r}")
    return entry


#: name -> spec, built once from the published tables and family rows: EfficientNet V1 and V2,
#: the rest of the family (Lite, EdgeTPU, TinyNet), then the ResNet / MobileNet baselines.
REGISTRY: dict[str, ModelSpec] = {
    name: _member(name, entry)
    for name, entry in {**V1_FAMILY, **V2_FAMILY, **LITE_FAMILY, **EDGETPU_FAMILY, **TINYNET_FAMILY,
                        **BASELINES}.items()
}


@dataclass(frozen=True)
class Checksum:
    """A published digest: ``algorithm`` is ``sha256`` or ``md5``; ``prefix`` marks a digest of
    which only the leading hex digits are known (e.g. the 8 in a torch.hub file name)."""

    algorithm: str
    hexdigest: str
    prefix: bool = False

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.hexdigest) if self.prefix else digest == self.hexdigest

    def describe(self) -> str:
        kind = f"first {len(self.hexdigest)} hex digits of the" if self.prefix else "full"
        return f"{kind} {self.algorithm.upper()} {self.hexdigest}"


@dataclass(frozen=True)
class PretrainedSource:
    """The canonical published file for one effnet model name."""

    url: str
    source: str      # converter: torchvision | timm | keras
    model: str       # the peer's model name
    checksum: Checksum

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _tv(name: str, file: str) -> PretrainedSource:
    return PretrainedSource(f"https://download.pytorch.org/models/{file}", "torchvision", name,
                            Checksum("sha256", file.rsplit("-", 1)[1].split(".")[0], prefix=True))


def _timm(name: str, release: str, file: str) -> PretrainedSource:
    url = f"https://github.com/rwightman/pytorch-image-models/releases/download/{release}/{file}"
    return PretrainedSource(url, "timm", name,
                            Checksum("sha256", file.rsplit("-", 1)[1].split(".")[0], prefix=True))


def _keras(name: str, url: str, md5: str) -> PretrainedSource:
    return PretrainedSource(url, "keras", name, Checksum("md5", md5))


_KERAS_V2 = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"

#: effnet name -> canonical published ImageNet-1k weights (with classifier). torchvision where
#: it has the model; timm's TF ports for B8 / L2 / V2-XL; Keras for V2-B0..B3.
PRETRAINED: dict[str, PretrainedSource] = {
    "efficientnet_b0": _tv("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth"),
    "efficientnet_b1": _tv("efficientnet_b1", "efficientnet_b1_rwightman-bac287d4.pth"),
    "efficientnet_b2": _tv("efficientnet_b2", "efficientnet_b2_rwightman-c35c1473.pth"),
    "efficientnet_b3": _tv("efficientnet_b3", "efficientnet_b3_rwightman-b3899882.pth"),
    "efficientnet_b4": _tv("efficientnet_b4", "efficientnet_b4_rwightman-23ab8bcd.pth"),
    "efficientnet_b5": _tv("efficientnet_b5", "efficientnet_b5_lukemelas-1a07897c.pth"),
    "efficientnet_b6": _tv("efficientnet_b6", "efficientnet_b6_lukemelas-24a108a5.pth"),
    "efficientnet_b7": _tv("efficientnet_b7", "efficientnet_b7_lukemelas-c5b4e57e.pth"),
    "efficientnet_b8": _timm("tf_efficientnet_b8", "v0.1-weights", "tf_efficientnet_b8_ra-572d5dd9.pth"),
    "efficientnet_l2": _timm("tf_efficientnet_l2", "v0.1-weights", "tf_efficientnet_l2_ns-df73bb44.pth"),
    "efficientnetv2_s": _tv("efficientnet_v2_s", "efficientnet_v2_s-dd5fe13b.pth"),
    "efficientnetv2_m": _tv("efficientnet_v2_m", "efficientnet_v2_m-dc08266a.pth"),
    "efficientnetv2_l": _tv("efficientnet_v2_l", "efficientnet_v2_l-59c71312.pth"),
    "efficientnetv2_xl": _timm("tf_efficientnetv2_xl", "v0.1-effv2-weights",
                               "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth"),
    "efficientnetv2_b0": _keras("EfficientNetV2B0", _KERAS_V2 + "efficientnetv2-b0.h5",
                                "21ecbf6da12460d5c40bb2f29ceb2188"),
    "efficientnetv2_b1": _keras("EfficientNetV2B1", _KERAS_V2 + "efficientnetv2-b1.h5",
                                "069f0534ff22adf035c89e2d9547a9dc"),
    "efficientnetv2_b2": _keras("EfficientNetV2B2", _KERAS_V2 + "efficientnetv2-b2.h5",
                                "424e49f28180edbde1e94797771950a7"),
    "efficientnetv2_b3": _keras("EfficientNetV2B3", _KERAS_V2 + "efficientnetv2-b3.h5",
                                "1f1fc43bd98a6e4fd8fdfd551e02c7a0"),
}


@dataclass(frozen=True)
class Entry:
    """A registered model as :func:`resolve` returns it: its name, its spec (with the caller's
    overrides) and the source of its published weights (``None``: none are published)."""

    name: str
    spec: ModelSpec
    pretrained: PretrainedSource | None


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a substring or ``fnmatch`` pattern."""
    names = list(REGISTRY)
    if pattern:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; an unknown name suggests the closest ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (see effnet.list_models() or `effnet list`)"
        ) from None


def resolve(name: str, num_classes: int = 1000, **overrides: Any) -> Entry:
    """The entry of registered model ``name``, its spec with ``num_classes`` and spec-field
    ``overrides`` (``dropout``, ``drop_path_rate``, ``bn_eps``, ``bn_momentum``, ``padding``,
    ``in_channels``, ``resolution``, ``activation`` ...): the one place where overrides are
    checked. :func:`effnet.create_model` builds the result (with weights, if asked).

    ``width`` and ``depth`` are refused: in a spec they *record* how it was scaled (its channels
    and repeats are absolute), so overriding them would only mislabel the model.
    """
    recorded = sorted(set(overrides) & {"width", "depth"})
    if recorded:
        raise ValueError(
            f"create_model({name!r}): {', '.join(recorded)} cannot be overridden (a spec records its "
            f"scaling, its channels and repeats are absolute); scale the spec instead: "
            f"effnet.build(effnet.scale(effnet.get_spec({name!r}), width=..., depth=...))"
        )
    return Entry(name, get_spec(name).replace(num_classes=num_classes, **overrides), PRETRAINED.get(name))

"""Model specifications as data (paper tables)."""

from effnet.specs.base import MIN_INPUT_SIZE, FamilyRow, ModelSpec, StageSpec
from effnet.specs.baselines import BASELINES, MOBILENET_V1, MOBILENET_V2, RESNET18, RESNET50
from effnet.specs.edgetpu import EDGETPU_FAMILY
from effnet.specs.lite import EFFICIENTNET_LITE0, LITE_FAMILY
from effnet.specs.tinynet import TINYNET_FAMILY
from effnet.specs.v1 import EFFICIENTNET_B0, V1_FAMILY
from effnet.specs.v2 import (
    EFFICIENTNETV2_B0,
    EFFICIENTNETV2_BASE,
    EFFICIENTNETV2_L,
    EFFICIENTNETV2_M,
    EFFICIENTNETV2_S,
    EFFICIENTNETV2_XL,
    V2_FAMILY,
)

__all__ = [
    "BASELINES",
    "EDGETPU_FAMILY",
    "EFFICIENTNET_LITE0",
    "LITE_FAMILY",
    "TINYNET_FAMILY",
    "EFFICIENTNETV2_B0",
    "EFFICIENTNETV2_BASE",
    "EFFICIENTNETV2_L",
    "EFFICIENTNETV2_M",
    "EFFICIENTNETV2_S",
    "EFFICIENTNETV2_XL",
    "EFFICIENTNET_B0",
    "MIN_INPUT_SIZE",
    "MOBILENET_V1",
    "MOBILENET_V2",
    "RESNET18",
    "RESNET50",
    "V1_FAMILY",
    "V2_FAMILY",
    "FamilyRow",
    "ModelSpec",
    "StageSpec",
]

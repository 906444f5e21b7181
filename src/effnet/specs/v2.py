"""EfficientNetV2 as data: the S/M/L/XL tables and the B-base scaled to B0-B3.

Source: Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021, Table 4
(V2-S) and the official google/automl ``effnetv2_configs.py`` (M, L, XL, B-base).
Fused-MBConv stages carry no squeeze-excitation; MBConv stages use SE 0.25 of the block input.
The V2 code rounds channels without the 10% rule (``round_limit=0``).
"""

from __future__ import annotations

from effnet.specs.base import FamilyRow, ModelSpec, StageSpec


def _f(repeats: int, stride: int, expand: int, channels: int) -> StageSpec:
    return StageSpec(op="fused", repeats=repeats, kernel=3, stride=stride, expand=expand, channels=channels)


def _m(repeats: int, stride: int, expand: int, channels: int) -> StageSpec:
    return StageSpec(
        op="mbconv", repeats=repeats, kernel=3, stride=stride, expand=expand, channels=channels, se=0.25
    )


_V2 = dict(head_channels=1280, dropout=0.2, drop_path_rate=0.2, round_limit=0.0)

EFFICIENTNETV2_S = ModelSpec(
    name="efficientnetv2_s",
    stages=(_f(2, 1, 1, 24), _f(4, 2, 4, 48), _f(4, 2, 4, 64), _m(6, 2, 4, 128), _m(9, 1, 6, 160),
            _m(15, 2, 6, 256)),
    stem_channels=24, resolution=384, train_resolution=300, source="EfficientNetV2 Table 4", **_V2,
)
EFFICIENTNETV2_M = ModelSpec(
    name="efficientnetv2_m",
    stages=(_f(3, 1, 1, 24), _f(5, 2, 4, 48), _f(5, 2, 4, 80), _m(7, 2, 4, 160), _m(14, 1, 6, 176),
            _m(18, 2, 6, 304), _m(5, 1, 6, 512)),
    stem_channels=24, resolution=480, train_resolution=384, source="EfficientNetV2 official code", **_V2,
)
EFFICIENTNETV2_L = ModelSpec(
    name="efficientnetv2_l",
    stages=(_f(4, 1, 1, 32), _f(7, 2, 4, 64), _f(7, 2, 4, 96), _m(10, 2, 4, 192), _m(19, 1, 6, 224),
            _m(25, 2, 6, 384), _m(7, 1, 6, 640)),
    stem_channels=32, resolution=480, train_resolution=384, source="EfficientNetV2 official code", **_V2,
)
EFFICIENTNETV2_XL = ModelSpec(
    name="efficientnetv2_xl",
    stages=(_f(4, 1, 1, 32), _f(8, 2, 4, 64), _f(8, 2, 4, 96), _m(16, 2, 4, 192), _m(24, 1, 6, 256),
            _m(32, 2, 6, 512), _m(8, 1, 6, 640)),
    stem_channels=32, resolution=512, train_resolution=384, source="EfficientNetV2 official code", **_V2,
)
EFFICIENTNETV2_BASE = ModelSpec(
    name="efficientnetv2_base",
    stages=(_f(1, 1, 1, 16), _f(2, 2, 4, 32), _f(2, 2, 4, 48), _m(3, 2, 4, 96), _m(5, 1, 6, 112),
            _m(8, 2, 6, 192)),
    stem_channels=32, resolution=224, train_resolution=192, source="EfficientNetV2 official code", **_V2,
)

# Official ``efficientnetv2_params``: (width, depth, train size, eval size, dropout).
V2_FAMILY: dict[str, FamilyRow] = {
    "efficientnetv2_s": FamilyRow(EFFICIENTNETV2_S, 1.0, 1.0, 384, 0.2, train_resolution=300),
    "efficientnetv2_m": FamilyRow(EFFICIENTNETV2_M, 1.0, 1.0, 480, 0.3, train_resolution=384),
    "efficientnetv2_l": FamilyRow(EFFICIENTNETV2_L, 1.0, 1.0, 480, 0.4, train_resolution=384),
    "efficientnetv2_xl": FamilyRow(EFFICIENTNETV2_XL, 1.0, 1.0, 512, 0.4, train_resolution=384),
    "efficientnetv2_b0": FamilyRow(EFFICIENTNETV2_BASE, 1.0, 1.0, 224, 0.2, train_resolution=192),
    "efficientnetv2_b1": FamilyRow(EFFICIENTNETV2_BASE, 1.0, 1.1, 240, 0.2, train_resolution=192),
    "efficientnetv2_b2": FamilyRow(EFFICIENTNETV2_BASE, 1.1, 1.2, 260, 0.3, train_resolution=208),
    "efficientnetv2_b3": FamilyRow(EFFICIENTNETV2_BASE, 1.2, 1.4, 300, 0.3, train_resolution=240),
}

"""TinyNet A..E as data: EfficientNet-B0 shrunk by published (resolution, width, depth) rows.

Source: Han et al., "Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets",
NeurIPS 2020, Table 4 (r, w, d per model), and timm ``_gen_tinynet`` for the rules the released
weights were built with: repeats rounded to the *nearest* integer (shrinking with "ceil" would
keep almost every stage's depth), the stem fixed at 32 channels and the head at least 1280
(``max(1280, round_channels(1280 * w))``), otherwise B0's channel rounding (divisor 8, 10% rule).
Resolutions are 224 x r rounded down, as the released models' input sizes.
"""

from __future__ import annotations

from effnet.specs.base import FamilyRow, ModelSpec
from effnet.specs.v1 import EFFICIENTNET_B0


def _tiny(r: float, w: float, d: float) -> FamilyRow:
    return FamilyRow(EFFICIENTNET_B0, width=w, depth=d, resolution=int(224 * r), dropout=0.2,
                     depth_rounding="round", scale_stem=False, head="at_least_base")


# (r, w, d) of TinyNet Table 4.
TINYNET_FAMILY: dict[str, ModelSpec | FamilyRow] = {
    "tinynet_a": _tiny(0.86, 1.0, 1.2),     # 192 px
    "tinynet_b": _tiny(0.84, 0.75, 1.1),    # 188 px
    "tinynet_c": _tiny(0.825, 0.54, 0.85),  # 184 px
    "tinynet_d": _tiny(0.68, 0.54, 0.695),  # 152 px
    "tinynet_e": _tiny(0.475, 0.51, 0.6),   # 106 px
}

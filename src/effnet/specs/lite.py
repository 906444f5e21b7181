"""EfficientNet-Lite0..Lite4 as data: B0's table made friendly to mobile accelerators and
post-training quantisation, and the rules in which its family is scaled differently from V1.

Source: tensorflow/tpu ``models/official/efficientnet/lite/efficientnet_lite_builder.py``
(and the TF blog post "Higher accuracy on vision models with EfficientNet-Lite", 2020):

- no squeeze-excitation (poorly supported by mobile accelerators),
- ReLU6 instead of swish (bounded outputs quantise well),
- the stem and the 1280-channel head are *not* scaled with width, and the first and last
  stages' repeats are *not* scaled with depth (``fix_head_stem``: those layers are expensive on
  small devices, and keeping them fixed keeps the small models small),
- ``efficientnet_lite_params``: (width, depth, resolution, dropout) rows below.
"""

from __future__ import annotations

import dataclasses

from effnet.specs.base import FamilyRow, ModelSpec
from effnet.specs.v1 import B0_STAGES

EFFICIENTNET_LITE0 = ModelSpec(
    name="efficientnet_lite0",
    # B0's stages (EfficientNet Table 1) without squeeze-excitation.
    stages=tuple(dataclasses.replace(s, se=0.0) for s in B0_STAGES),
    stem_channels=32,
    head_channels=1280,
    resolution=224,
    dropout=0.2,
    drop_path_rate=0.2,
    activation="relu6",
    round_limit=0.9,
    source="efficientnet_lite_builder.py (EfficientNet Table 1 without SE, ReLU6)",
)


def _lite(width: float, depth: float, resolution: int, dropout: float) -> FamilyRow:
    return FamilyRow(EFFICIENTNET_LITE0, width=width, depth=depth, resolution=resolution, dropout=dropout,
                     scale_stem=False, head="fixed", fixed_repeats=(0, -1))


# Official ``efficientnet_lite_params`` (timm's default configs evaluate Lite3/Lite4 at 300/380
# px instead; the architecture, hence every tensor, is the same).
LITE_FAMILY: dict[str, ModelSpec | FamilyRow] = {
    "efficientnet_lite0": EFFICIENTNET_LITE0,
    "efficientnet_lite1": _lite(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": _lite(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": _lite(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": _lite(1.4, 1.8, 300, 0.3),
}

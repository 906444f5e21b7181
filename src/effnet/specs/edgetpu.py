"""EfficientNet-EdgeTPU S/M/L as data.

Source: tensorflow/tpu ``models/official/efficientnet/edgetpu/efficientnet_edgetpu_builder.py``
(Gupta & Tan, "EfficientNet-EdgeTPU", Google AI blog 2019): a network searched for the Edge TPU,
whose early stages are "edge residual" blocks -- the 1x1 expansion and the depthwise conv of
MBConv fused into one regular 3x3 conv, which the Edge TPU runs faster on large feature maps.
That is effnet's ``fused`` op (EfficientNetV2 later called it Fused-MBConv). No
squeeze-excitation, ReLU instead of swish. The later stages are MBConv with expansion 8.

Expansion: effnet's ``expand`` is relative to the block's real input, as the official code's
``input_filters * expand_ratio``. The official first stage ``r1_k3_s11_e4_i24_o24_c1_noskip``
declares ``input_filters`` 24 although the stem gives 32 channels, so its first block's hidden
width is 24 x 4 = 96 (32 x 3), and after width scaling round_filters(24 x 1.2) x 4 = 128 for L
(40 x 3.2); its other blocks (M, L) take 24 (32) channels, x 4. The table keeps the official
``e4`` and every row names the nominal input (``FamilyRow.nominal_input``), so the first
block's width is derived, not hand-written. S is the table itself as a row (width and depth 1).

``noskip``: the first row's blocks have no residual (``StageSpec.skip=False``; the decoder's
``id_skip=('noskip' not in block_string)``, kept for every repeat of the row). S's single block
changes channels (32 -> 24) and has none anyway; M and L's later first-stage blocks (24 -> 24,
stride 1) would otherwise add their input. Parameters are the same either way.
"""

from __future__ import annotations

from effnet.specs.base import FamilyRow, ModelSpec, StageSpec

EDGETPU_S_STAGES: tuple[StageSpec, ...] = (
    # r1_k3_s11_e4_i24_o24_c1_noskip (first block's hidden width from i24, see above)
    StageSpec(op="fused", repeats=1, kernel=3, stride=1, expand=4, channels=24, skip=False),
    StageSpec(op="fused", repeats=2, kernel=3, stride=2, expand=8, channels=32),    # r2_k3_s22_e8_i24_o32_c1
    StageSpec(op="fused", repeats=4, kernel=3, stride=2, expand=8, channels=48),    # r4_k3_s22_e8_i32_o48_c1
    StageSpec(op="mbconv", repeats=5, kernel=5, stride=2, expand=8, channels=96),   # r5_k5_s22_e8_i48_o96
    StageSpec(op="mbconv", repeats=4, kernel=5, stride=1, expand=8, channels=144),  # r4_k5_s11_e8_i96_o144
    StageSpec(op="mbconv", repeats=2, kernel=5, stride=2, expand=8, channels=192),  # r2_k5_s22_e8_i144_o192
)

EFFICIENTNET_EDGETPU = ModelSpec(
    name="efficientnet_edgetpu",
    stages=EDGETPU_S_STAGES,
    stem_channels=32,
    head_channels=1280,
    resolution=224,
    dropout=0.2,
    drop_path_rate=0.2,
    activation="relu",
    round_limit=0.9,
    source="efficientnet_edgetpu_builder.py",
)



def _edgetpu(width: float, depth: float, resolution: int, dropout: float) -> FamilyRow:
    return FamilyRow(EFFICIENTNET_EDGETPU, width=width, depth=depth, resolution=resolution, dropout=dropout,
                     nominal_input=((0, 24),))


# ``efficientnet_edgetpu_params``: S (1.0, 1.0, 224, 0.2), M (1.0, 1.1, 240, 0.2),
# L (1.2, 1.4, 300, 0.3); stem and head are scaled as in V1 (L: 40 and 1536 channels).
# timm names them efficientnet_es/em/el.
EDGETPU_FAMILY: dict[str, ModelSpec | FamilyRow] = {
    "efficientnet_edgetpu_s": _edgetpu(1.0, 1.0, 224, 0.2),
    "efficientnet_edgetpu_m": _edgetpu(1.0, 1.1, 240, 0.2),
    "efficientnet_edgetpu_l": _edgetpu(1.2, 1.4, 300, 0.3),
}

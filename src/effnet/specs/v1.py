"""EfficientNet (V1) as data: the B0 baseline of EfficientNet Table 1 and the B1-B7, B8, L2 rows.

Source: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, Table 1 and
Table 2; B8 and L2 only exist in the official tensorflow/tpu ``efficientnet_builder.py``.
"""

from __future__ import annotations

from effnet.specs.base import FamilyRow, ModelSpec, StageSpec

# EfficientNet Table 1 (stages 2-8; stage 1 is the stem, stage 9 the head).
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(op="mbconv", repeats=1, kernel=3, stride=1, expand=1, channels=16, se=0.25),
    StageSpec(op="mbconv", repeats=2, kernel=3, stride=2, expand=6, channels=24, se=0.25),
    StageSpec(op="mbconv", repeats=2, kernel=5, stride=2, expand=6, channels=40, se=0.25),
    StageSpec(op="mbconv", repeats=3, kernel=3, stride=2, expand=6, channels=80, se=0.25),
    StageSpec(op="mbconv", repeats=3, kernel=5, stride=1, expand=6, channels=112, se=0.25),
    StageSpec(op="mbconv", repeats=4, kernel=5, stride=2, expand=6, channels=192, se=0.25),
    StageSpec(op="mbconv", repeats=1, kernel=3, stride=1, expand=6, channels=320, se=0.25),
)

EFFICIENTNET_B0 = ModelSpec(
    name="efficientnet_b0",
    stages=B0_STAGES,
    stem_channels=32,
    head_channels=1280,
    # (width 1.0, depth 1.0, 224 px, dropout 0.2): official ``efficientnet_params['efficientnet-b0']``.
    resolution=224,
    dropout=0.2,
    # Stochastic depth with survival probability 0.8 at the last block (paper section 5.2).
    drop_path_rate=0.2,
    round_limit=0.9,
    source="EfficientNet Table 1",
)

# EfficientNet Table 2 with the hand-rounded coefficients of the official code
# (B1 is depth 1.1 at 240 px, not the pure-compound 1.2 at 258 px). B0 is its own table, so it is
# registered as EFFICIENTNET_B0 itself; B1-B8 and L2 are (width, depth, resolution, dropout) rows
# of tensorflow/tpu ``efficientnet_builder.efficientnet_params`` (the same numbers as
# google/automl ``effnetv2_configs.efficientnetv1_params``).
V1_FAMILY: dict[str, ModelSpec | FamilyRow] = {
    "efficientnet_b0": EFFICIENTNET_B0,
    "efficientnet_b1": FamilyRow(EFFICIENTNET_B0, width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "efficientnet_b2": FamilyRow(EFFICIENTNET_B0, width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "efficientnet_b3": FamilyRow(EFFICIENTNET_B0, width=1.2, depth=1.4, resolution=300, dropout=0.3),
    "efficientnet_b4": FamilyRow(EFFICIENTNET_B0, width=1.4, depth=1.8, resolution=380, dropout=0.4),
    "efficientnet_b5": FamilyRow(EFFICIENTNET_B0, width=1.6, depth=2.2, resolution=456, dropout=0.4),
    "efficientnet_b6": FamilyRow(EFFICIENTNET_B0, width=1.8, depth=2.6, resolution=528, dropout=0.5),
    "efficientnet_b7": FamilyRow(EFFICIENTNET_B0, width=2.0, depth=3.1, resolution=600, dropout=0.5),
    "efficientnet_b8": FamilyRow(EFFICIENTNET_B0, width=2.2, depth=3.6, resolution=672, dropout=0.5),
    "efficientnet_l2": FamilyRow(EFFICIENTNET_B0, width=4.3, depth=5.3, resolution=800, dropout=0.5),
}

"""EfficientNetV2 as data: the S/M/L/XL tables and the B-base (V2-B0) scaled to B1-B3.

Sources: Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021, Table 4
(V2-S), and the official google/automl ``efficientnetv2/effnetv2_configs.py`` (block strings
``v2_s_block``, ``v2_m_block``, ``v2_l_block``, ``v2_xl_block``, ``v2_base_block`` and the table
``efficientnetv2_params``: (block, width, depth, train_size, eval_size, dropout, ...)).
Every V2 stage uses 3x3 kernels. Fused-MBConv stages (``c1`` in the block strings) carry no
squeeze-excitation; MBConv stages use SE 0.25 of the block input. The V2 code rounds channels
without the 10% rule (``round_limit=0``).
"""

from __future__ import annotations

from effnet.specs.base import FamilyRow, ModelSpec, StageSpec

# What every V2 table shares: the 1280-channel head (Table 4, stage 7), stochastic depth with
# survival 0.8 (official hparams ``survival_prob=0.8``), rounding without the 10% rule, and
# BatchNorm momentum 0.1: google/automl ``efficientnetv2/hparams.py`` ``base_config.model``
# sets ``bn_momentum=0.9`` in TF's convention (the weight of the *old* running statistic), which
# no V2 config overrides; PyTorch weights the new batch statistic, so 1 - 0.9 = 0.1. (V1's
# official code uses 0.99, i.e. 0.01, the ModelSpec default.)
_V2_COMMON = dict(head_channels=1280, drop_path_rate=0.2, round_limit=0.0, bn_momentum=0.1)

# EfficientNetV2 Table 4 (= official ``v2_s_block``); stem conv3x3 of 24 channels (stage 0).
EFFICIENTNETV2_S = ModelSpec(
    name="efficientnetv2_s",
    stages=(
        StageSpec(op="fused", repeats=2, kernel=3, stride=1, expand=1, channels=24),
        StageSpec(op="fused", repeats=4, kernel=3, stride=2, expand=4, channels=48),
        StageSpec(op="fused", repeats=4, kernel=3, stride=2, expand=4, channels=64),
        StageSpec(op="mbconv", repeats=6, kernel=3, stride=2, expand=4, channels=128, se=0.25),
        StageSpec(op="mbconv", repeats=9, kernel=3, stride=1, expand=6, channels=160, se=0.25),
        StageSpec(op="mbconv", repeats=15, kernel=3, stride=2, expand=6, channels=256, se=0.25),
    ),
    stem_channels=24,
    # efficientnetv2_params['efficientnetv2-s']: train 300, eval 384, dropout 0.2.
    resolution=384, train_resolution=300, dropout=0.2,
    source="EfficientNetV2 Table 4; google/automl effnetv2_configs.py v2_s_block",
    **_V2_COMMON,
)

# Official ``v2_m_block`` ("about base * (width1.6, depth2.2)"); stem 24.
EFFICIENTNETV2_M = ModelSpec(
    name="efficientnetv2_m",
    stages=(
        StageSpec(op="fused", repeats=3, kernel=3, stride=1, expand=1, channels=24),
        StageSpec(op="fused", repeats=5, kernel=3, stride=2, expand=4, channels=48),
        StageSpec(op="fused", repeats=5, kernel=3, stride=2, expand=4, channels=80),
        StageSpec(op="mbconv", repeats=7, kernel=3, stride=2, expand=4, channels=160, se=0.25),
        StageSpec(op="mbconv", repeats=14, kernel=3, stride=1, expand=6, channels=176, se=0.25),
        StageSpec(op="mbconv", repeats=18, kernel=3, stride=2, expand=6, channels=304, se=0.25),
        StageSpec(op="mbconv", repeats=5, kernel=3, stride=1, expand=6, channels=512, se=0.25),
    ),
    stem_channels=24,
    # efficientnetv2_params['efficientnetv2-m']: train 384, eval 480, dropout 0.3.
    resolution=480, train_resolution=384, dropout=0.3,
    source="google/automl effnetv2_configs.py v2_m_block",
    **_V2_COMMON,
)

# Official ``v2_l_block`` ("about base * (width2.0, depth3.1)"); stem 32.
EFFICIENTNETV2_L = ModelSpec(
    name="efficientnetv2_l",
    stages=(
        StageSpec(op="fused", repeats=4, kernel=3, stride=1, expand=1, channels=32),
        StageSpec(op="fused", repeats=7, kernel=3, stride=2, expand=4, channels=64),
        StageSpec(op="fused", repeats=7, kernel=3, stride=2, expand=4, channels=96),
        StageSpec(op="mbconv", repeats=10, kernel=3, stride=2, expand=4, channels=192, se=0.25),
        StageSpec(op="mbconv", repeats=19, kernel=3, stride=1, expand=6, channels=224, se=0.25),
        StageSpec(op="mbconv", repeats=25, kernel=3, stride=2, expand=6, channels=384, se=0.25),
        StageSpec(op="mbconv", repeats=7, kernel=3, stride=1, expand=6, channels=640, se=0.25),
    ),
    stem_channels=32,
    # efficientnetv2_params['efficientnetv2-l']: train 384, eval 480, dropout 0.4.
    resolution=480, train_resolution=384, dropout=0.4,
    source="google/automl effnetv2_configs.py v2_l_block",
    **_V2_COMMON,
)

# Official ``v2_xl_block`` ("only for 21k pretraining"); stem 32.
EFFICIENTNETV2_XL = ModelSpec(
    name="efficientnetv2_xl",
    stages=(
        StageSpec(op="fused", repeats=4, kernel=3, stride=1, expand=1, channels=32),
        StageSpec(op="fused", repeats=8, kernel=3, stride=2, expand=4, channels=64),
        StageSpec(op="fused", repeats=8, kernel=3, stride=2, expand=4, channels=96),
        StageSpec(op="mbconv", repeats=16, kernel=3, stride=2, expand=4, channels=192, se=0.25),
        StageSpec(op="mbconv", repeats=24, kernel=3, stride=1, expand=6, channels=256, se=0.25),
        StageSpec(op="mbconv", repeats=32, kernel=3, stride=2, expand=6, channels=512, se=0.25),
        StageSpec(op="mbconv", repeats=8, kernel=3, stride=1, expand=6, channels=640, se=0.25),
    ),
    stem_channels=32,
    # efficientnetv2_params['efficientnetv2-xl']: train 384, eval 512, dropout 0.4.
    resolution=512, train_resolution=384, dropout=0.4,
    source="google/automl effnetv2_configs.py v2_xl_block",
    **_V2_COMMON,
)

# Official ``v2_base_block`` ("the baseline config for v2 models"), stem 32. Unscaled it *is*
# V2-B0, so it is registered under that name; V2-B1..B3 are scaled from it.
EFFICIENTNETV2_B0 = ModelSpec(
    name="efficientnetv2_b0",
    stages=(
        StageSpec(op="fused", repeats=1, kernel=3, stride=1, expand=1, channels=16),
        StageSpec(op="fused", repeats=2, kernel=3, stride=2, expand=4, channels=32),
        StageSpec(op="fused", repeats=2, kernel=3, stride=2, expand=4, channels=48),
        StageSpec(op="mbconv", repeats=3, kernel=3, stride=2, expand=4, channels=96, se=0.25),
        StageSpec(op="mbconv", repeats=5, kernel=3, stride=1, expand=6, channels=112, se=0.25),
        StageSpec(op="mbconv", repeats=8, kernel=3, stride=2, expand=6, channels=192, se=0.25),
    ),
    stem_channels=32,
    # efficientnetv2_params['efficientnetv2-b0']: (width 1.0, depth 1.0) train 192, eval 224, dropout 0.2.
    resolution=224, train_resolution=192, dropout=0.2,
    source="google/automl effnetv2_configs.py v2_base_block",
    **_V2_COMMON,
)

#: The V2 base table under the official code's name (the same object as EFFICIENTNETV2_B0).
EFFICIENTNETV2_BASE = EFFICIENTNETV2_B0

# S/M/L/XL and B0 are tables of their own; B1-B3 are official ``efficientnetv2_params`` rows
# (block, width, depth, train_size, eval_size, dropout) on ``v2_base_block``.
V2_FAMILY: dict[str, ModelSpec | FamilyRow] = {
    "efficientnetv2_s": EFFICIENTNETV2_S,
    "efficientnetv2_m": EFFICIENTNETV2_M,
    "efficientnetv2_l": EFFICIENTNETV2_L,
    "efficientnetv2_xl": EFFICIENTNETV2_XL,
    "efficientnetv2_b0": EFFICIENTNETV2_B0,
    "efficientnetv2_b1": FamilyRow(EFFICIENTNETV2_B0, width=1.0, depth=1.1, resolution=240, dropout=0.2,
                                   train_resolution=192),
    "efficientnetv2_b2": FamilyRow(EFFICIENTNETV2_B0, width=1.1, depth=1.2, resolution=260, dropout=0.3,
                                   train_resolution=208),
    "efficientnetv2_b3": FamilyRow(EFFICIENTNETV2_B0, width=1.2, depth=1.4, resolution=300, dropout=0.3,
                                   train_resolution=240),
}

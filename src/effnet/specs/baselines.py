"""The baselines EfficientNet is compared with, in the same spec language: ResNet-18/50 and
MobileNetV1/V2 as paper tables, built by the same assembler (:func:`effnet.build`).

Sources, one per table below:

- He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1;
  torchvision ``models/resnet.py`` (``resnet18``: ``BasicBlock`` x [2, 2, 2, 2]; ``resnet50``:
  ``Bottleneck`` x [3, 4, 6, 3], ``expansion = 4``, stride on the 3x3 conv: "ResNet V1.5").
- Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017, Table 1; Keras applications ``mobilenet.py`` (``_depthwise_conv_block``
  ids 1-13, ``dropout=1e-3``).
- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, Table 2;
  torchvision ``models/mobilenetv2.py`` (``inverted_residual_setting``, ``last_channel = 1280``,
  ``dropout=0.2``).

What they share, as the reference implementations train them: PyTorch BatchNorm defaults
(eps 1e-5, momentum 0.1, torchvision), no stochastic depth, 224 px, and channel rounding to a
multiple of 8 with the 10% rule when width-scaled (torchvision ``_make_divisible``, the same rule
as EfficientNet's ``round_filters``: ``round_limit=0.9``).
"""

from __future__ import annotations

from effnet.specs.base import ModelSpec, StageSpec

_BASELINE_COMMON = dict(
    resolution=224, drop_path_rate=0.0, bn_eps=1e-5, bn_momentum=0.1, round_limit=0.9,
)

# ResNet Table 1, "18-layer": conv1 7x7/2 64 + 3x3/2 max pool, then conv2_x..conv5_x of two
# [3x3, 3x3] basic blocks each; the first block of conv3_x..conv5_x has stride 2. No head conv:
# the 512-d output of conv5_x is pooled into the 1000-way fc.
RESNET18 = ModelSpec(
    name="resnet18",
    stages=(
        StageSpec(op="basic", repeats=2, kernel=3, stride=1, expand=1, channels=64),
        StageSpec(op="basic", repeats=2, kernel=3, stride=2, expand=1, channels=128),
        StageSpec(op="basic", repeats=2, kernel=3, stride=2, expand=1, channels=256),
        StageSpec(op="basic", repeats=2, kernel=3, stride=2, expand=1, channels=512),
    ),
    stem_channels=64, stem_kernel=7, stem_pool=True, head_channels=0,
    # torchvision trains ResNets without dropout.
    dropout=0.0, activation="relu",
    source="ResNet Table 1 (18-layer); torchvision resnet.py resnet18",
    **_BASELINE_COMMON,
)

# ResNet Table 1, "50-layer": the same stem, then [1x1 64, 3x3 64, 1x1 256] x 3, [.. 512] x 4,
# [.. 1024] x 6, [.. 2048] x 3. ``channels`` is each block's output (256 ...), ``expand=4`` the
# paper's bottleneck ratio (hidden 64 ...).
RESNET50 = ModelSpec(
    name="resnet50",
    stages=(
        StageSpec(op="bottleneck", repeats=3, kernel=3, stride=1, expand=4, channels=256),
        StageSpec(op="bottleneck", repeats=4, kernel=3, stride=2, expand=4, channels=512),
        StageSpec(op="bottleneck", repeats=6, kernel=3, stride=2, expand=4, channels=1024),
        StageSpec(op="bottleneck", repeats=3, kernel=3, stride=2, expand=4, channels=2048),
    ),
    stem_channels=64, stem_kernel=7, stem_pool=True, head_channels=0,
    dropout=0.0, activation="relu",
    source="ResNet Table 1 (50-layer); torchvision resnet.py resnet50 (V1.5)",
    **_BASELINE_COMMON,
)

# MobileNetV1 Table 1 (width multiplier 1.0): conv 3x3/2 32, then 13 depthwise-separable blocks
# grouped into stages by output width. Table 1's "Conv dw / s2" on the 7x7x1024 input is a typo
# (its output is still 7x7): Keras block 13 and the reference TF code use stride 1 there.
# No head conv: the 1024-d output is pooled into the classifier (Keras: a 1x1 conv with bias,
# the same weights as our Linear(1024, 1000)). Keras uses TF's BatchNorm (eps 1e-3, momentum
# 0.99) and TF "same" padding; we train it like the torchvision models (importing Keras weights
# would set bn_eps=1e-3, padding="same").
MOBILENET_V1 = ModelSpec(
    name="mobilenet_v1",
    stages=(
        StageSpec(op="dsconv", repeats=1, kernel=3, stride=1, expand=1, channels=64),
        StageSpec(op="dsconv", repeats=2, kernel=3, stride=2, expand=1, channels=128),
        StageSpec(op="dsconv", repeats=2, kernel=3, stride=2, expand=1, channels=256),
        StageSpec(op="dsconv", repeats=6, kernel=3, stride=2, expand=1, channels=512),
        StageSpec(op="dsconv", repeats=2, kernel=3, stride=2, expand=1, channels=1024),
    ),
    stem_channels=32, head_channels=0,
    # Keras applications mobilenet.py: ``dropout=1e-3`` before the classifier.
    dropout=0.001, activation="relu6",
    source="MobileNetV1 Table 1; Keras applications mobilenet.py",
    **_BASELINE_COMMON,
)

# MobileNetV2 Table 2 (t = expand, c = channels, n = repeats, s = stride): inverted residuals
# without squeeze-excitation, 3x3 depthwise everywhere, ReLU6, linear projection; the t=1 first
# stage has no expansion conv. Stem conv 3x3/2 32, head conv 1x1 1280.
MOBILENET_V2 = ModelSpec(
    name="mobilenet_v2",
    stages=(
        StageSpec(op="mbconv", repeats=1, kernel=3, stride=1, expand=1, channels=16),
        StageSpec(op="mbconv", repeats=2, kernel=3, stride=2, expand=6, channels=24),
        StageSpec(op="mbconv", repeats=3, kernel=3, stride=2, expand=6, channels=32),
        StageSpec(op="mbconv", repeats=4, kernel=3, stride=2, expand=6, channels=64),
        StageSpec(op="mbconv", repeats=3, kernel=3, stride=1, expand=6, channels=96),
        StageSpec(op="mbconv", repeats=3, kernel=3, stride=2, expand=6, channels=160),
        StageSpec(op="mbconv", repeats=1, kernel=3, stride=1, expand=6, channels=320),
    ),
    stem_channels=32, head_channels=1280,
    dropout=0.2, activation="relu6",
    source="MobileNetV2 Table 2; torchvision mobilenetv2.py",
    **_BASELINE_COMMON,
)

#: name -> spec, registered beside the EfficientNet families (``effnet.registry``).
BASELINES: dict[str, ModelSpec] = {
    spec.name: spec for spec in (RESNET18, RESNET50, MOBILENET_V1, MOBILENET_V2)
}

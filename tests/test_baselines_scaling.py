"""Every baseline (ResNet-18/50, MobileNetV1/V2) takes every scaling strategy, and the scaled
network is what the strategy says: depth multiplies the blocks per stage, width the channels
(rounded to multiples of 8), resolution the input."""

from __future__ import annotations

import pytest
import torch

import effnet
from effnet.scaling import STRATEGIES, get_strategy

BASELINES = ("resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")


#: By default one growing and one shrinking pair run (each strategy's multipliers are checked by
#: hand in test_scaling_strategies); every other pair, up to ResNet-50 at twice the width, runs
#: under ``slow``.
DEFAULT_PAIRS = {("compound", "resnet18"), ("tiny", "mobilenet_v2")}


@pytest.mark.parametrize(("strategy", "name"), [
    (s, n) if (s, n) in DEFAULT_PAIRS else pytest.param(s, n, marks=pytest.mark.slow)
    for s in sorted(STRATEGIES) for n in BASELINES])
def test_every_baseline_takes_every_strategy(name, strategy):
    base = effnet.get_spec(name)
    phi = -1.0 if strategy == "tiny" else 1.0
    spec = get_strategy(strategy).apply(base, phi).replace(num_classes=5)
    assert all(s.channels % 8 == 0 for s in spec.stages) and spec.stem_channels % 8 == 0
    m = effnet.build(spec).train()
    x = torch.randn(2, 3, 32, 32)  # the smallest input: stride 32 leaves 1x1
    out = m(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_depth_width_resolution_mean_what_they_say_on_resnet50():
    r50 = effnet.get_spec("resnet50")
    deeper = effnet.scale(r50, depth=2.0, depth_rounding="round")
    assert [s.repeats for s in deeper.stages] == [6, 8, 12, 6]  # ResNet-50's 3, 4, 6, 3 doubled
    wider = effnet.scale(r50, width=1.5)
    assert [s.channels for s in wider.stages] == [384, 768, 1536, 3072]  # 256..2048 x 1.5, multiples of 8
    assert effnet.scale(r50, resolution=320).resolution == 320

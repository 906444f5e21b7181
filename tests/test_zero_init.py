"""Zero-initialised residual branches (Goyal et al. 2017, section 5.1): off for the official
models, and when on, every residual block starts as the identity."""

import torch

from effnet.model import ZERO_INIT_LAST, build, zero_init_last
from effnet.registry import get_spec
from effnet.scaling import scale


def _small():
    return scale(get_spec("efficientnet_b0"), width=0.25, depth=0.5).replace(num_classes=10)


def test_official_models_keep_gamma_one():
    net = build(_small())
    gammas = [m.weight for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(g, torch.ones_like(g)) for g in gammas)


def test_zero_init_makes_every_residual_block_the_identity():
    spec = _small()
    net = build(spec.replace(extra={**spec.extra, ZERO_INIT_LAST: True})).eval()
    residual = [b for stage in net.stages for b in stage if b.has_skip]
    # B0 at half depth still has blocks with skips (repeats > 1 in stages 2-7, stride 1 inside).
    assert residual
    for b in residual:
        x_in = torch.randn(2, b.conv_pwl.conv.out_channels, 8, 8)
        torch.testing.assert_close(b(x_in), x_in)
    # Blocks without a skip (the first of each stage) are left alone: their output is not zero.
    first = net.stages[1][0]
    assert not first.has_skip and first.conv_pwl.bn.weight.abs().sum() > 0


def test_zero_init_counts_resnet_blocks_with_projection_shortcuts():
    spec = get_spec("resnet18").replace(num_classes=10)
    net = build(spec)
    # ResNet-18: 8 basic blocks, every one with a shortcut (identity or projection).
    assert zero_init_last(net) == 8
    for stage in net.stages:
        for b in stage:
            assert torch.count_nonzero(b.conv2.bn.weight) == 0
            if not isinstance(b.shortcut, torch.nn.Identity):
                assert torch.count_nonzero(b.shortcut.bn.weight) > 0

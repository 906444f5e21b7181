"""effnet.layers.gate.gated_pointwise_conv (the squeeze-excitation gate applied inside the
1x1 projection) against the plain ``F.conv2d(x * gate, w)`` and autograd, in float64, on small
and large maps, channels-last and contiguous."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effnet.layers.gate import gated_pointwise_conv


# (batch, channels, out, height, width): maps with fewer positions than outputs (4x4 -> 24) and
# with many more (16x16 -> 8; 9x7 -> 4), as in B0's late and early blocks.
@pytest.mark.parametrize("shape", [(3, 12, 24, 4, 4), (3, 12, 8, 16, 16), (2, 6, 4, 9, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_and_gradients_equal_the_plain_ops(shape, channels_last):
    b, c, out, h, w = shape
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    gate = torch.rand(b, c, 1, 1, generator=gen, dtype=torch.float64)
    conv = nn.Conv2d(c, out, 1, bias=False).double().to(memory_format=fmt)
    grad = torch.randn(b, out, h, w, generator=gen, dtype=torch.float64)

    leaves = [x.clone().requires_grad_(), gate.clone().requires_grad_()]
    y = gated_pointwise_conv(leaves[0], leaves[1], conv)
    y.backward(grad)
    got = [y.detach(), leaves[0].grad, leaves[1].grad, conv.weight.grad.clone()]

    conv.weight.grad = None
    refs = [x.clone().requires_grad_(), gate.clone().requires_grad_()]
    y0 = F.conv2d(refs[0] * refs[1], conv.weight)
    y0.backward(grad)
    want = [y0.detach(), refs[0].grad, refs[1].grad, conv.weight.grad]
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=fmt)  # the next BatchNorm sees the layout it would


def test_other_convs_are_refused():
    x, gate = torch.randn(1, 4, 5, 5), torch.rand(1, 4, 1, 1)
    assert gated_pointwise_conv(x, gate, nn.Conv2d(4, 4, 3, padding=1, bias=False)) is None
    assert gated_pointwise_conv(x, gate, nn.Conv2d(4, 4, 1, bias=True)) is None
    assert gated_pointwise_conv(x, gate, nn.Conv2d(4, 4, 1, stride=2, bias=False)) is None

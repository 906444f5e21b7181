"""effnet.layers.depthwise: the depthwise conv whose weight gradient is assembled from blocks,
checked against PyTorch's own conv (F.conv2d and autograd) in float64, where the only difference
left, the order of the float sums, is far below the tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effnet import create_model
from effnet.layers import ConvBnAct
from effnet.layers.activations import memory_efficient
from effnet.layers.conv import Conv2dSame
from effnet.layers.depthwise import depthwise_conv, depthwise_weight_grad, fast_backward_applies


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast, and on a busy machine far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(x, weight, bias, grad, stride=1):
    """Input, weight and bias gradients of the plain "same" depthwise conv."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    k = weight.shape[-1]
    F.conv2d(leaves[0], leaves[1], leaves[2], stride, k // 2, 1, weight.shape[0]).backward(grad)
    return [t.grad for t in leaves]


# (batch, channels, height, width, kernel, stride): B0's 5x5 maps (8x8, 4x4, stride 2 on 8x8 and
# 32x32), maps smaller than the kernel (2x2, 1x1: the edge taps see only padding), odd and
# non-square maps, 7x7 and 9x9 kernels.
SHAPES = [(2, 5, 8, 8, 5, 1), (2, 5, 4, 4, 5, 1), (2, 3, 2, 2, 5, 1), (1, 4, 1, 1, 5, 1), (3, 4, 7, 9, 5, 1),
          (2, 3, 6, 5, 7, 1), (2, 3, 3, 2, 7, 1), (2, 5, 8, 8, 5, 2), (2, 2, 32, 32, 5, 2), (2, 3, 7, 9, 5, 2),
          (2, 3, 9, 6, 7, 2), (2, 3, 11, 10, 9, 2), (2, 3, 3, 2, 7, 2)]


@pytest.mark.parametrize("split", ["columns", "blocks"])
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_equals_pytorchs(shape, split):
    n, c, h, w, k, stride = shape
    if split == "blocks" and stride != 1:
        with pytest.raises(ValueError, match="stride 1"):
            depthwise_weight_grad(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 2, 2), k, stride, split)
        return
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, 1, k, k, generator=gen, dtype=torch.float64)
    grad = torch.randn(n, c, (h - 1) // stride + 1, (w - 1) // stride + 1, generator=gen, dtype=torch.float64)
    _, g_w, _ = _reference(x, weight, torch.zeros(c, dtype=torch.float64), grad, stride)
    torch.testing.assert_close(depthwise_weight_grad(grad, x, k, stride, split), g_w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 8, 8, 5, 1), (2, 5, 4, 4, 5, 1), (2, 3, 6, 5, 7, 1), (2, 5, 8, 8, 5, 2),
                                   (2, 3, 9, 7, 5, 2)])
def test_output_and_all_gradients_equal_pytorchs(shape, channels_last):
    n, c, h, w, k, stride = shape
    gen = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    conv = nn.Conv2d(c, c, k, stride, padding=k // 2, groups=c, bias=True).double().to(memory_format=fmt)
    grad = torch.randn(n, c, (h - 1) // stride + 1, (w - 1) // stride + 1, generator=gen, dtype=torch.float64)
    ref = _reference(x, conv.weight, conv.bias, grad, stride)
    assert fast_backward_applies(conv, x)
    leaf = x.clone().requires_grad_()
    y = depthwise_conv(leaf, conv)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, stride, k // 2, 1, c), rtol=0, atol=0)
    y.backward(grad)
    for got, want in zip((leaf.grad, conv.weight.grad, conv.bias.grad), ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_only_same_padded_depthwise_convs_on_the_cpu_apply():
    x = torch.randn(1, 4, 8, 8)
    assert fast_backward_applies(nn.Conv2d(4, 4, 5, padding=2, groups=4), x)
    assert fast_backward_applies(nn.Conv2d(4, 4, 7, padding=3, groups=4), x)
    assert fast_backward_applies(nn.Conv2d(4, 4, 5, stride=2, padding=2, groups=4), x)
    assert fast_backward_applies(nn.Conv2d(4, 4, 5, padding=2, groups=4), x[..., :4, :4])
    assert not fast_backward_applies(nn.Conv2d(4, 4, 5, stride=2, padding=2, groups=4), x[..., :4, :4])
    refused = [
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # 3x3: oneDNN's own weight gradient is fast
        nn.Conv2d(4, 4, 5, stride=3, padding=2, groups=4),  # stride 3
        nn.Conv2d(4, 4, 5, padding=4, dilation=2, groups=4),  # dilated
        nn.Conv2d(4, 4, 5, padding=1, groups=4),  # not "same"
        nn.Conv2d(4, 4, (5, 3), padding=(2, 1), groups=4),  # not square
        nn.Conv2d(4, 8, 5, padding=2, groups=4),  # a channel multiplier: not depthwise
        nn.Conv2d(4, 4, 5, padding=2),  # a full conv
        nn.Conv2d(4, 4, 5, padding=2, groups=4, padding_mode="reflect"),
        Conv2dSame(4, 4, 5, 1, groups=4),  # TF padding: a subclass, its own forward
    ]
    for conv in refused:
        assert not fast_backward_applies(conv, x), conv
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    assert not fast_backward_applies(conv, x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_backward_applies(conv, x)


def test_convbnact_trains_through_it_with_the_plain_gradients():
    # A 5x5 depthwise ConvBnAct: with effnet's training ops on, the conv runs depthwise_conv
    # (the backward node says so) and every gradient equals the plain modules'.
    torch.manual_seed(0)
    block = ConvBnAct(6, 6, 5, groups=6).double().train()
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    grads = []
    for lean in (False, True):
        b = copy.deepcopy(block)
        leaf = x.clone().requires_grad_()
        with memory_efficient(lean):
            y = b(leaf)
        nodes, stack = set(), [y.grad_fn]
        while stack:
            node = stack.pop()
            if node is not None and type(node).__name__ not in nodes:
                nodes.add(type(node).__name__)
                stack.extend(f for f, _ in node.next_functions)
        assert ("_DepthwiseConvBackward" in nodes) is lean
        y.square().sum().backward()
        grads.append([leaf.grad, *(p.grad for p in b.parameters())])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_b0_training_gradients_equal_the_plain_model():
    # The whole network: every 5x5 depthwise conv's gradients through depthwise_conv (64 px:
    # the stride-2 5x5 convs see 16x16 and 4x4 maps, the stride-1 ones 8x8 to 2x2). float64:
    # BatchNorm over the few values of the smallest maps amplifies float32 rounding.
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10).train().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    y = torch.randint(0, 10, (2,))
    grads = []
    for lean in (False, True):
        m = copy.deepcopy(model)
        with memory_efficient(lean):
            torch.manual_seed(1)
            F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    dw = [n for n in grads[0] if n.endswith("conv_dw.conv.weight") and grads[0][n].shape[-1] == 5]
    assert len(dw) == 9  # B0's MBConv5 blocks (EfficientNet Table 1: stages 3, 5 and 6 = 2 + 3 + 4)
    # Relative to the tensor's largest gradient, or to 1e-3 of the model's largest where that is
    # smaller: a BN bias followed (through linear ops) by another BN has a gradient that is 0 in
    # exact arithmetic, i.e. rounding noise, which any regrouped sum changes entirely.
    top = max(g.abs().max() for g in grads[0].values())
    for n, g0 in grads[0].items():
        err = (grads[1][n] - g0).abs().max() / torch.maximum(g0.abs().max(), 1e-3 * top)
        assert err < 1e-9, (n, err.item())

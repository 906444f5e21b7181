"""A depthwise convolution whose weight gradient avoids oneDNN's slow CPU kernel.

On the CPU, PyTorch computes a depthwise convolution's gradients with oneDNN, whose weight
gradient has a fast kernel only for kernels at most 3 wide: a 5x5 depthwise weight gradient
(EfficientNet's MBConv5 blocks, EfficientNet Table 1) takes 5-30x the time of the forward
convolution. :func:`depthwise_conv` runs the same forward convolution and PyTorch's own input
gradient (fast already, and bit-identical, so nothing upstream of the conv changes), and
computes the weight gradient of a stride-1, "same"-padded depthwise conv (odd k >= 5, padding
k // 2) from calls that get the fast kernel: the k x k taps are split into blocks, each block a
weight-gradient call of its own size whose padding puts it in place, with the output gradient
shifted where the block's padding cannot (a shift only ever drops terms that meet the zero
padding, so each block's sum is exact):

- ``columns``: the k x 3 centre columns (padding (k // 2, 1)) plus one k x 1 call per remaining
  column; the faster from about 7x7 feature maps up (EfficientNet B0 at 128-224 px: 2-4x faster
  than oneDNN's k x k call);
- ``blocks``: the 3x3 centre plus 1-wide edge rows, columns and corners; the faster on the
  smallest maps (4x4: 3-4x), where a k x 3 kernel taller than the map is slow again.

Strided, dilated and 3x3 convs, even kernels, other paddings, non-CPU tensors and autocast keep
PyTorch's own backward (their kernels are not the slow ones, or the split does not apply). The
weight gradient equals ``F.conv2d``'s up to float summation order
(``tests/test_layers_ops_depthwise.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["depthwise_conv", "depthwise_weight_grad", "fast_backward_applies"]

#: Below this feature-map side the ``blocks`` split is faster than ``columns`` (measured on
#: EfficientNet B0's 5x5 layers: 4x4 maps favour blocks 3.8x, 7x7 and larger favour columns 2x).
_COLUMNS_MIN_SIDE = 6


def fast_backward_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """``conv`` is a plain stride-1 depthwise ``nn.Conv2d`` with an odd square kernel of 5 or more
    and "same" padding (k // 2), running on the CPU in float32 or float64 (not bfloat16 nor under autocast: a
    bfloat16 weight gradient summed in another order can differ from the plain one by a rounding step):
    the case :func:`depthwise_conv` speeds up."""
    if (type(conv) is not nn.Conv2d or x.device.type != "cpu" or x.ndim != 4
            or x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu")):
        return False
    k = conv.kernel_size[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k) and k % 2 == 1
            and k >= 5 and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
            and conv.padding_mode == "zeros")


def _weight_grad_call(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int, pad: tuple[int, int]) -> torch.Tensor:
    """oneDNN's weight gradient of a (kh, kw) stride-1 depthwise conv with padding ``pad``."""
    channels = x.shape[1]
    weight = x.new_empty(channels, 1, kh, kw)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], list(pad), [1, 1], False, [0, 0], channels, [False, True, False])[1]


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, k: int, split: str | None = None) -> torch.Tensor:
    """The (C, 1, k, k) weight gradient of a stride-1 depthwise conv with padding k // 2, odd k,
    from blocks that oneDNN computes fast. ``split``: "columns" or "blocks" (default: by map size)."""
    p = k // 2
    if split is None:
        split = "columns" if min(x.shape[-2:]) >= _COLUMNS_MIN_SIDE else "blocks"
    if split not in ("columns", "blocks"):
        raise ValueError(f"split: expected 'columns' or 'blocks', got {split!r}")
    out = x.new_empty(x.shape[1], 1, k, k)
    # Spans (start, size) along one kernel axis: the 3 centre taps, then one per remaining tap.
    spans = [(p - 1, 3)] + [(t, 1) for t in range(k) if abs(t - p) > 1]
    rows = [(0, k)] if split == "columns" else spans
    for r0, hr in rows:
        for c0, wc in spans:
            # The block's own "same" padding ((size - 1) // 2) aligns its centre with tap
            # (r0 + ph, c0 + pw); the output gradient is shifted by the rest (dh, dw). The entries
            # a shift drops multiply only zero padding of x, so the block's sum is exact.
            ph, pw = (hr - 1) // 2, (wc - 1) // 2
            dh, dw = r0 + ph - p, c0 + pw - p
            if abs(dh) >= x.shape[2] or abs(dw) >= x.shape[3]:
                out[:, :, r0:r0 + hr, c0:c0 + wc] = 0  # these taps meet only padding (maps smaller than k)
                continue
            g = F.pad(grad, (dw, -dw, dh, -dh)) if dh or dw else grad
            out[:, :, r0:r0 + hr, c0:c0 + wc] = _weight_grad_call(g, x, hr, wc, (ph, pw))
    return out


class _DepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, 1, k // 2, 1, C)`` with the weight gradient described above."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        k = weight.shape[-1]
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, 1, k // 2, 1, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        k = weight.shape[-1]
        g_x = None
        if need_x:
            # PyTorch's own input gradient (oneDNN's is fast; keeping it keeps every gradient
            # upstream of this conv bit-identical to the plain module's).
            g_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        g_w = depthwise_weight_grad(grad, x, k) if need_w else None
        g_b = grad.sum((0, 2, 3)) if need_b else None
        return g_x, g_w, g_b


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a conv where :func:`fast_backward_applies`, with the faster backward."""
    return _DepthwiseConv.apply(x, conv.weight, conv.bias)

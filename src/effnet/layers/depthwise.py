"""A depthwise convolution whose weight gradient avoids oneDNN's slow CPU kernel.

On the CPU, PyTorch computes a depthwise convolution's gradients with oneDNN, whose weight
gradient has a fast kernel only for kernels at most 3 wide: a 5x5 depthwise weight gradient
(EfficientNet's MBConv5 blocks, EfficientNet Table 1) takes 5-30x the time of the forward
convolution. :func:`depthwise_conv` runs the same forward convolution; at stride 1 it computes
the input gradient as the forward convolution of the output gradient with the flipped kernel
(a stride-1 transposed convolution is a convolution; oneDNN runs it at forward speed, 2-3x its
own input gradient for 5x5); and it computes the weight gradient of a "same"-padded depthwise conv (odd k >= 5, padding k // 2,
stride 1 or 2) from calls that get the fast kernel: the k x k taps are split into blocks, each
block a weight-gradient call of its own size whose padding puts it in place, with the output
gradient shifted where the block's padding cannot (a shift only ever drops terms that meet the
zero padding for the taps taken from that block, so each tap's sum is exact):

- ``columns``: the k x 3 centre columns (padding (k // 2, 1)) plus the other columns, one k x 1
  call each at stride 1, k x 3 calls two columns apart at stride 2 (a shift of the output
  gradient moves a block by ``stride`` columns); the faster from about 7x7 feature maps up
  (EfficientNet B0 at 128-224 px: 2-5x faster than oneDNN's k x k call, 1.1-5x at stride 2);
- ``blocks`` (stride 1): the 3x3 centre plus 1-wide edge rows, columns and corners; the faster
  on the smallest maps (4x4: 3-4x), where a k x 3 kernel taller than the map is slow again.

Dilated and 3x3 convs, other strides, even kernels, other paddings, stride 2 on maps under
6 px, non-CPU tensors and autocast keep PyTorch's own backward (their kernels are not the slow
ones, or the split does not apply or was not measured faster). The gradients equal
``F.conv2d``'s up to float summation order (``tests/test_layers_ops_depthwise.py``).
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
    """``conv`` is a plain stride-1 (or, on maps of 6 px and more, stride-2) depthwise
    ``nn.Conv2d`` with an odd square kernel of 5 or more and "same" padding (k // 2), running on the CPU in float32 or float64 (not bfloat16 nor under autocast: a
    bfloat16 weight gradient summed in another order can differ from the plain one by a rounding step):
    the case :func:`depthwise_conv` speeds up."""
    if (type(conv) is not nn.Conv2d or x.device.type != "cpu" or x.ndim != 4
            or x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu")):
        return False
    k = conv.kernel_size[0]
    # Stride 2 on maps under 6 px: not measured faster (its split has no row blocks).
    stride_ok = conv.stride == (1, 1) or (conv.stride == (2, 2) and min(x.shape[-2:]) >= _COLUMNS_MIN_SIDE)
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k) and k % 2 == 1
            and k >= 5 and stride_ok and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
            and conv.padding_mode == "zeros")


def _weight_grad_call(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int, stride: int,
                      pad: tuple[int, int]) -> torch.Tensor:
    """oneDNN's weight gradient of a (kh, kw) depthwise conv with ``stride`` and padding ``pad``."""
    channels = x.shape[1]
    weight = x.new_empty(channels, 1, kh, kw)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride, stride], list(pad), [1, 1], False, [0, 0], channels,
        [False, True, False])[1]


def _pieces(k: int, stride: int, whole: bool) -> list[tuple[int, int, range]]:
    """How one kernel axis of k taps is split: (first tap, block size, the taps taken from the
    block). ``whole``: the axis in one block. Else the 3 centre taps, then for stride 1 one block
    per remaining tap; for stride 2, 3-wide blocks two taps apart (a shift of the output gradient
    moves a block by ``stride`` taps), each giving the outer taps that its shift keeps exact."""
    p = k // 2
    if whole:
        return [(0, k, range(k))]
    pieces = [(p - 1, 3, range(p - 1, p + 2))]
    if stride == 1:
        return pieces + [(t, 1, range(t, t + 1)) for t in range(k) if abs(t - p) > 1]
    for j in range(1, (p + 1) // 2 + 1):
        left, right = p - 1 - 2 * j, p - 1 + 2 * j
        pieces.append((left, 3, range(max(left, 0), left + 2)))
        pieces.append((right, 3, range(right + 1, min(right + 3, k))))
    return pieces


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, k: int, stride: int = 1,
                          split: str | None = None) -> torch.Tensor:
    """The (C, 1, k, k) weight gradient of a depthwise conv with odd kernel k, padding k // 2 and
    stride 1 or 2, from blocks that oneDNN computes fast. ``split``: "columns" or "blocks"
    (stride 1 only); default: by map size."""
    if stride not in (1, 2):
        raise ValueError(f"stride: expected 1 or 2, got {stride}")
    p = k // 2
    if split is None:
        split = "columns" if stride > 1 or min(x.shape[-2:]) >= _COLUMNS_MIN_SIDE else "blocks"
    if split not in ("columns", "blocks") or (split == "blocks" and stride != 1):
        raise ValueError(f"split: expected 'columns' or (stride 1) 'blocks', got {split!r} at stride {stride}")
    out = x.new_empty(x.shape[1], 1, k, k)
    cols = _pieces(k, stride, whole=False)
    for r0, hr, row_taps in _pieces(k, stride, whole=split == "columns"):
        for c0, wc, col_taps in cols:
            # The block's own "same" padding ((size - 1) // 2) aligns its centre with tap
            # (r0 + ph, c0 + pw); the output gradient is shifted by the rest (dh, dw output
            # positions = stride x as many taps). Every entry a shift drops multiplies only zero
            # padding of x for the taps taken, so their sums are exact.
            ph, pw = (hr - 1) // 2, (wc - 1) // 2
            dh, dw = (r0 + ph - p) // stride, (c0 + pw - p) // stride
            rows_out = slice(row_taps.start, row_taps.stop)
            cols_out = slice(col_taps.start, col_taps.stop)
            if abs(dh) >= grad.shape[2] or abs(dw) >= grad.shape[3]:
                out[:, :, rows_out, cols_out] = 0  # these taps meet only padding (maps smaller than k)
                continue
            g = F.pad(grad, (dw, -dw, dh, -dh)) if dh or dw else grad
            block = _weight_grad_call(g, x, hr, wc, stride, (ph, pw))
            out[:, :, rows_out, cols_out] = block[:, :, row_taps.start - r0:row_taps.stop - r0,
                                                  col_taps.start - c0:col_taps.stop - c0]
    return out


class _DepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, k // 2, 1, C)`` with the weight gradient described above."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # type: ignore[override]
        k = weight.shape[-1]
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return F.conv2d(x, weight, bias, stride, k // 2, 1, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        k, s = weight.shape[-1], ctx.stride
        g_x = None
        if need_x and s == 1:
            # A stride-1 transposed conv with padding p is the conv with the flipped kernel and
            # padding k - 1 - p (= p): oneDNN runs it at forward speed, 2-3x its own input gradient.
            g_x = F.conv2d(grad, weight.flip(2, 3), None, 1, k // 2, 1, weight.shape[0])
        elif need_x:
            g_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [s, s], [k // 2, k // 2], [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        g_w = depthwise_weight_grad(grad, x, k, s) if need_w else None
        g_b = grad.sum((0, 2, 3)) if need_b else None
        return g_x, g_w, g_b, None


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a conv where :func:`fast_backward_applies`, with the faster backward."""
    return _DepthwiseConv.apply(x, conv.weight, conv.bias, conv.stride[0])

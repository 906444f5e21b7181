"""Squeeze-excitation's training ops: the squeeze (a spatial mean) whose gradient is added in
place, and the gate fused into the 1x1 projection that follows it, saving one full-size tensor.

In squeeze-excitation, ``x * sigmoid(s)`` saves ``x`` (for the gate's gradient) and the
following 1x1 conv saves the product: two full-size tensors of the expanded width.
:func:`gated_pointwise_conv` saves ``x`` and the (B, C, 1, 1) gate and recomputes the product
in backward: one tensor of two. (A gate function on its own could not save less than ``x``,
and the product would still be kept by the conv.) On large maps it forms no full-size product at
all: the gate scales the small 1x1 weight per sample and both passes are batched matmuls.

Like the BN + activation op (``effnet.layers.activations``), both run only where
:func:`~effnet.layers.activations.lean_ops_active` allows (training with grad enabled, no tracer,
exporter or compiler) and give the plain ops' gradients (``tests/test_layers_gate.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from effnet.layers.activations import lean_ops_active

__all__ = ["gated_pointwise_conv", "spatial_mean"]


class _SpatialMean(torch.autograd.Function):
    """``x.mean((2, 3), keepdim=True)`` whose gradient is a broadcast view, not a tensor.

    Autograd's mean backward writes ``grad / (H * W)`` out to every position of ``x`` (a
    full-size tensor), and where ``x`` also feeds the gated projection, as the squeeze input in
    SE does, the two gradients are then summed into a third. Handed a broadcast view instead,
    autograd adds it in place into the projection's input gradient: one pass over the tensor
    instead of three, and no fresh buffer (B0's CPU step: 7% of its time)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.shape = x.shape
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        return (grad / (ctx.shape[2] * ctx.shape[3])).expand(ctx.shape)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The SE squeeze, ``x.mean((2, 3), keepdim=True)``; in training with the memory-saving ops
    on, its backward adds into the other gradient of ``x`` in place (see ``_SpatialMean``)."""
    if x.ndim == 4 and lean_ops_active() and not torch.jit.is_scripting():
        return _SpatialMean.apply(x)
    return x.mean((2, 3), keepdim=True)


def _gate_by_gemm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Run the gated 1x1 conv as batched matmuls with the gate folded into per-sample weights
    (no full-size ``x * gate`` in either pass, no full-size ``dx_gated * x`` in backward) when
    the feature map has at least twice as many positions as the conv has outputs: backward then
    forms a (B, out, in) product per sample instead, the smaller tensor (B0 at 128 px: 1.2-2.3x
    faster on the 64x64 to 16x16 blocks; on 8x8 and 4x4 maps up to 8x slower, so not there).
    float32/float64 only: bfloat16 sums of the per-sample products would lose precision."""
    return (x.ndim == 4 and x.dtype in (torch.float32, torch.float64)
            and x.shape[2] * x.shape[3] >= 2 * weight.shape[0])


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A (B, C, H, W) tensor as a batch of matrices, without a copy when it is dense: (B, HW, C)
    for channels-last memory (flag True), else (B, C, HW)."""
    b, c, h, w = t.shape
    if t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return t.contiguous().view(b, c, h * w), False


class _GatedPointwiseConv(torch.autograd.Function):
    """``conv1x1(x * gate)`` saving ``x`` and the small gate, not the full-size product."""

    @staticmethod
    def forward(ctx, x, gate, weight):  # type: ignore[override]
        ctx.save_for_backward(x, gate, weight)
        if not _gate_by_gemm(x, weight):
            return F.conv2d(x * gate, weight)
        b, c, h, w = x.shape
        out = weight.shape[0]
        # conv1x1(x * gate)_b = x_b @ (gate_b * W^T): the gate scales the small weight instead.
        wb = gate.view(b, c, 1) * weight.view(out, c).t()  # (B, C, out)
        rows, channels_last = _rows(x)
        if channels_last:
            return torch.bmm(rows, wb).view(b, h, w, out).permute(0, 3, 1, 2)  # channels-last
        return torch.bmm(wb.transpose(1, 2), rows).view(b, out, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, gate, weight = ctx.saved_tensors
        need_x, need_gate, need_w = ctx.needs_input_grad
        if _gate_by_gemm(x, weight):
            return _gated_gemm_backward(grad, x, gate, weight, need_x)
        xg = x * gate  # the conv input, recomputed
        g_xg, g_w, _ = torch.ops.aten.convolution_backward(
            grad, xg, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_x or need_gate, need_w, False])  # output_mask: input, weight, bias
        del xg
        g_gate = (g_xg * x).sum((2, 3), keepdim=True) if need_gate else None  # (B, C, 1, 1)
        # In place: g_xg is this function's own buffer; one full-size allocation fewer.
        g_x = g_xg.mul_(gate) if need_x else None
        return g_x, g_gate, g_w


def _gated_gemm_backward(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                         need_x: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The gradients of ``conv1x1(x * gate)`` from two batched matmuls. With M_b = grad_b^T @ x_b
    (out x C per sample b): dW = sum_b M_b * gate_b and dgate_b = sum_out M_b * W (the conv's sums
    regrouped), and dx_b = grad_b @ (gate_b * W^T)^T; nothing full-size is formed but dx."""
    b, c, h, w = x.shape
    out = weight.shape[0]
    w2 = weight.view(out, c)
    rows, channels_last = _rows(x)
    if channels_last:
        g_rows = grad.permute(0, 2, 3, 1).reshape(b, h * w, out)  # (B, HW, out); copied only if not dense
        m = torch.bmm(g_rows.transpose(1, 2), rows)  # (B, out, C)
    else:
        g_rows = grad.contiguous().view(b, out, h * w)
        m = torch.bmm(g_rows, rows.transpose(1, 2))
    g_w = (m * gate.view(b, 1, c)).sum(0).view_as(weight)
    g_gate = (m * w2).sum(1).view(b, c, 1, 1)
    del m
    g_x = None
    if need_x:
        wb = gate.view(b, c, 1) * w2.t()  # (B, C, out)
        if channels_last:
            # Written into a tensor of its own, not returned as a view of the matmul's output:
            # autograd then adds the SE squeeze's gradient into it in place (it does so only for
            # a tensor nothing else shares; see _SpatialMean).
            g_x = torch.empty((b, c, h, w), dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
            torch.bmm(g_rows, wb.transpose(1, 2), out=g_x.permute(0, 2, 3, 1).view(b, h * w, c))
        else:
            g_x = torch.bmm(wb, g_rows).view(b, c, h, w)
    return g_x, g_gate, g_w


def gated_pointwise_conv(x: torch.Tensor, gate: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor | None:
    """``conv(x * gate)`` for a bias-free 1x1 ``conv`` and a (B, C, 1, 1) ``gate``, saving ``x``
    only instead of ``x`` and the product; ``None`` when ``conv`` is of another kind."""
    if (type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1) or conv.stride != (1, 1)
            or conv.padding != (0, 0) or conv.groups != 1 or conv.bias is not None
            or gate.shape[-2:] != (1, 1)):
        return None
    weight, device = conv.weight, x.device.type
    if torch.is_autocast_enabled(device):
        # What autocast does for the plain conv, done outside the function so that autograd
        # records the casts (the gradient reaches the float32 weight through them) and the
        # backward sees one dtype.
        dtype = torch.get_autocast_dtype(device)
        x, gate, weight = x.to(dtype), gate.to(dtype), weight.to(dtype)
    return _GatedPointwiseConv.apply(x, gate, weight)

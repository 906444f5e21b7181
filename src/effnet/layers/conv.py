"""Convolutions with PyTorch or TensorFlow "SAME" padding, and conv-BN-activation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effnet.layers.activations import batch_norm_act, lean_ops_active
from effnet.layers.buffers import BufferPool
from effnet.layers.depthwise import depthwise_conv, fast_backward_applies

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,  # a.k.a. swish (EfficientNet section 4)
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name](inplace=True) if name != "gelu" else nn.GELU()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: expected one of {sorted(_ACTIVATIONS)}") from None


def same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding of one spatial axis, as (before, after): output = ceil(size / stride);
    extra padding goes to the bottom/right. Shared with :func:`effnet.deploy.surgery.static_padding`."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from the input size at run time.

    For stride 2 TF pads asymmetrically (more at the bottom/right), so TF-trained weights
    only reproduce TF's outputs with this padding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        top, bottom = same_pad(ih, kh, self.stride[0], self.dilation[0])
        left, right = same_pad(iw, kw, self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_conv(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    """A conv with ``padding`` "symmetric" (k // 2, PyTorch style) or "same" (TF style).

    With stride 1 and an odd kernel both are identical, so the static conv is used.
    """
    if padding == "same" and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
    if padding not in ("same", "symmetric"):
        raise ValueError(f"padding: expected 'symmetric' or 'same', got {padding!r}")
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class ConvBnAct(nn.Sequential):
    """conv -> BatchNorm -> activation (activation omitted when ``act`` is None).

    ``bn_momentum`` uses the PyTorch convention: TF's ``momentum=0.99`` is PyTorch ``0.01``.

    A Sequential, so that module surgery (``effnet.deploy`` folds ``bn`` into ``conv``) can rely
    on registration order being the data flow; ``forward`` runs the same three modules, with BN
    and the activation fused in training (``effnet.layers.activations``: one tensor fewer saved
    for backward).
    """

    #: Where the memory-saving op gets its full-size CPU buffers (``effnet.layers.buffers``): the
    #: model's pool, which :class:`effnet.model.ConvNet` sets on each of its layers; None (a layer
    #: on its own) allocates afresh.
    buffer_pool: BufferPool | None = None
    __jit_ignored_attributes__ = ["buffer_pool"]  # TorchScript runs the plain ops, without the pool

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
        act: str | None = "silu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_ch, out_ch, kernel, stride, groups=groups, padding=padding)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(act) if act else nn.Identity()

    def norm_act(self, x: torch.Tensor, scratch: bool = False) -> torch.Tensor:
        """``act(bn(x))``: the part after the conv (the SE projection runs its own conv).
        ``scratch``: ``x`` is this layer's own conv output, which nothing else reads, so the
        memory-saving op may write its result over it."""
        # Scripting compiles the plain ops only (custom autograd is Python-only); TorchScript
        # skips a block only when `not torch.jit.is_scripting()` guards it alone.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self.training and lean_ops_active():
                y = batch_norm_act(x, self.bn, self.act, scratch=scratch, pool=self.buffer_pool)
                if y is not None:
                    return y
        return self.act(self.bn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102 (as in norm_act)
            if self.training and lean_ops_active():
                scratch = self._conv_output_is_scratch()
                if (scratch and fast_backward_applies(self.conv, x) and not self.conv._forward_pre_hooks
                        and not nn.modules.module._global_forward_pre_hooks):
                    # The same convolution with a faster backward (effnet.layers.depthwise); it
                    # does not call the conv module, so not where a hook on it must run.
                    return self.norm_act(depthwise_conv(x, self.conv), scratch=True)
                return self.norm_act(self.conv(x), scratch=scratch)
        return self.norm_act(self.conv(x))

    def _conv_output_is_scratch(self) -> bool:
        """Nothing but this layer reads the conv's output: effnet's own conv, with no forward
        hook on it or on every module (a hook may keep the output it is shown)."""
        return (type(self.conv) in (nn.Conv2d, Conv2dSame) and not self.conv._forward_hooks
                and not nn.modules.module._global_forward_hooks)

"""Squeeze-excitation, stochastic depth, MBConv and Fused-MBConv blocks.

Submodule names (``conv_pw``, ``conv_dw``, ``se``, ``conv_pwl``) are stable: the weight
converters in ``effnet.weights`` map torchvision / timm / Keras keys onto them.
"""

from __future__ import annotations

import torch
from torch import nn

from effnet.layers.conv import ConvBnAct, make_activation


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as used in MBConv (EfficientNet Table 1).

    ``reduced`` channels are computed by the caller from the *block input* channels
    (``se_ratio * in_ch``), not from the expanded width, as in the official code.
    """

    def __init__(self, channels: int, reduced: int, act: str = "silu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1) global context
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample.

    Kept samples are scaled by 1 / (1 - p) so the expected output is unchanged; identity at
    evaluation. The assembler sets ``p`` from the global block index (see ``effnet.model``).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: expected a rate in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
        # Scale the small mask, not the activation: one full-size multiply instead of two.
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2 / MnasNet) with squeeze-excitation.

    1x1 expand (skipped when ``expand == 1``) -> kxk depthwise (stride) -> SE -> 1x1 project
    (linear, no activation) -> + identity when the shape is preserved.
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int, stride: int, expand: float, se: float,
        drop_path: float = 0.0, act: str = "silu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        mid = int(round(in_ch * expand))
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_pw = ConvBnAct(in_ch, mid, 1, act=act, **norm) if expand != 1 else nn.Identity()
        self.conv_dw = ConvBnAct(mid, mid, kernel, stride, groups=mid, act=act, padding=padding, **norm)
        self.se = SqueezeExcite(mid, max(1, int(in_ch * se)), act) if se > 0 else nn.Identity()
        self.conv_pwl = ConvBnAct(mid, out_ch, 1, act=None, **norm)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return x + self.drop_path(y) if self.has_skip else y


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2 Figure 2): the 1x1 expand and the depthwise kxk of MBConv
    replaced by one regular kxk conv, which runs faster on accelerators in early stages.

    kxk expand (stride) -> [SE] -> 1x1 project; with ``expand == 1`` a single kxk conv-BN-act.
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int, stride: int, expand: float, se: float = 0.0,
        drop_path: float = 0.0, act: str = "silu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.has_skip = stride == 1 and in_ch == out_ch
        if expand == 1:
            self.conv_exp = ConvBnAct(in_ch, out_ch, kernel, stride, act=act, padding=padding, **norm)
            self.se = nn.Identity()
            self.conv_pwl = nn.Identity()
        else:
            mid = int(round(in_ch * expand))
            self.conv_exp = ConvBnAct(in_ch, mid, kernel, stride, act=act, padding=padding, **norm)
            self.se = SqueezeExcite(mid, max(1, int(in_ch * se)), act) if se > 0 else nn.Identity()
            self.conv_pwl = ConvBnAct(mid, out_ch, 1, act=None, **norm)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.se(self.conv_exp(x)))
        return x + self.drop_path(y) if self.has_skip else y


BLOCKS: dict[str, type[nn.Module]] = {"mbconv": MBConv, "fused": FusedMBConv}

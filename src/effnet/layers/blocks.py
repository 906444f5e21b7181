"""Squeeze-excitation, stochastic depth, and the blocks a stage can be made of: MBConv,
Fused-MBConv, and for the baselines the ResNet basic and bottleneck blocks and MobileNetV1's
depthwise-separable conv.

Every block takes the same keyword arguments (``kernel``, ``stride``, ``expand``, ``se``,
``drop_path``, ``act``, ``bn_eps``, ``bn_momentum``, ``padding``), so the assembler
(``effnet.model``) builds any stage with one call through :data:`BLOCKS`.
Submodule names (``conv_pw``, ``conv_dw``, ``se``, ``conv_pwl``; ``conv1``-``conv3`` and
``shortcut`` in the ResNet blocks) are stable: the weight converters in ``effnet.weights`` map
torchvision / timm / Keras keys onto them.
"""

from __future__ import annotations

import torch
from torch import nn

from effnet.layers.activations import lean_ops_active
from effnet.layers.conv import ConvBnAct, make_activation
from effnet.layers.gate import gated_pointwise_conv, spatial_mean


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

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, 1, 1) channel weights ``sigmoid(s)``."""
        s: torch.Tensor | None = None
        if not torch.jit.is_scripting():  # noqa: SIM102 (scripting skips only a block guarded alone)
            if self.training:
                s = spatial_mean(x)  # the same mean; its backward adds in place (layers.gate)
        if s is None:
            s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1) global context
        return torch.sigmoid(self.expand(self.act(self.reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def _se_project_lean(x: torch.Tensor, se: nn.Module, conv_pwl: nn.Module) -> torch.Tensor | None:
    """``conv_pwl(se(x))`` in training, with the SE gate applied inside the 1x1 projection's conv
    (``gated_pointwise_conv``) so that ``x`` alone is saved for backward, not also ``x * gate``;
    ``None`` when the modules are not the plain ones (replaced by module surgery)."""
    if type(se) is SqueezeExcite and type(conv_pwl) is ConvBnAct:
        y = gated_pointwise_conv(x, se.gate(x), conv_pwl.conv)
        if y is not None:
            return conv_pwl.norm_act(y)
    return None


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
    (linear, no activation) -> + identity when the shape is preserved (and ``skip``).
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int, stride: int, expand: float, se: float,
        drop_path: float = 0.0, act: str = "silu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
        padding: str = "symmetric", skip: bool = True,
    ) -> None:
        super().__init__()
        mid = int(round(in_ch * expand))
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        # skip=False: the official ``noskip`` (no residual even where the shape is kept).
        self.has_skip = skip and stride == 1 and in_ch == out_ch
        self.conv_pw = ConvBnAct(in_ch, mid, 1, act=act, **norm) if expand != 1 else nn.Identity()
        self.conv_dw = ConvBnAct(mid, mid, kernel, stride, groups=mid, act=act, padding=padding, **norm)
        self.se = SqueezeExcite(mid, max(1, int(in_ch * se)), act) if se > 0 else nn.Identity()
        self.conv_pwl = ConvBnAct(mid, out_ch, 1, act=None, **norm)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_dw(self.conv_pw(x))
        y: torch.Tensor | None = None
        if not torch.jit.is_scripting():  # noqa: SIM102 (scripting skips only a block guarded alone)
            if self.training and lean_ops_active():
                y = _se_project_lean(h, self.se, self.conv_pwl)
        if y is None:
            y = self.conv_pwl(self.se(h))
        return x + self.drop_path(y) if self.has_skip else y


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2 Figure 2): the 1x1 expand and the depthwise kxk of MBConv
    replaced by one regular kxk conv, which runs faster on accelerators in early stages.

    kxk expand (stride) -> [SE] -> 1x1 project; with ``expand == 1`` a single kxk conv-BN-act;
    + identity when the shape is preserved (and ``skip``).
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int, stride: int, expand: float, se: float = 0.0,
        drop_path: float = 0.0, act: str = "silu", bn_eps: float = 1e-3, bn_momentum: float = 0.01,
        padding: str = "symmetric", skip: bool = True,
    ) -> None:
        super().__init__()
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        # skip=False: the official ``noskip`` (no residual even where the shape is kept).
        self.has_skip = skip and stride == 1 and in_ch == out_ch
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
        h = self.conv_exp(x)
        y: torch.Tensor | None = None
        if not torch.jit.is_scripting():  # noqa: SIM102 (scripting skips only a block guarded alone)
            if self.training and lean_ops_active():
                y = _se_project_lean(h, self.se, self.conv_pwl)
        if y is None:
            y = self.conv_pwl(self.se(h))
        return x + self.drop_path(y) if self.has_skip else y


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: dict[str, float], padding: str) -> nn.Module:
    """ResNet's shortcut: the identity when the shape is kept, else a 1x1 conv (stride) + BN,
    the paper's option B (ResNet section 3.3; torchvision's ``downsample``)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return ConvBnAct(in_ch, out_ch, 1, stride, act=None, padding=padding, **norm)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, Figure 5 left; Table 1, 18- and 34-layer).

    kxk conv (stride) -BN-act -> kxk conv-BN -> + shortcut -> act: the activation comes *after*
    the addition (the original "post-activation" ResNet, as torchvision and timm build it).
    ``expand`` must be 1 and ``se`` 0 (validated by ``StageSpec``; taken for the common
    signature). Stochastic depth drops the residual branch, shortcut kept, in every block: a
    projection shortcut still carries the signal when the branch is dropped (timm's ResNet).
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, expand: float = 1, se: float = 0.0,
        drop_path: float = 0.0, act: str = "relu", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if expand != 1 or se:
            raise ValueError(f"BasicBlock: expected expand=1 and se=0 (no such parts), got {expand}, {se}")
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = ConvBnAct(in_ch, out_ch, kernel, stride, act=act, padding=padding, **norm)
        self.conv2 = ConvBnAct(out_ch, out_ch, kernel, act=None, padding=padding, **norm)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm, padding)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.conv2(self.conv1(x))))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (He et al. 2016, Figure 5 right; Table 1, 50-layer and deeper).

    1x1 conv to ``out_ch / expand`` -BN-act -> kxk conv (stride) -BN-act -> 1x1 conv to
    ``out_ch`` -BN -> + shortcut -> act. ``expand`` is the *ResNet* expansion (4 in the paper:
    a 64-d bottleneck inside a 256-d block), the inverse of MBConv's, which widens the input.
    The stride sits on the kxk conv, not on the first 1x1 as in the paper: torchvision's
    "ResNet V1.5" (resnet.py, ``Bottleneck``), which is the layout of its published weights
    and of timm's. ``se`` must be 0. Stochastic depth as in :class:`BasicBlock`.
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, expand: float = 4, se: float = 0.0,
        drop_path: float = 0.0, act: str = "relu", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        mid = int(round(out_ch / expand))
        if mid < 1 or se:
            raise ValueError(f"Bottleneck: expected out_ch / expand >= 1 and se=0, got {out_ch} / {expand}, se {se}")
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = ConvBnAct(in_ch, mid, 1, act=act, **norm)
        self.conv2 = ConvBnAct(mid, mid, kernel, stride, act=act, padding=padding, **norm)
        self.conv3 = ConvBnAct(mid, out_ch, 1, act=None, **norm)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm, padding)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(self.shortcut(x) + self.drop_path(y))


class DepthwiseSeparable(nn.Module):
    """MobileNetV1's depthwise-separable conv (Howard et al. 2017, Figure 3 right).

    kxk depthwise (stride) -BN-act -> 1x1 pointwise -BN-act; no residual, so ``drop_path`` has
    nothing to drop (``self.drop_path`` is an identity, as in MBConv without a skip). Unlike
    MBConv with ``expand=1`` the pointwise conv has an activation (MobileNetV2 section 3.2
    removed it). ``expand`` must be 1 and ``se`` 0.
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, expand: float = 1, se: float = 0.0,
        drop_path: float = 0.0, act: str = "relu6", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if expand != 1 or se:
            raise ValueError(f"DepthwiseSeparable: expected expand=1 and se=0 (no such parts), got {expand}, {se}")
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv_dw = ConvBnAct(in_ch, in_ch, kernel, stride, groups=in_ch, act=act, padding=padding, **norm)
        self.conv_pw = ConvBnAct(in_ch, out_ch, 1, act=act, **norm)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


#: ``StageSpec.op`` -> block class; the assembler builds every stage through this table.
BLOCKS: dict[str, type[nn.Module]] = {
    "mbconv": MBConv,
    "fused": FusedMBConv,
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "dsconv": DepthwiseSeparable,
}

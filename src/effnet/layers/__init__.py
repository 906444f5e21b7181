"""Building blocks: conv-BN-act, squeeze-excitation, MBConv, Fused-MBConv, stochastic depth,
and the baselines' ResNet basic / bottleneck blocks and depthwise-separable conv; the switch for
their memory-saving training ops (``effnet.layers.activations``)."""

from effnet.layers.activations import memory_efficient, memory_efficient_enabled, set_memory_efficient
from effnet.layers.blocks import (
    BLOCKS,
    BasicBlock,
    Bottleneck,
    DepthwiseSeparable,
    DropPath,
    FusedMBConv,
    MBConv,
    SqueezeExcite,
)
from effnet.layers.conv import Conv2dSame, ConvBnAct, make_activation, make_conv

__all__ = [
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "Conv2dSame",
    "ConvBnAct",
    "DepthwiseSeparable",
    "DropPath",
    "FusedMBConv",
    "MBConv",
    "SqueezeExcite",
    "make_activation",
    "make_conv",
    "memory_efficient",
    "memory_efficient_enabled",
    "set_memory_efficient",
]

"""Building blocks: conv-BN-act, squeeze-excitation, MBConv, Fused-MBConv, stochastic depth."""

from effnet.layers.blocks import BLOCKS, DropPath, FusedMBConv, MBConv, SqueezeExcite
from effnet.layers.conv import Conv2dSame, ConvBnAct, make_activation, make_conv

__all__ = [
    "BLOCKS",
    "Conv2dSame",
    "ConvBnAct",
    "DropPath",
    "FusedMBConv",
    "MBConv",
    "SqueezeExcite",
    "make_activation",
    "make_conv",
]

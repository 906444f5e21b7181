"""Module surgery for inference, on copies: fixed TF "same" padding and BatchNorm folding.

Re-exported by :mod:`effnet.deploy.optimize` (the public home of both functions); kept apart
so that :mod:`effnet.deploy.quantize` can use them without importing ``optimize``, which
imports ``quantize`` for ``int8=True``. :func:`set_child` and :func:`conv_of` are the two small
helpers ``optimize`` and ``quantize`` share with this module.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import torch
from torch import nn

from effnet.layers import Conv2dSame
from effnet.layers.conv import same_pad

__all__ = ["conv_of", "fold_batchnorm", "set_child", "static_padding"]

log = logging.getLogger(__name__)


def _as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size: expected an int or an (H, W) pair, got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"image_size: expected positive sizes, got {size}")
    return size


def _in_channels(model: nn.Module) -> int:
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "in_channels"):
        return int(spec.in_channels)
    for m in model.modules():  # the first conv in registration order is the stem for effnet models
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("static_padding: the model has no Conv2d, so its input channels are unknown")


def set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (e.g. ``blocks.3.conv``) of ``root`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _plain_conv(conv: nn.Conv2d, padding: tuple[int, int]) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` sharing ``conv``'s parameters, with a fixed symmetric padding."""
    plain = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
        conv.dilation, conv.groups, bias=conv.bias is not None,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    plain.weight = conv.weight
    plain.bias = conv.bias
    return plain


def static_padding(model: nn.Module, image_size: int | tuple[int, int]) -> nn.Module:
    """A copy of ``model`` where every :class:`~effnet.layers.Conv2dSame` has fixed padding.

    TF "SAME" padding depends on the input size, so ``Conv2dSame`` computes it on every call
    from ``x.shape``; that arithmetic is data-dependent control flow for tracers and exporters.
    Here each layer's input size at ``image_size`` is found with one forward pass, and the layer
    becomes a plain ``nn.Conv2d`` with ``padding=(top, left)`` when the padding is symmetric, or
    ``nn.Sequential(pad=nn.ZeroPad2d(...), conv=nn.Conv2d(padding=0))`` when TF pads more at the
    bottom/right (stride 2 on even sizes). The parameters are shared with the copy's old convs.

    Outputs are identical at ``image_size`` only: at another input size the fixed pads are
    wrong for TF "SAME" (the output size may even differ). No check is added at run time
    (a forward pre-hook would get in the way of export), so run the result at ``image_size``.
    Models without ``Conv2dSame`` come back as a plain copy. The copy keeps ``model``'s
    training mode; in the asymmetric case the state-dict keys gain a ``.conv`` level.
    """
    height, width = _as_size(image_size)
    out = copy.deepcopy(model)
    same = {name: m for name, m in out.named_modules() if type(m) is Conv2dSame}
    if not same:
        return out

    # One forward pass records the input size every Conv2dSame sees at image_size.
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in same.items()
    ]
    param = next(out.parameters())
    x = torch.zeros(1, _in_channels(out), height, width, device=param.device, dtype=param.dtype)
    was_training = out.training
    try:
        out.eval()  # no BatchNorm statistics update from the probe
        with torch.no_grad():
            out(x)
    finally:
        for h in hooks:
            h.remove()
        out.train(was_training)

    for name, conv in same.items():
        if name not in sizes:
            raise RuntimeError(f"static_padding: {name} (Conv2dSame) was not used by the forward pass; "
                               f"cannot tell its input size")
        ih, iw = sizes[name]
        top, bottom = same_pad(ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        left, right = same_pad(iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        if top == bottom and left == right:
            new: nn.Module = _plain_conv(conv, (top, left))
        else:
            new = nn.Sequential(OrderedDict(
                pad=nn.ZeroPad2d((left, right, top, bottom)), conv=_plain_conv(conv, (0, 0)),
            ))
        new.train(conv.training)
        set_child(out, name, new)
    log.debug("static_padding: %d Conv2dSame layers fixed for %dx%d input", len(same), height, width)
    return out


def conv_of(module: nn.Module) -> nn.Conv2d | None:
    """The conv whose output ``module`` produces: a Conv2d, or the last Conv2d of a
    ``Sequential(pad, conv)`` made by :func:`static_padding`."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Conv2d):
        return module[-1]
    return None


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv -> BN at eval is conv with weight * g / sqrt(var + eps) per output channel and bias
    (b - mean) * g / sqrt(var + eps) + beta; computed in float64 so folding adds no error."""
    var = bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm2d folded into the conv before it.

    A BN is folded when it directly follows a conv inside an ``nn.Sequential`` (there the
    registration order is the data flow): every effnet BN sits in a ``ConvBnAct`` (conv, bn,
    act). The BN becomes ``nn.Identity`` and the conv gets a bias. BNs elsewhere (in a custom
    module's ``forward`` order is unknown), or without running statistics, are left in place
    and logged. Folding uses the running statistics, so the copy is for inference only.
    """
    out = copy.deepcopy(model).eval()
    folded = 0
    for parent in out.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (_, prev), (name, bn) in zip(children, children[1:]):
            conv = conv_of(prev)
            if (type(bn) is nn.BatchNorm2d and conv is not None and bn.track_running_stats
                    and bn.running_mean is not None and bn.num_features == conv.out_channels):
                _fold(conv, bn)
                setattr(parent, name, nn.Identity())
                folded += 1
    left = [name for name, m in out.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        log.info("fold_batchnorm: %d BatchNorm layers not after a conv in a Sequential, kept: %s",
                 len(left), ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""))
    log.debug("fold_batchnorm: folded %d BatchNorm layers", folded)
    return out

"""``efficientnet_pytorch`` (lukemelas/EfficientNet-PyTorch, "the classic port") state dicts
onto effnet, including its AdvProp weights and the EfficientNet-Lite fork's checkpoints.

The port keeps PyTorch layouts, so no tensor is transposed: only the names differ. Its names
(``efficientnet_pytorch/model.py``):

- stem ``_conv_stem`` + ``_bn0``; head ``_conv_head`` + ``_bn1``; classifier ``_fc``;
- blocks numbered *globally* (``_blocks.N``, N over all stages, not per stage), each with
  ``_expand_conv``/``_bn0`` (absent when the expansion is 1), ``_depthwise_conv``/``_bn1``,
  ``_se_reduce``/``_se_expand`` (1x1 convs with bias; absent in Lite), ``_project_conv``/``_bn2``.

Runtime details the weights need: the port pads like TF "SAME" (``Conv2dStaticSamePadding``,
asymmetric at stride 2; the weights are ports of the TF checkpoints) and uses BatchNorm eps 1e-3
(``batch_norm_epsilon``), recorded in the converted spec (``padding="same"``, ``bn_eps``).

The map is built by walking the effnet spec (:func:`effnet.weights.keymap.walk`) and checked for
coverage by :func:`effnet.weights.keymap.map_state_dict`: every source key used once, every effnet
tensor filled, every shape asserted.
"""

from __future__ import annotations

import torch

from effnet.specs.base import ModelSpec
from effnet.weights.keymap import Converted, Mapping, map_state_dict, put_torch_layer, target_shapes, walk
from effnet.weights.peers import HALF, PEERS, get_peer
from effnet.weights.torch_maps import num_classes

#: effnet block role -> (conv, BatchNorm) names inside ``_blocks.N``.
_BLOCK = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1"),
          "project": ("_project_conv", "_bn2"), "se_reduce": ("_se_reduce", None),
          "se_expand": ("_se_expand", None)}


def lukemelas_mapping(spec: ModelSpec) -> Mapping:
    """effnet key -> ``efficientnet_pytorch`` key for an MBConv-only spec (V1, Lite)."""
    ops = sorted({s.op for s in spec.stages} - {"mbconv"})
    if ops:
        raise ValueError(f"efficientnet_pytorch has only MBConv blocks, {spec.name} also has {ops}")
    # Global block index of each stage's first block: the port numbers blocks over all stages.
    first = [sum(s.repeats for s in spec.stages[:i]) for i in range(len(spec.stages))]
    m: Mapping = {}
    for layer in walk(spec):
        if layer.role == "stem":
            put_torch_layer(m, layer, "_conv_stem", "_bn0")
        elif layer.role == "head":
            put_torch_layer(m, layer, "_conv_head", "_bn1")
        elif layer.role == "classifier":
            put_torch_layer(m, layer, "_fc", None)
        else:
            conv, bn = _BLOCK[layer.role]
            pre = f"_blocks.{first[layer.stage] + layer.block}"
            put_torch_layer(m, layer, f"{pre}.{conv}", f"{pre}.{bn}" if bn else None)
    return m


def convert_lukemelas(state: dict[str, torch.Tensor], model: str, advprop: bool = False) -> Converted:
    """Convert an ``efficientnet_pytorch`` state dict (``model`` is its name, e.g.
    ``efficientnet-b3`` or the Lite fork's ``efficientnet-lite0``). ``advprop=True`` records the
    [-1, 1] input normalisation of the AdvProp checkpoints (the port's README: ``img * 2 - 1``)
    instead of ImageNet mean/std: the file cannot tell, so the user says so."""
    peer = get_peer("efficientnet_pytorch", model)
    pre = peer.preprocessing
    if advprop:
        if "lite" in model:
            raise ValueError(f"--advprop: there are no AdvProp weights of {model} (only efficientnet-b0..b8)")
        pre = type(pre)(**{**pre.to_dict(), "mean": HALF, "std": HALF})
    spec = peer.spec(num_classes(state, "_fc.weight"))
    hint = ""
    if "conv_stem.weight" in state:
        hint = "; the keys look like a timm state dict (--source timm)"
    elif "features.0.0.weight" in state:
        hint = "; the keys look like a torchvision state dict (--source torchvision)"
    try:
        out = map_state_dict(state, lukemelas_mapping(spec), spec, what=f"efficientnet_pytorch:{model}", hint=hint)
    except ValueError as e:
        # Which variant the file is costs a shape check per candidate: only worth it on failure.
        if "_conv_stem.weight" in state:
            raise ValueError(f"{e}; {_guess(state)}") from None
        raise
    source = f"efficientnet_pytorch:{model}" + (" (advprop)" if advprop else "")
    return Converted(out, spec, pre, source)


def _guess(state: dict[str, torch.Tensor]) -> str:
    """Name the variant whose shapes the file has, so a wrong ``--model`` says which is right."""
    blocks = {k.split(".")[1] for k in state if k.startswith("_blocks.")}
    for (source, name), peer in PEERS.items():
        if source != "efficientnet_pytorch":
            continue
        spec = peer.spec()
        if spec.num_blocks != len(blocks):
            continue
        shapes = target_shapes(spec)
        m = lukemelas_mapping(spec)
        if all(src is None or (src in state and tuple(state[src].shape) == shapes[k])
               for k, (src, _) in m.items() if not k.startswith("classifier")):
            return f"its shapes are those of {name} (--model {name})"
    return "no efficientnet_pytorch model has its shapes"

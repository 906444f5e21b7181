"""Convert a peer library's weight file into a self-describing effnet file.

This module only dispatches on the source; the key maps live beside it:

- :mod:`effnet.weights.keymap`: the walk over an effnet spec and the coverage check shared by
  every converter (every source tensor used once, every effnet tensor filled, shapes asserted);
- :mod:`effnet.weights.torch_maps`: torchvision and timm state dicts (PyTorch layouts);
- :mod:`effnet.weights.keras`: Keras ``.h5`` files (transposed kernels, in-model scaling);
- :mod:`effnet.weights.lukemelas_maps`: ``efficientnet_pytorch`` (the classic port, its Lite fork).

The converters' public names are re-exported here, where they lived before the split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from effnet.weights.classes import IMAGENET_NUM_CLASSES, imagenet_class_names
from effnet.weights.format import save_weights
from effnet.weights.keras import KerasLayer, convert_keras, keras_layers, read_keras_h5
from effnet.weights.keymap import (
    Converted,
    Layer,
    Mapping,
    Transform,
    map_state_dict,
    target_shapes,
    walk,
)
from effnet.weights.lukemelas_maps import convert_lukemelas, lukemelas_mapping
from effnet.weights.peers import get_peer
from effnet.weights.torch_maps import (
    convert_state_dict,
    read_torch_state_dict,
    timm_mapping,
    torchvision_mapping,
)

__all__ = [
    "Converted",
    "KerasLayer",
    "Layer",
    "Mapping",
    "Transform",
    "convert",
    "convert_file",
    "convert_keras",
    "convert_lukemelas",
    "convert_state_dict",
    "keras_layers",
    "lukemelas_mapping",
    "map_state_dict",
    "read_keras_h5",
    "read_torch_state_dict",
    "target_shapes",
    "timm_mapping",
    "torchvision_mapping",
    "walk",
]

log = logging.getLogger(__name__)


def convert_file(src: str | Path, source: str, model: str, advprop: bool = False) -> Converted:
    """Read and convert ``src`` (see :func:`convert`) without writing anything."""
    get_peer(source, model)  # fail on a bad name before reading a large file
    if advprop and source != "efficientnet_pytorch":
        raise ValueError(f"advprop: only efficientnet_pytorch AdvProp checkpoints need it, not {source}")
    if source == "keras":
        return convert_keras(src, model)
    if source == "efficientnet_pytorch":
        return convert_lukemelas(read_torch_state_dict(src), model, advprop=advprop)
    return convert_state_dict(read_torch_state_dict(src), source, model)


def convert(src: str | Path, out: str | Path, source: str, model: str, advprop: bool = False) -> Path:
    """Convert a peer's weight file into a self-describing effnet file.

    ``source`` is ``torchvision``, ``timm``, ``keras`` or ``efficientnet_pytorch``; ``model`` the
    peer's own model name (``efficientnet_b3``, ``tf_efficientnetv2_m``, ``EfficientNetV2S``,
    ``efficientnet-b3``, ``efficientnet-lite0`` ...). ``advprop``: the efficientnet_pytorch file
    holds AdvProp weights (inputs in [-1, 1]). Returns ``out``.
    """
    c = convert_file(src, source, model, advprop=advprop)
    # Every peer checkpoint with a 1000-way classifier is an ImageNet-1k one: record the names so
    # that predictions print "espresso", not "967". A fine-tuned head's names are unknown here.
    names = imagenet_class_names() if c.spec.num_classes == IMAGENET_NUM_CLASSES else None
    path = save_weights(c.state_dict, out, spec=c.spec, preprocessing=c.preprocessing, source=c.source,
                        class_names=names)
    log.info("converted %s (%s) -> %s", src, c.source, path)
    return path

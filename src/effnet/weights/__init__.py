"""Models with weights: ``create_model`` (a registered name, optionally with a weight file or the
published weights) and ``load_model`` (a self-describing file alone).

Beside it: ``format`` (the safetensors file and its metadata), ``hub`` (the cache of published
weights), ``download`` (fetch and convert on a cache miss) and ``converters`` (torchvision, timm,
Keras and efficientnet_pytorch key maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet import registry
from effnet.lazy import lazy_attributes
from effnet.model import ConvNet, build
from effnet.preprocessing import PreprocessedModel, Preprocessing
from effnet.weights import hub
from effnet.weights.format import (
    WeightFile,
    check_state_dict,
    nonfinite_tensors,
    read_weights,
    save_weights,
)
from effnet.weights.hub import PRETRAINED, cache_dir, fetch_pretrained

__all__ = [
    "PRETRAINED",
    "Preprocessing",
    "PreprocessedModel",
    "WeightFile",
    "cache_dir",
    "check_state_dict",
    "convert",
    "create_model",
    "fetch_pretrained",
    "list_peers",
    "load_model",
    "model_from_weights",
    "read_weights",
    "save_weights",
]


#: Loaded on first use: the converters (key maps of torchvision, timm, Keras and
#: efficientnet_pytorch) and the peer tables, which loading a model from an effnet file never needs.
__getattr__, __dir__ = lazy_attributes(__name__, {"convert": "effnet.weights.converters",
                                            "list_peers": "effnet.weights.peers"}, globals())


def model_from_weights(
    wf: WeightFile, *, what: str, num_classes: int | None = None, **spec_changes: Any
) -> ConvNet:
    """The architecture a weight file records (with ``spec_changes``), its tensors loaded and
    checked (``what`` names the file in errors), and its preprocessing, source and class names
    attached as attributes. A ``num_classes`` other than the file's gets a new head."""
    model = build(wf.spec.replace(**spec_changes) if spec_changes else wf.spec)
    check_state_dict(model, wf.state_dict, what=what)
    bad = nonfinite_tensors(wf.state_dict)
    if bad:
        # A diverged run's weights give NaN for every image: refuse rather than predict nonsense.
        raise ValueError(f"{what}: {len(bad)} tensor(s) hold NaN or inf values (first: {', '.join(bad[:3])}); "
                         f"the weights come from a diverged run: use an earlier checkpoint")
    model.load_state_dict(wf.state_dict)
    class_names = wf.class_names
    if num_classes is not None and num_classes != wf.spec.num_classes:
        model.reset_classifier(num_classes)
        class_names = None  # the file's names belong to the replaced head
    model.preprocessing = wf.preprocessing  # type: ignore[assignment]
    model.class_names = class_names  # type: ignore[assignment]
    model.source = wf.source  # type: ignore[assignment]
    return model


def load_model(
    path: str | Path, include_preprocessing: bool = False, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """A ready model (eval mode) from a self-describing weight file alone.

    The returned model takes normalised input, as torchvision/timm models do; with
    ``include_preprocessing=True`` it takes raw RGB pixels (float 0-255, NCHW) instead.
    The file's spec, preprocessing, source and class names are attached as attributes.
    """
    wf = read_weights(path)
    model = model_from_weights(wf, what=f"weights in {path}").to(map_location).eval()
    if include_preprocessing:
        return PreprocessedModel(model, wf.preprocessing).to(map_location).eval()
    return model


#: Spec fields that decide tensor shapes or the layers present: a weight file must agree with
#: the named model on these (a stem pool has no tensors, but a file for a ResNet stem must not
#: load into a 3x3 stem that happens to have the same channel counts).
_SHAPE_FIELDS = ("stages", "stem_channels", "stem_kernel", "stem_pool", "head_channels", "in_channels")


def create_model(
    name: str, num_classes: int = 1000, *, weights: str | Path | None = None, pretrained: bool = False,
    **overrides: Any,
) -> ConvNet:
    """Build a registered model by name (``effnet.create_model``), optionally with weights.

    ``overrides`` are spec fields, checked once by :func:`effnet.registry.resolve`
    (``width``/``depth`` are refused). ``weights`` is a self-describing weight file that must fit
    the named architecture; ``pretrained`` uses the registry entry's published weights
    (downloaded and converted once, then read from the cache). Without either, random weights.

    The runtime details recorded in a weight file (BatchNorm eps, TF "same" padding, activation)
    are kept, since the weights only reproduce their outputs with them; the layer shapes must be
    those of ``name``. A classifier of a different size than ``num_classes`` is replaced by a new
    head (fine-tuning).
    """
    entry = registry.resolve(name, num_classes, **overrides)
    if weights is None and not pretrained:
        return build(entry.spec)
    if weights is None:
        weights = hub.pretrained_file(entry)
    wf = read_weights(weights)
    differ = [f for f in _SHAPE_FIELDS if getattr(wf.spec, f) != getattr(entry.spec, f)]
    if differ:
        raise ValueError(
            f"weights {weights} are for {wf.spec.name!r} ({wf.source or 'unknown source'}), whose "
            f"{', '.join(differ)} differ from {name!r}: expected weights converted for {name}, or "
            f"load the file as it is with effnet.load_model({str(weights)!r})"
        )
    return model_from_weights(wf, what=f"weights {weights} for {name}", num_classes=num_classes,
                              name=name, **overrides)

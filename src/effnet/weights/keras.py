"""Keras ``EfficientNet*`` weight files onto effnet: the h5 reader, the Keras layer walk, and
the input scaling Keras keeps inside the model.

The key map is built by walking the effnet spec (:func:`effnet.weights.keymap.walk`) and
checked for coverage by :func:`effnet.weights.keymap.map_state_dict`. Transposes, since TF
orders kernel axes differently from PyTorch:

- conv kernels: TF stores (kh, kw, in, out), PyTorch (out, in, kh, kw)  -> permute(3, 2, 0, 1)
- depthwise kernels: TF (kh, kw, channels, multiplier=1), PyTorch (channels, 1, kh, kw)
  -> permute(2, 3, 0, 1)
- dense kernels: TF (in, out), PyTorch Linear (out, in) -> transpose

h5py is imported only when a file is read: it is an optional dependency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from effnet.preprocessing import IMAGENET_STD, Preprocessing
from effnet.specs.base import ModelSpec
from effnet.weights.keymap import Converted, Mapping, identity, map_state_dict, walk
from effnet.weights.peers import PeerModel, get_peer

log = logging.getLogger(__name__)


def _tf_conv(t: torch.Tensor) -> torch.Tensor:
    return t.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _tf_depthwise(t: torch.Tensor) -> torch.Tensor:
    return t.permute(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)


def _tf_dense(t: torch.Tensor) -> torch.Tensor:
    return t.t()  # (in, out) -> (out, in)


@dataclass(frozen=True)
class KerasLayer:
    """A Keras layer with weights: its name and class (Keras 3 files key groups by class)."""

    name: str
    cls: str  # snake-case class name as Keras 3 writes it: conv2d, batch_normalization ...


def keras_layers(spec: ModelSpec, v2: bool) -> tuple[list[KerasLayer], Mapping]:
    """Keras layers with weights in model order, and effnet key -> ``"layer/var_index"``.

    Variable order per class: Conv2D (kernel, [bias]); DepthwiseConv2D (kernel);
    BatchNormalization (gamma, beta, moving_mean, moving_variance); Dense (kernel, bias).
    """
    layers: list[KerasLayer] = []
    m: Mapping = {}

    def convbn(target: str, conv: str, bn: str, depthwise: bool = False) -> None:
        layers.append(KerasLayer(conv, "depthwise_conv2d" if depthwise else "conv2d"))
        layers.append(KerasLayer(bn, "batch_normalization"))
        m[f"{target}.conv.weight"] = (f"{conv}/0", _tf_depthwise if depthwise else _tf_conv)
        for i, ours in enumerate(("weight", "bias", "running_mean", "running_var")):
            m[f"{target}.bn.{ours}"] = (f"{bn}/{i}", identity)
        # Keras keeps no batch counter; effnet's buffer starts at zero (it only matters when
        # BatchNorm momentum is None, which effnet never uses).
        m[f"{target}.bn.num_batches_tracked"] = (None, identity)

    for layer in walk(spec):
        pre = f"block{layer.stage + 1}{chr(ord('a') + layer.block)}_"
        if layer.role == "stem":
            convbn("stem", "stem_conv", "stem_bn")
        elif layer.role == "head":
            convbn("head", "top_conv", "top_bn")
        elif layer.role == "classifier":
            layers.append(KerasLayer("predictions", "dense"))
            m["classifier.weight"] = ("predictions/0", _tf_dense)
            m["classifier.bias"] = ("predictions/1", identity)
        elif layer.role in ("se_reduce", "se_expand"):
            name = f"{pre}{layer.role}"
            layers.append(KerasLayer(name, "conv2d"))
            m[f"{layer.target}.weight"] = (f"{name}/0", _tf_conv)
            m[f"{layer.target}.bias"] = (f"{name}/1", identity)
        elif layer.role == "expand":
            convbn(layer.target, f"{pre}expand_conv", f"{pre}expand_bn")
        elif layer.role == "dw":
            convbn(layer.target, f"{pre}dwconv2" if v2 else f"{pre}dwconv", f"{pre}bn", depthwise=True)
        else:  # project, single (Keras calls the lone conv of a fused block "project_conv")
            convbn(layer.target, f"{pre}project_conv", f"{pre}project_bn")
    return layers, m


def _array(dataset: object) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(dataset[()]))  # type: ignore[index]


def read_keras_h5(path: Path) -> tuple[dict[str, list[torch.Tensor]], bool]:
    """Weight arrays per layer group of a Keras ``.weights.h5`` (Keras 3) or legacy ``.h5``.

    Returns ``(groups, by_name)``: legacy files key groups by layer name; Keras 3 files by
    class name plus a counter in model order (``conv2d``, ``conv2d_1`` ...).
    """
    try:
        import h5py
    except ImportError:
        raise ValueError("reading Keras .h5 files needs h5py: pip install h5py") from None
    groups: dict[str, list[torch.Tensor]] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            if "layer_names" in root.attrs:  # legacy (tf.keras) layout
                for lname in root.attrs["layer_names"]:
                    lname = lname.decode() if isinstance(lname, bytes) else str(lname)
                    g = root[lname]
                    names = [n.decode() if isinstance(n, bytes) else str(n)
                             for n in g.attrs.get("weight_names", [])]
                    if names:
                        groups[lname] = [_array(g[n]) for n in names]
                return groups, True
            if "layers" not in root:
                raise ValueError(f"{path}: no 'layers' group and no 'layer_names' attribute")
            for lname, g in root["layers"].items():
                if "vars" in g and len(g["vars"]):
                    v = g["vars"]
                    groups[lname] = [_array(v[str(i)]) for i in range(len(v))]
            return groups, False
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {e}") from e


def _keras_preprocessing(
    peer: PeerModel, groups: dict[str, list[torch.Tensor]], norm_group: str | None,
    imagenet_stddev_fix: bool | None,
) -> tuple[Preprocessing, list[str]]:
    """Fold Keras's Rescaling + Normalization layers into a :class:`Preprocessing`.

    Keras V1: ``Rescaling(1/255)`` then ``Normalization`` ``(x - mean) / sqrt(variance)``.
    The published ImageNet files store the *std* in ``variance``, and Keras models built for
    them add ``Rescaling(1/sqrt(std))`` (Keras's own EfficientNet builders do this), so that the
    total divisor is the std itself. ``imagenet_stddev_fix=None`` detects this case by the
    stored variance equalling the ImageNet std.
    """
    pre = peer.preprocessing
    if norm_group is None or norm_group not in groups:
        return pre, []
    mean, var = groups[norm_group][0].double().flatten(), groups[norm_group][1].double().flatten()
    if imagenet_stddev_fix is None:
        imagenet_stddev_fix = torch.allclose(var, torch.tensor(IMAGENET_STD, dtype=var.dtype), atol=1e-6)
        if imagenet_stddev_fix:
            log.info("Keras Normalization variance equals the ImageNet std: applying the "
                     "extra 1/sqrt(std) rescaling of Keras's ImageNet models")
    std = var if imagenet_stddev_fix else var.clamp_min(0).sqrt()
    pre = Preprocessing(resolution=pre.resolution, crop_pct=pre.crop_pct,
                        interpolation=pre.interpolation, mean=tuple(mean.tolist()),
                        std=tuple(std.clamp_min(1e-7).tolist()), scale=pre.scale)
    return pre, [f"{norm_group}/{i}" for i in range(len(groups[norm_group]))]


def convert_keras(
    path: str | Path, model: str, imagenet_stddev_fix: bool | None = None,
) -> Converted:
    """Convert a Keras ``EfficientNet*`` weight file (Keras 3 ``.weights.h5`` or legacy ``.h5``)."""
    peer = get_peer("keras", model)
    groups, by_name = read_keras_h5(Path(path))
    v2 = model.startswith("EfficientNetV2")
    dense = (groups.get("predictions") if by_name else groups.get("dense")) or []
    if not dense:
        raise ValueError(f"{path}: no classification head ('predictions' layer); convert a model "
                         f"saved with include_top=True")
    spec = peer.spec(int(dense[0].shape[1]))  # TF dense kernel is (in, out)
    layers, mapping = keras_layers(spec, v2=v2)
    if by_name:
        rename = {k.name: k.name for k in layers}
        norm = next((g for g in groups if g.startswith("normalization")), None)
    else:
        # Keras 3 names each group after the layer's class with a running counter.
        counts: dict[str, int] = {}
        rename = {}
        for k in layers:
            n = counts.get(k.cls, 0)
            counts[k.cls] = n + 1
            rename[k.name] = k.cls if n == 0 else f"{k.cls}_{n}"
        norm = "normalization" if "normalization" in groups else None
    flat = {f"{g}/{i}": t for g, ts in groups.items() for i, t in enumerate(ts)}
    mapping = {key: (None if src is None else f"{rename[src.split('/')[0]]}/{src.split('/')[1]}", fn)
               for key, (src, fn) in mapping.items()}
    pre, consumed = _keras_preprocessing(peer, groups, norm, imagenet_stddev_fix)
    out = map_state_dict(flat, mapping, spec, what=f"keras:{model} ({path})", consumed=consumed)
    return Converted(out, spec, pre, f"keras:{model}")

"""torchvision and timm state dicts onto effnet: explicit key maps and safe file reading.

Both libraries use PyTorch's tensor layouts, so no tensor is transposed: only the names differ.
The maps are built by walking the effnet spec (:func:`effnet.weights.keymap.walk`) and checked
for coverage by :func:`effnet.weights.keymap.map_state_dict`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from effnet.specs.base import ModelSpec
from effnet.weights.format import is_safetensors, sniff
from effnet.weights.keymap import Converted, Mapping, map_state_dict, put_torch_layer, walk
from effnet.weights.peers import get_peer

log = logging.getLogger(__name__)

def torchvision_mapping(spec: ModelSpec) -> Mapping:
    """effnet key -> torchvision key. torchvision numbers the layers inside ``block`` in
    order (the SE module counts as one), stage ``i`` is ``features[i + 1]``."""
    m: Mapping = {}
    index: dict[tuple[int, int], int] = {}
    for layer in walk(spec):
        if layer.role == "stem":
            put_torch_layer(m, layer, "features.0.0", "features.0.1")
        elif layer.role == "head":
            n = len(spec.stages) + 1
            put_torch_layer(m, layer, f"features.{n}.0", f"features.{n}.1")
        elif layer.role == "classifier":
            put_torch_layer(m, layer, "classifier.1")  # classifier.0 is the Dropout
        else:
            key = (layer.stage, layer.block)
            k = index.get(key, 0)
            pre = f"features.{layer.stage + 1}.{layer.block}.block.{k}"
            if layer.role == "se_reduce":
                put_torch_layer(m, layer, f"{pre}.fc1")
            elif layer.role == "se_expand":
                put_torch_layer(m, layer, f"{pre}.fc2")
            else:
                put_torch_layer(m, layer, f"{pre}.0", f"{pre}.1")
            if layer.role != "se_reduce":  # fc1 and fc2 share one index
                index[key] = k + 1
    return m


# timm names per block type: role -> (conv, bn).
_TIMM_BLOCKS: dict[tuple[str, bool], dict[str, tuple[str, str | None]]] = {
    # InvertedResidual
    ("mbconv", True): {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"),
                       "project": ("conv_pwl", "bn3")},
    # DepthwiseSeparableConv (MBConv with expansion 1): its projection is called conv_pw
    ("mbconv", False): {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")},
    # EdgeResidual
    ("fused", True): {"expand": ("conv_exp", "bn1"), "project": ("conv_pwl", "bn2")},
    # ConvBnAct ("cn" blocks of the V2 first stage)
    ("fused", False): {"single": ("conv", "bn1")},
}


def timm_mapping(spec: ModelSpec) -> Mapping:
    """effnet key -> timm key (``conv_stem``/``bn1``, ``blocks.i.j.*``, ``conv_head``/``bn2``)."""
    m: Mapping = {}
    for layer in walk(spec):
        if layer.role == "stem":
            put_torch_layer(m, layer, "conv_stem", "bn1")
        elif layer.role == "head":
            put_torch_layer(m, layer, "conv_head", "bn2")
        elif layer.role == "classifier":
            put_torch_layer(m, layer, "classifier")
        else:
            pre = f"blocks.{layer.stage}.{layer.block}"
            if layer.role in ("se_reduce", "se_expand"):
                put_torch_layer(m, layer, f"{pre}.se.conv_{layer.role[3:]}")
            else:
                conv, bn = _TIMM_BLOCKS[(layer.op, layer.expand)][layer.role]
                put_torch_layer(m, layer, f"{pre}.{conv}", f"{pre}.{bn}")
    return m


def convert_state_dict(
    state: dict[str, torch.Tensor], source: str, model: str,
) -> Converted:
    """Convert a torchvision or timm state dict (tensors may live on the meta device)."""
    peer = get_peer(source, model)
    if source == "keras":
        raise ValueError("Keras weights are .h5 files: use convert_keras(path, model) instead")
    cls_key = "classifier.1.weight" if source == "torchvision" else "classifier.weight"
    spec = peer.spec(num_classes(state, cls_key))
    mapping = torchvision_mapping(spec) if source == "torchvision" else timm_mapping(spec)
    out = map_state_dict(state, mapping, spec, what=f"{source}:{model}", hint=_layout_hint(state))
    return Converted(out, spec, peer.preprocessing, f"{source}:{model}")


def num_classes(state: dict[str, torch.Tensor], key: str) -> int | None:
    """The classifier's output size read from ``state[key]`` (a Linear weight is (out, in)), or
    None when absent: the converters of every peer use it so that fine-tuned heads convert."""
    t = state.get(key)
    return int(t.shape[0]) if t is not None and t.ndim == 2 else None


def _layout_hint(source: dict[str, torch.Tensor]) -> str:
    """Name the library whose key layout ``source`` has, when it is recognisable."""
    if "conv_stem.weight" in source:
        return "; the keys look like a timm state dict"
    if "features.0.0.weight" in source:
        return "; the keys look like a torchvision state dict"
    return ""


# --- reading PyTorch-side files safely ---------------------------------------------------------
def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.pth/.pt/.bin``), never
    unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    # By content, not name: a safetensors file saved as .pth (or a torch file as .safetensors)
    # would otherwise reach the wrong reader and its raw error.
    if is_safetensors(path) or (path.suffix == ".safetensors" and sniff(path) is None):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refusing to unpickle it (only tensors and plain containers are loaded, "
            f"weights_only=True): {e}. Re-save the state dict with torch.save(model.state_dict())"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {e}") from e
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints nest the weights (``state_dict``/``model``/``state_dict_ema``) and
    DDP prefixes keys with ``module.``; accept those, refuse anything else."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                log.info("%s: using the nested %r entry", path, key)
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)

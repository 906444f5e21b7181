"""Explicit key mapping from torchvision / timm / Keras weights onto effnet modules.

Each converter walks the effnet spec block by block and names, for every effnet layer, the
source layer it comes from. :func:`map_state_dict` then checks coverage: every source tensor
is used exactly once, every effnet parameter and buffer is filled, and every shape matches.

Transposes (Keras only; PyTorch sources share effnet's layouts):

- conv kernels: TF stores (kh, kw, in, out), PyTorch (out, in, kh, kw)  -> permute(3, 2, 0, 1)
- depthwise kernels: TF (kh, kw, channels, multiplier=1), PyTorch (channels, 1, kh, kw)
  -> permute(2, 3, 0, 1)
- dense kernels: TF (in, out), PyTorch Linear (out, in) -> transpose
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from effnet.model import build
from effnet.preprocessing import IMAGENET_STD, Preprocessing
from effnet.specs.base import ModelSpec
from effnet.weights.format import describe_mismatches, save_weights
from effnet.weights.peers import PeerModel, get_peer

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _tf_conv(t: torch.Tensor) -> torch.Tensor:
    return t.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _tf_depthwise(t: torch.Tensor) -> torch.Tensor:
    return t.permute(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)


def _tf_dense(t: torch.Tensor) -> torch.Tensor:
    return t.t()  # (in, out) -> (out, in)


# --- walking the effnet architecture ------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One effnet layer with weights, in execution order.

    ``role`` says what it is inside its block (``expand``, ``dw``, ``se_reduce``, ``se_expand``,
    ``project``, ``single`` = the lone kxk conv of a Fused-MBConv with expansion 1), or
    ``stem``/``head``/``classifier``; ``kind`` how its tensors are laid out: ``convbn``
    (ConvBnAct), ``conv_bias`` (SE convs) or ``linear``.
    """

    target: str
    role: str
    kind: str
    stage: int = -1
    block: int = -1
    op: str = ""
    expand: bool = False


def walk(spec: ModelSpec) -> Iterator[Layer]:
    """Every weight-carrying effnet layer of ``spec`` in execution order."""
    yield Layer("stem", "stem", "convbn")
    for s, stage in enumerate(spec.stages):
        for j in range(stage.repeats):
            pre = f"stages.{s}.{j}"
            ctx = dict(stage=s, block=j, op=stage.op, expand=stage.expand != 1)
            se = [Layer(f"{pre}.se.reduce", "se_reduce", "conv_bias", **ctx),
                  Layer(f"{pre}.se.expand", "se_expand", "conv_bias", **ctx)] if stage.se > 0 else []
            if stage.op == "mbconv":
                if stage.expand != 1:
                    yield Layer(f"{pre}.conv_pw", "expand", "convbn", **ctx)
                yield Layer(f"{pre}.conv_dw", "dw", "convbn", **ctx)
                yield from se
                yield Layer(f"{pre}.conv_pwl", "project", "convbn", **ctx)
            elif stage.expand != 1:
                yield Layer(f"{pre}.conv_exp", "expand", "convbn", **ctx)
                yield from se
                yield Layer(f"{pre}.conv_pwl", "project", "convbn", **ctx)
            else:
                yield Layer(f"{pre}.conv_exp", "single", "convbn", **ctx)
    yield Layer("head", "head", "convbn")
    yield Layer("classifier", "classifier", "linear")


# --- torchvision and timm: PyTorch layouts, only the names differ -------------------------
_BN = (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"),
       ("running_var", "running_var"), ("num_batches_tracked", "num_batches_tracked"))

Mapping = dict[str, tuple[str | None, Transform]]  # effnet key -> (source key or None, transform)


def _torch_layer(m: Mapping, layer: Layer, conv: str, bn: str | None = None) -> None:
    if layer.kind == "convbn":
        m[f"{layer.target}.conv.weight"] = (f"{conv}.weight", _same)
        for ours, theirs in _BN:
            m[f"{layer.target}.bn.{ours}"] = (f"{bn}.{theirs}", _same)
    else:  # conv_bias / linear
        m[f"{layer.target}.weight"] = (f"{conv}.weight", _same)
        m[f"{layer.target}.bias"] = (f"{conv}.bias", _same)


def torchvision_mapping(spec: ModelSpec) -> Mapping:
    """effnet key -> torchvision key. torchvision numbers the layers inside ``block`` in
    order (the SE module counts as one), stage ``i`` is ``features[i + 1]``."""
    m: Mapping = {}
    index: dict[tuple[int, int], int] = {}
    for layer in walk(spec):
        if layer.role == "stem":
            _torch_layer(m, layer, "features.0.0", "features.0.1")
        elif layer.role == "head":
            n = len(spec.stages) + 1
            _torch_layer(m, layer, f"features.{n}.0", f"features.{n}.1")
        elif layer.role == "classifier":
            _torch_layer(m, layer, "classifier.1")  # classifier.0 is the Dropout
        else:
            key = (layer.stage, layer.block)
            k = index.get(key, 0)
            pre = f"features.{layer.stage + 1}.{layer.block}.block.{k}"
            if layer.role == "se_reduce":
                _torch_layer(m, layer, f"{pre}.fc1")
            elif layer.role == "se_expand":
                _torch_layer(m, layer, f"{pre}.fc2")
            else:
                _torch_layer(m, layer, f"{pre}.0", f"{pre}.1")
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
            _torch_layer(m, layer, "conv_stem", "bn1")
        elif layer.role == "head":
            _torch_layer(m, layer, "conv_head", "bn2")
        elif layer.role == "classifier":
            _torch_layer(m, layer, "classifier")
        else:
            pre = f"blocks.{layer.stage}.{layer.block}"
            if layer.role in ("se_reduce", "se_expand"):
                _torch_layer(m, layer, f"{pre}.se.conv_{layer.role[3:]}")
            else:
                conv, bn = _TIMM_BLOCKS[(layer.op, layer.expand)][layer.role]
                _torch_layer(m, layer, f"{pre}.{conv}", f"{pre}.{bn}")
    return m


# --- Keras -----------------------------------------------------------------------------------
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
            m[f"{target}.bn.{ours}"] = (f"{bn}/{i}", _same)
        # Keras keeps no batch counter; effnet's buffer starts at zero (it only matters when
        # BatchNorm momentum is None, which effnet never uses).
        m[f"{target}.bn.num_batches_tracked"] = (None, _same)

    for layer in walk(spec):
        pre = f"block{layer.stage + 1}{chr(ord('a') + layer.block)}_"
        if layer.role == "stem":
            convbn("stem", "stem_conv", "stem_bn")
        elif layer.role == "head":
            convbn("head", "top_conv", "top_bn")
        elif layer.role == "classifier":
            layers.append(KerasLayer("predictions", "dense"))
            m["classifier.weight"] = ("predictions/0", _tf_dense)
            m["classifier.bias"] = ("predictions/1", _same)
        elif layer.role in ("se_reduce", "se_expand"):
            name = f"{pre}{layer.role}"
            layers.append(KerasLayer(name, "conv2d"))
            m[f"{layer.target}.weight"] = (f"{name}/0", _tf_conv)
            m[f"{layer.target}.bias"] = (f"{name}/1", _same)
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
    them add ``Rescaling(1/sqrt(std))`` (keras-team/keras issue, tensorflow#49930), so that the
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


# --- coverage-checked mapping ----------------------------------------------------------------
def target_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every effnet state-dict key and shape for ``spec``, built on the meta device (no memory,
    no initialisation time, so even L2 / V2-XL are instant)."""
    with torch.device("meta"):
        model = build(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def map_state_dict(
    source: dict[str, torch.Tensor], mapping: Mapping, spec: ModelSpec, what: str,
    consumed: list[str] | tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Apply ``mapping`` with full coverage checks (see the module docstring).

    ``consumed`` lists source keys used elsewhere (e.g. folded into the preprocessing).
    """
    shapes = target_shapes(spec)
    missing_targets = [k for k in shapes if k not in mapping]
    extra_targets = [k for k in mapping if k not in shapes]
    if missing_targets or extra_targets:  # a bug in a mapping, not in the user's file
        raise RuntimeError(f"{what}: mapping does not cover the effnet model: unmapped "
                           f"{missing_targets[:5]}, unknown {extra_targets[:5]}")
    used: dict[str, str] = {}
    missing, mismatched = [], []
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        src, transform = mapping[key]
        if src is None:  # a buffer the source format does not keep (see keras_layers)
            out[key] = torch.zeros(shape, dtype=torch.long, device=_device(source))
            continue
        if src in used:
            raise RuntimeError(f"{what}: source key {src} mapped twice ({used[src]}, {key})")
        used[src] = key
        if src not in source:
            missing.append(src)
            continue
        value = transform(source[src])
        if tuple(value.shape) != shape:
            mismatched.append(f"{src} {tuple(source[src].shape)} -> {key} expects {shape}")
            continue
        out[key] = value.contiguous() if value.device.type != "meta" else value
    unused = [k for k in source if k not in used and k not in consumed]
    report = describe_mismatches([("expected key(s) missing", missing),
                                  ("shape mismatch(es)", mismatched), ("key(s) not used", unused)])
    if report:
        raise ValueError(
            f"{what}: the file does not fit {spec.name}: {report}. Check --source and --model "
            f"(the peer's own model name){_layout_hint(source)}"
        )
    return out


def _layout_hint(source: dict[str, torch.Tensor]) -> str:
    """Name the library whose key layout ``source`` has, when it is recognisable."""
    if "conv_stem.weight" in source:
        return "; the keys look like a timm state dict"
    if "features.0.0.weight" in source:
        return "; the keys look like a torchvision state dict"
    return ""


def _device(source: dict[str, torch.Tensor]) -> torch.device:
    first = next(iter(source.values()), None)
    return first.device if first is not None else torch.device("cpu")


def _num_classes(source: dict[str, torch.Tensor], key: str, axis: int) -> int | None:
    t = source.get(key)
    return int(t.shape[axis]) if t is not None and t.ndim == 2 else None


@dataclass
class Converted:
    """Result of a conversion: effnet state dict, the spec it fits, preprocessing, source."""

    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    preprocessing: Preprocessing
    source: str


def convert_state_dict(
    state: dict[str, torch.Tensor], source: str, model: str,
) -> Converted:
    """Convert a torchvision or timm state dict (tensors may live on the meta device)."""
    peer = get_peer(source, model)
    if source == "keras":
        raise ValueError("Keras weights are .h5 files: use convert_keras(path, model) instead")
    cls_key = "classifier.1.weight" if source == "torchvision" else "classifier.weight"
    spec = peer.spec(_num_classes(state, cls_key, 0))
    mapping = torchvision_mapping(spec) if source == "torchvision" else timm_mapping(spec)
    out = map_state_dict(state, mapping, spec, what=f"{source}:{model}")
    return Converted(out, spec, peer.preprocessing, f"{source}:{model}")


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
    spec = peer.spec(int(dense[0].shape[1]))
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


# --- reading PyTorch-side files safely ---------------------------------------------------------
def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.pth/.pt/.bin``), never
    unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path}: refusing to unpickle it (only tensors and plain containers are loaded, "
                f"weights_only=True): {e}. Re-save the state dict with torch.save(model.state_dict())"
            ) from e
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {e}") from e
        state = _unwrap(obj, path)
    return state


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


def convert_file(src: str | Path, source: str, model: str) -> Converted:
    """Read and convert ``src`` (see :func:`convert`) without writing anything."""
    get_peer(source, model)  # fail on a bad name before reading a large file
    if source == "keras":
        return convert_keras(src, model)
    return convert_state_dict(read_torch_state_dict(src), source, model)


def convert(src: str | Path, out: str | Path, source: str, model: str) -> Path:
    """Convert a peer's weight file into a self-describing effnet file.

    ``source`` is ``torchvision``, ``timm`` or ``keras``; ``model`` the peer's own model name
    (``efficientnet_b3``, ``tf_efficientnetv2_m``, ``EfficientNetV2S`` ...). Returns ``out``.
    """
    c = convert_file(src, source, model)
    path = save_weights(c.state_dict, out, spec=c.spec, preprocessing=c.preprocessing, source=c.source)
    log.info("converted %s (%s) -> %s", src, c.source, path)
    return path

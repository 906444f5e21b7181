"""What every weight converter shares: the walk over an effnet spec and the coverage check.

A converter (:mod:`effnet.weights.torch_maps` for torchvision / timm, :mod:`effnet.weights.keras`
for Keras) walks the effnet spec layer by layer with :func:`walk` and names, for every effnet
tensor, the source tensor it comes from and the transform to apply (a :data:`Mapping`).
:func:`map_state_dict` then applies the mapping and checks coverage (docs/style.md, point 8):

- every effnet parameter and buffer is filled,
- every source tensor is used exactly once (or named in ``consumed``),
- every shape matches after the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from effnet.model import build
from effnet.preprocessing import Preprocessing
from effnet.specs.base import ModelSpec
from effnet.weights.format import describe_mismatches

Transform = Callable[[torch.Tensor], torch.Tensor]
#: effnet key -> (source key, transform); a ``None`` source is a buffer the source format does
#: not keep, filled with zeros (Keras has no ``num_batches_tracked``).
Mapping = dict[str, tuple[str | None, Transform]]


def identity(t: torch.Tensor) -> torch.Tensor:
    """The transform of tensors whose layout already is PyTorch's."""
    return t


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


#: BatchNorm tensor names, the same in effnet and every PyTorch-layout source.
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def put_torch_layer(m: Mapping, layer: Layer, conv: str, bn: str | None = None) -> None:
    """Map ``layer`` from a PyTorch-layout source (torchvision, timm, efficientnet_pytorch): only
    names differ. ``conv``/``bn`` are the source's module names (``bn`` for ``convbn`` layers)."""
    if layer.kind == "convbn":
        m[f"{layer.target}.conv.weight"] = (f"{conv}.weight", identity)
        for t in _BN:
            m[f"{layer.target}.bn.{t}"] = (f"{bn}.{t}", identity)
    else:  # conv_bias (SE) / linear (classifier)
        m[f"{layer.target}.weight"] = (f"{conv}.weight", identity)
        m[f"{layer.target}.bias"] = (f"{conv}.bias", identity)


def target_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every effnet state-dict key and shape for ``spec``, built on the meta device (no memory,
    no initialisation time, so even L2 / V2-XL are instant)."""
    with torch.device("meta"):
        model = build(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def map_state_dict(
    source: dict[str, torch.Tensor], mapping: Mapping, spec: ModelSpec, what: str,
    consumed: list[str] | tuple[str, ...] = (), hint: str = "",
) -> dict[str, torch.Tensor]:
    """Apply ``mapping`` with full coverage checks (see the module docstring).

    ``consumed`` lists source keys used elsewhere (e.g. folded into the preprocessing); ``hint``
    is appended to the error for a file that does not fit (e.g. which library's layout it has).
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
        if src is None:
            out[key] = torch.zeros(shape, dtype=torch.long, device=_device(source))
            continue
        if src in used:  # also a mapping bug: two effnet tensors would share one source tensor
            raise RuntimeError(f"{what}: source key {src} mapped twice ({used[src]}, {key})")
        used[src] = key
        if src not in source:
            missing.append(src)
            continue
        value = transform(source[src])
        if tuple(value.shape) != shape:
            mismatched.append(f"{src} {tuple(source[src].shape)} -> {key} expects {shape}")
            continue
        # Transposed views become contiguous so the result saves and loads as plain tensors;
        # meta tensors (shape-only checks of huge models) have no data to copy.
        out[key] = value.contiguous() if value.device.type != "meta" else value
    unused = [k for k in source if k not in used and k not in consumed]
    report = describe_mismatches([("expected key(s) missing", missing),
                                  ("shape mismatch(es)", mismatched), ("key(s) not used", unused)])
    if report:
        raise ValueError(
            f"{what}: the file does not fit {spec.name}: {report}. Check --source and --model "
            f"(the peer's own model name){hint}"
        )
    return out


def _device(source: dict[str, torch.Tensor]) -> torch.device:
    first = next(iter(source.values()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass
class Converted:
    """Result of a conversion: effnet state dict, the spec it fits, preprocessing, source."""

    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    preprocessing: Preprocessing
    source: str

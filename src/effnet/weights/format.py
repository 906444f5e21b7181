"""Self-describing weight files: safetensors + metadata (spec, preprocessing, source).

Layout of the safetensors metadata (all values are strings, as safetensors requires):

- ``format``: ``"effnet"``; ``format_version``: ``"1"``
- ``spec``: the :class:`~effnet.specs.ModelSpec` as JSON
- ``preprocessing``: a :class:`Preprocessing` as JSON
- ``source``: where the weights came from (``"torchvision:efficientnet_b0"``, ``"effnet-train"``)
- ``class_names``: optional JSON list of class names
- ``extra``: optional JSON object (training metrics etc.)

Tensor names are the effnet ``state_dict`` keys. Files are written atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet.files import atomic_write
from effnet.preprocessing import Preprocessing
from effnet.specs.base import ModelSpec

log = logging.getLogger(__name__)

FORMAT = "effnet"
FORMAT_VERSION = "1"
@dataclass
class WeightFile:
    """What a self-describing weight file holds."""

    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    preprocessing: Preprocessing
    source: str = ""
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_weights(
    model: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    spec: ModelSpec | None = None,
    preprocessing: Preprocessing | None = None,
    source: str = "",
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing safetensors file (atomically)."""
    from safetensors.torch import save_file

    if isinstance(model, nn.Module):
        spec = spec or getattr(model, "spec", None)
        state = model.state_dict()
    else:
        state = model
    if spec is None:
        raise ValueError("save_weights: no spec given and the model has no .spec attribute")
    preprocessing = preprocessing or Preprocessing(resolution=spec.resolution)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_json(),
        "preprocessing": json.dumps(preprocessing.to_dict()),
        "source": source,
    }
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    if extra:
        meta["extra"] = json.dumps(extra)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_weights(path: str | Path) -> WeightFile:
    """Read a file written by :func:`save_weights`, with a clear error if it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
    if meta.get("format") != FORMAT or "spec" not in meta:
        raise ValueError(
            f"{path} has no effnet metadata (format={meta.get('format')!r}); if it is a "
            f"torchvision/timm/Keras file, convert it first: effnet convert {path} OUT.safetensors "
            f"--source ... --model ..."
        )
    return WeightFile(
        state_dict=state,
        spec=ModelSpec.from_json(meta["spec"]),
        preprocessing=Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}"))),
        source=meta.get("source", ""),
        class_names=json.loads(meta["class_names"]) if "class_names" in meta else None,
        extra=json.loads(meta["extra"]) if "extra" in meta else {},
    )


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str = "weights") -> None:
    """Refuse a state dict that does not fit ``model``, naming the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    report = describe_mismatches(
        [("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", shapes)]
    )
    if report:
        raise ValueError(f"{what} do not fit the architecture: {report}")


def describe_mismatches(problems: list[tuple[str, list[str]]], first: int = 5) -> str:
    """``"3 missing key(s), first: [...]; ..."`` for the non-empty lists ("" when all are empty),
    so that a refused file names the first offending keys and shapes."""
    return "; ".join(f"{len(items)} {label}, first: {items[:first]}" for label, items in problems if items)

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

#: The files of a training run folder that other commands read: its weights (``effnet.train.loop``
#: writes them), its config (``effnet.train.rundir``) and its training / validation split (for
#: ``effnet eval RUN_DIR`` and its overlap warning). Named here, the lowest layer that reads a run
#: folder: one stands for its best weights wherever a weight file is asked for.
BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"

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


def weights_path(path: str | Path) -> Path:
    """``path`` itself, or for a training run folder (``effnet train --out``) its
    ``best.safetensors``; a clear error when neither is there."""
    path = Path(path)
    if path.is_dir():
        best = path / BEST_WEIGHTS
        if best.is_file():
            log.info("%s is a run folder: using its %s", path, BEST_WEIGHTS)
            return best
        hint = (" (the run has not finished an epoch yet)" if (path / CONFIG_FILE).is_file()
                else "; expected a weight file or an `effnet train` run folder")
        raise FileNotFoundError(f"{path} is a folder without {BEST_WEIGHTS}{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    return path


#: First bytes of the files most often given where an effnet safetensors file is expected.
_MAGIC = (
    (b"PK\x03\x04", "a PyTorch zip checkpoint (torch.save)"),
    (b"\x80", "a PyTorch pickle (torch.save, legacy format)"),
    (b"\x89HDF\r\n\x1a\n", "a Keras HDF5 file"),
)


def sniff(path: Path) -> str | None:
    """What a non-safetensors weight file is, from its first bytes (``None``: not recognised)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then ``{``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read_weights(path: str | Path) -> WeightFile:
    """Read a file written by :func:`save_weights` (or a run folder's ``best.safetensors``),
    with a clear error if it is not one."""
    from safetensors import SafetensorError, safe_open

    path = weights_path(path)
    convert_hint = (f"convert it first: effnet convert {path} OUT.safetensors --source "
                    f"torchvision|timm|efficientnet_pytorch|keras --model NAME")
    what = sniff(path)
    if what is not None:
        raise ValueError(f"{path} is {what}, not an effnet safetensors file; {convert_hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        if is_safetensors(path):
            raise ValueError(f"{path}: its safetensors header is damaged ({reason}); the file is truncated or "
                             f"corrupt: copy, download or convert it again") from e
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {reason}") from e
    if meta.get("format") != FORMAT or "spec" not in meta:
        raise ValueError(
            f"{path} has no effnet metadata (format={meta.get('format')!r}); if it is a "
            f"torchvision/timm/Keras file, {convert_hint}"
        )
    try:
        return WeightFile(
            state_dict=state,
            spec=ModelSpec.from_json(meta["spec"]),
            preprocessing=Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}"))),
            source=meta.get("source", ""),
            class_names=json.loads(meta["class_names"]) if "class_names" in meta else None,
            extra=json.loads(meta["extra"]) if "extra" in meta else {},
        )
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: its effnet metadata is damaged ({type(e).__name__}: {e}); the file was edited "
                         f"or written by another tool: convert or save it again") from e


def read_spec(path: str | Path) -> tuple[ModelSpec, Preprocessing]:
    """The spec and preprocessing a weight file records, without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    path = weights_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return ModelSpec.from_json(meta["spec"]), Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}")))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        wf = read_weights(path)  # the full read says what is wrong
        return wf.spec, wf.preprocessing


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (the weights of a diverged run)."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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

"""What the command modules share: formatting (tables as the CLI prints them) and the checks a
command makes before it runs (option values, device, output folder, memory), each naming the
option as typed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from effnet.files import writable_parent

if TYPE_CHECKING:
    from effnet.train.config import TrainConfig


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def fmt_flops(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def check_device(name: str, option: str = "--device") -> None:
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` that this PyTorch can use, else one line
    saying why (a CPU-only build, no visible GPU, an index out of range)."""
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option} {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(f"{option} {name}: this PyTorch ({torch.__version__}) is a CPU-only build; use "
                             f"--device cpu, or install a CUDA build of PyTorch")
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"{option} {name}: no CUDA device is visible (check the driver and "
                             f"CUDA_VISIBLE_DEVICES); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{option} {name}: only {count} CUDA device(s) are visible (cuda:0 to "
                             f"cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {name}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def check_out_folder(path: str | Path, option: str = "--out") -> Path:
    """A folder a command will write its results into, checked before any training: not an
    existing file, not under a file, and writable where it will be created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file; expected a folder for the results (choose another path)")
    if out.exists():
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {out}: cannot write in {out} (permission denied); choose another folder")
        return out
    parent = writable_parent(out)
    # Some places refuse new folders whatever the permissions say (/proc, a read-only mount):
    # try once, and leave nothing behind.
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise ValueError(f"{option} {out}: this folder cannot be created ({e.strerror}); choose another "
                         "folder") from None
    for made in [out, *out.parents]:
        if made == parent:
            break
        made.rmdir()
    return out


def check_positive(option: str, value: int | float | None) -> None:
    """Counts and sizes the user typed must be positive (0 is refused: it could be read as "everything")."""
    if value is not None and value <= 0:
        raise ValueError(f"{option} {value}: expected a positive number")


# --- argument checks (each message names the option as typed) --------------------------------------
#: Options of train/eval/predict with a lower bound: (dest, option, least, what it counts).
_LOWER_BOUNDS = (
    ("image_size", "--image-size", 32, "px (the network reduces by 32)"),
    ("eval_size", "--eval-size", 32, "px (the network reduces by 32)"),
    ("resolution", "--resolution", 32, "px (the network reduces by 32)"),
    ("train_subset", "--subset", 1, "image(s)"),
    ("batch_size", "--batch-size", 1, "image(s) per batch"),
    ("workers", "--workers", 0, "loader process(es); 0 decodes in the main process"),
    ("topk", "--topk", 1, "class(es)"),
    ("epochs", "--epochs", 1, "epoch(s)"),
    ("accum_steps", "--accum-steps", 1, "micro-batch(es) per step"),
    ("threads", "--threads", 1, "thread(s)"),
    ("mixup_alpha", "--mixup-alpha", 0, "(0 turns mixup off)"),
    ("cutmix_alpha", "--cutmix-alpha", 0, "(0 turns CutMix off)"),
    ("lr_per_256", "--lr", 0, "(the learning rate per 256 images)"),
    ("weight_decay", "--weight-decay", 0, ""),
)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse option values that would be silently replaced (``--image-size 0`` trained at the
    spec's size) or fail deep inside torch with its own wording (``--batch-size 0``)."""
    for dest, option, least, unit in _LOWER_BOUNDS:
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool):
            continue
        strict = dest == "lr_per_256"
        if value < least or (strict and value <= least):
            bound = f"more than {least}" if strict else f"at least {least}"
            raise ValueError(f"{option} {value:g}: expected {bound} {unit}".rstrip())
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def _free_memory(device: str) -> int | None:
    """Free memory of the device a command will run on (None: unknown, no check)."""
    import torch

    from effnet.hostmem import available_memory_bytes

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        index = torch.device(device).index if device.startswith("cuda") else None
        if index is None:  # under torchrun each process uses its LOCAL_RANK's GPU (not GPU 0)
            import os

            index = int(os.environ.get("LOCAL_RANK", 0))
        return int(torch.cuda.mem_get_info(index)[0])
    return available_memory_bytes()


def check_inference_memory(weights: str, resolution: int | None, batch: int, device: str) -> None:
    """Refuse a ``--resolution`` whose activations cannot fit, before the model is loaded."""
    if resolution is None:
        return
    from effnet.hostmem import check_memory
    from effnet.scaling.limits import activation_bytes
    from effnet.weights.format import read_spec

    spec, _ = read_spec(weights)
    check_memory(activation_bytes(spec, resolution, batch), f"inference at {resolution} px (batch {batch})",
                 "pass a smaller --resolution", _free_memory(device))


def check_training_memory(cfg: TrainConfig) -> None:
    """Refuse a run whose training activations at its largest image size cannot fit."""
    from effnet.hostmem import check_memory
    from effnet.registry import get_spec
    from effnet.scaling import scale
    from effnet.scaling.limits import activation_bytes
    from effnet.specs.base import ModelSpec
    from effnet.weights.format import read_spec

    if cfg.weights:
        spec = read_spec(cfg.weights)[0]
    else:
        spec = ModelSpec.load(cfg.spec) if cfg.spec else get_spec(cfg.model)
        if cfg.width != 1.0 or cfg.depth != 1.0:
            spec = scale(spec, width=cfg.width, depth=cfg.depth)
    size = cfg.image_size or spec.train_resolution or spec.resolution
    if cfg.progressive is not None:
        size = max(size, int(cfg.progressive.image_size.end))
    check_memory(activation_bytes(spec, size, cfg.batch_size, training=True),
                 f"training {spec.name} at {size} px, batch {cfg.batch_size},",
                 "pass a smaller --image-size or --batch-size", _free_memory(cfg.device))

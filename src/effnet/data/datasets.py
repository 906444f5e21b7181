"""Image datasets: class folders on disk and the embedded ``digits`` set.

Every sample is a PIL image plus an integer label; decoding happens in ``__getitem__`` so that a
DataLoader decodes in worker processes. A file that cannot be decoded does not crash the run:
:class:`DecodedDataset` returns it with label ``-1`` and its index, the loop drops it from the
batch and :class:`SkipLog` reports it at the end, with the decoder's reason for the first few
(read again in the main process: only the label crosses back from a worker).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

#: File types read from image folders (matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
#: Label given to a sample that could not be decoded; the loop drops such samples.
UNREADABLE = -1
#: The embedded default dataset.
DIGITS = "digits"


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA/LA and CMYK become RGB (alpha is composited on white); 16-bit
    and 32-bit grayscale are scaled to 8 bits (PIL's own conversion clips them at 255)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_to_uint8(img), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def _to_uint8(img: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float grayscale image as 0-255: 16-bit modes (``I;16*``, and ``I``,
    which is how PIL opens 16-bit PNGs, when a value exceeds 255) by their full range
    65535 -> 255; float images in [0, 1] times 255; anything else clipped to 0-255."""
    a = np.asarray(img, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
        a = a * (255.0 / 65535.0)
    elif img.mode == "F" and top <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@dataclass
class Split:
    """One split: sample sources (file paths, or in-memory images) and their labels."""

    items: list[Path | Image.Image]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, item_index: int) -> str:
        item = self.items[item_index]
        return str(item) if isinstance(item, Path) else f"sample #{item_index}"


def decode(item: Path | Image.Image) -> Image.Image:
    """An RGB image from a file (decoded fully, so a truncated file fails here) or an in-memory image."""
    if isinstance(item, Path):
        with Image.open(item) as f:
            img = to_rgb(f)
            img.load()
        return img
    return to_rgb(item)


# Truncated JPEGs raise OSError, garbage raises UnidentifiedImageError (an OSError), bad
# headers ValueError or SyntaxError; a decompression bomb its own error.
DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


class DecodedDataset(torch.utils.data.Dataset):
    """``(image uint8 (3, H, W), label, index)``; an unreadable file gives label ``UNREADABLE``."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor], size: int) -> None:
        self.split, self.transform, self.size = split, transform, size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.split.items[index]
        try:
            return self.transform(decode(item)), self.split.labels[index], index
        except DECODE_ERRORS as e:
            # Only the label crosses back from a loader worker; SkipLog asks decode_error() why.
            log.debug("cannot decode %s: %s", item, e)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), UNREADABLE, index


def decode_error(item: Path | Image.Image) -> str:
    """Why ``item`` cannot be decoded (the decoder's own message), read again in this process."""
    try:
        decode(item)
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return "decoded on a second try (a transient read error?)"


@dataclass
class SkipLog:
    """Unreadable samples met during a run (counted in the main process from the batch labels),
    with the decoder's reason for the first :attr:`MAX_REASONS` of them."""

    MAX_REASONS: ClassVar[int] = 3

    skipped: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)

    def add(self, split: Split, indices: Sequence[int]) -> None:
        for i in indices:
            name = split.describe(int(i))
            item = split.items[int(i)]
            if name not in self.skipped and len(self.reasons) < self.MAX_REASONS:
                self.reasons[name] = decode_error(item)
            if isinstance(item, Path):
                self.folders.add(str(item.parent))
            self.skipped[name] = 1

    def update(self, other: SkipLog) -> None:
        for name, reason in other.reasons.items():
            if name not in self.skipped and len(self.reasons) < self.MAX_REASONS:
                self.reasons[name] = reason
        self.skipped.update(other.skipped)
        self.folders |= other.folders

    def summary(self) -> str:
        """How many, where and why: ``3 unreadable file(s) under /data/x, e.g. a/1.jpg:
        UnidentifiedImageError: cannot identify image file ...``."""
        n = len(self.skipped)
        where = ""
        if self.folders:
            root = Path(os.path.commonpath(sorted(self.folders)))
            where = f" under {root}"
            named = {_relative(k, root): v for k, v in self.reasons.items()}
        else:
            named = dict(self.reasons)
        why = "; ".join(f"{k}: {v}" for k, v in named.items())
        more = f" (and {n - len(named)} more)" if n > len(named) else ""
        return f"{n} unreadable image(s){where}" + (f", e.g. {why}{more}" if why else "")

    def report(self) -> None:
        if self.skipped:
            names = sorted(self.skipped)
            log.warning("skipped %d unreadable image(s): %s%s", len(names), ", ".join(names[:10]),
                        " ..." if len(names) > 10 else "")
            for name, reason in self.reasons.items():
                log.warning("  %s: %s", name, reason)


def _relative(name: str, root: Path) -> str:
    try:
        return str(Path(name).relative_to(root))
    except ValueError:
        return name


def _scan_classes(root: Path, what: str = "class") -> tuple[list[Path], list[int], list[str]]:
    """Image paths, labels and class names of ``root/<class>/**``; a class folder (or any folder
    under one) that cannot be read is an error naming it, and empty class folders are listed by
    :func:`empty_classes`."""
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found or not a directory: {root}")
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError as e:
        raise ValueError(f"cannot read image folder {root}: {e}; check its permissions") from e
    names = [p.name for p in class_dirs]
    paths: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        files, unreadable = _walk_images(d)
        if unreadable:
            raise ValueError(f"cannot read {what} folder(s) {', '.join(unreadable[:5])}: permission denied or "
                             f"unreadable; check their permissions")
        files = sorted(f for f in files if f.is_file())
        paths += files
        labels += [label] * len(files)
    return paths, labels, names


def _walk_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files under ``folder`` and the folders that could not be listed (``os.walk``
    reports them; pathlib's rglob skips them silently, so an unreadable class read as empty)."""
    unreadable: list[str] = []
    files: list[Path] = []
    for here, subdirs, names in os.walk(folder, onerror=lambda e: unreadable.append(str(e.filename)),
                                        followlinks=True):
        subdirs[:] = sorted(x for x in subdirs if not x.startswith("."))
        files += [Path(here) / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    if not os.access(folder, os.R_OK | os.X_OK) and str(folder) not in unreadable:
        unreadable.append(str(folder))
    return files, unreadable


def empty_classes(split: Split) -> list[str]:
    """Class names with no image in ``split``."""
    counts = [0] * len(split.class_names)
    for label in split.labels:
        counts[label] += 1
    return [name for name, n in zip(split.class_names, counts) if n == 0]


def _refuse_empty(split: Split, root: object) -> None:
    empty = empty_classes(split)
    if empty:
        raise ValueError(f"class folder(s) with no images under {root}: {', '.join(empty[:10])}"
                         f"{' ...' if len(empty) > 10 else ''}; add images ({', '.join(IMAGE_EXTENSIONS)}) "
                         f"or remove the folder(s): an empty class would be a class the model never sees")


def _check(split: Split, what: str, root: object) -> None:
    if len(split) == 0:
        raise ValueError(
            f"the {what} split of {root} is empty: expected images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"in one sub-folder per class"
        )
    if len(split.class_names) < 2:
        raise ValueError(
            f"{root} has {len(split.class_names)} class folder(s) ({split.class_names}); "
            f"classification needs at least 2: put each class's images in its own sub-folder"
        )


def seeded_split(n: int, labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices) of ``n`` samples, stratified and reproducible from ``seed``:
    each class keeps about ``val_fraction`` of its samples for validation. Evaluation redraws a
    run's split with it to check that the data it scores was never trained on."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i in range(n):  # one pass (not one per class: ImageNet-sized folders have 1000)
        by_class.setdefault(labels[i], []).append(i)
    train, val = [], []
    for c in sorted(by_class):
        idx = by_class[c]
        rng.shuffle(idx)
        k = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


def _subset(split: Split, idx: list[int]) -> Split:
    return Split([split.items[i] for i in idx], [split.labels[i] for i in idx], split.class_names)


def load_digits_split(val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as grayscale PIL images,
    with a fixed seeded, stratified train/val split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16: stretch to 0..255 so the usual normalisation applies.
    images = [Image.fromarray((img * (255.0 / 16.0)).round().astype("uint8"), mode="L") for img in d.images]
    full = Split(list(images), [int(t) for t in d.target], [str(i) for i in range(10)])
    train, val = seeded_split(len(full), full.labels, val_fraction, seed)
    return _subset(full, train), _subset(full, val)


#: Names of a held-out folder beside ``DIR/train``, in the order they are looked for.
VAL_DIRS = ("val", "valid", "validation", "test")


def _val_dir(root: Path) -> Path | None:
    return next((root / n for n in VAL_DIRS if (root / n).is_dir()), None)


def load_splits(data: str | Path, val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """``(train, val)`` from ``digits``; ``DIR/train`` with ``DIR/val`` (or ``valid``,
    ``validation``, ``test``) as the splits; ``DIR/train`` alone, or one ``DIR/<class>/*``
    folder, split by a seeded ``val_fraction``. The layout used is logged; a class folder with
    no images is refused."""
    if str(data) == DIGITS:
        return load_digits_split(val_fraction, seed)
    root = Path(data)
    if not root.is_dir():
        raise NotADirectoryError(
            f"data folder not found: {root} (expected DIR/train/<class>/*, DIR/<class>/* or 'digits')"
        )
    val_dir = _val_dir(root)
    if (root / "train").is_dir() and val_dir is not None:
        log.info("data %s: training on %s, validating on %s (the folders' own splits)", root, root / "train",
                 val_dir)
        train = Split(*_scan_classes(root / "train"))
        val_paths, val_labels, val_names = _scan_classes(val_dir)
        if val_names != train.class_names:
            raise ValueError(
                f"class folders differ between {root / 'train'} and {val_dir}: "
                f"{train.class_names} vs {val_names}; use the same class sub-folders in both"
            )
        val = Split(val_paths, val_labels, val_names)
        _check(train, "train", root)
        _refuse_empty(train, root / "train")
        missing = empty_classes(val)
        if missing:
            log.warning("%s has no images for class(es) %s: their validation accuracy cannot be measured",
                        val_dir, ", ".join(missing[:10]))
    else:
        source = root
        if (root / "train").is_dir():
            source = root / "train"
            log.info("data %s: training classes from %s, %.0f%% of each class held out for validation "
                     "(no val/valid/validation/test folder beside it)", root, source, 100 * val_fraction)
        else:
            log.info("data %s: one folder per class, %.0f%% of each class held out for validation", root,
                     100 * val_fraction)
        full = Split(*_scan_classes(source))
        _check(full, "whole", source)
        _refuse_empty(full, source)
        tr, va = seeded_split(len(full), full.labels, val_fraction, seed)
        train, val = _subset(full, tr), _subset(full, va)
    _check(train, "train", root)
    _check(val, "val", root)
    return train, val


def load_eval_split(data: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The split ``effnet eval`` scores: digits' val split, ``DIR/val`` (or ``valid``,
    ``validation``, ``test``), or the whole ``DIR``
    when it has no train/val sub-folders (a folder of held-out images)."""
    if str(data) == DIGITS:
        return load_digits_split(val_fraction, seed)[1]
    root = Path(data)
    val_dir = _val_dir(root)
    if val_dir is not None:
        log.info("data %s: evaluating on %s", root, val_dir)
    elif (root / "train").is_dir():
        raise ValueError(f"{root} has a train folder but no {'/'.join(VAL_DIRS)} folder to evaluate on; pass "
                         f"{root / 'train'} to score the training images themselves")
    split = Split(*_scan_classes(val_dir if val_dir is not None else root))
    if len(split) == 0:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return split

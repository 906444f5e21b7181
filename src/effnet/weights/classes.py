"""ImageNet-1k class names, shipped as data (``effnet/data/imagenet_classes.txt``).

One name a line in the standard index order (the ILSVRC2012 synsets sorted by WordNet id, the
order every ImageNet checkpoint's classifier uses). The names are torchvision's short
``_IMAGENET_CATEGORIES`` (e.g. 281 "tabby", 967 "espresso"), checked against the WordNet lemmas
of timm's ``imagenet_synsets.txt`` / ``imagenet_synset_to_lemma.txt``; the two WordNet names
that occur twice are told apart as torchvision does ("crane bird", "maillot tank suit").
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

#: Read by path, not through ``importlib.resources.files("effnet.data")``, which would import
#: the data package (kornia, PIL) only to find a text file.
IMAGENET_CLASSES_FILE = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"
IMAGENET_NUM_CLASSES = 1000


@cache
def _names() -> tuple[str, ...]:
    if not IMAGENET_CLASSES_FILE.is_file():
        raise FileNotFoundError(f"ImageNet class names missing from the installation: {IMAGENET_CLASSES_FILE}")
    names = tuple(line.strip() for line in IMAGENET_CLASSES_FILE.read_text().splitlines() if line.strip())
    if len(names) != IMAGENET_NUM_CLASSES:
        raise ValueError(f"{IMAGENET_CLASSES_FILE}: expected {IMAGENET_NUM_CLASSES} names, got {len(names)}")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, index i = classifier output i."""
    return list(_names())

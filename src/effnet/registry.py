"""Model names -> specs (two hops: name -> spec -> build(spec))."""

from __future__ import annotations

import difflib
from typing import Any

from effnet.scaling.compound import from_family
from effnet.specs.base import FamilyRow, ModelSpec
from effnet.specs.baselines import BASELINES
from effnet.specs.edgetpu import EDGETPU_FAMILY
from effnet.specs.lite import LITE_FAMILY
from effnet.specs.tinynet import TINYNET_FAMILY
from effnet.specs.v1 import V1_FAMILY
from effnet.specs.v2 import V2_FAMILY


def _member(name: str, entry: ModelSpec | FamilyRow) -> ModelSpec:
    """A family entry as a spec: a table (B0, V2-S ...) is its own spec; a row is its base scaled."""
    if isinstance(entry, FamilyRow):
        return from_family(name, entry)
    if entry.name != name:
        raise ValueError(f"family entry {name!r}: expected a spec named {name!r}, got {entry.name!r}")
    return entry


#: name -> spec, built once from the published tables and family rows: EfficientNet V1 and V2,
#: the rest of the family (Lite, EdgeTPU, TinyNet), then the ResNet / MobileNet baselines.
REGISTRY: dict[str, ModelSpec] = {
    name: _member(name, entry)
    for name, entry in {**V1_FAMILY, **V2_FAMILY, **LITE_FAMILY, **EDGETPU_FAMILY, **TINYNET_FAMILY,
                        **BASELINES}.items()
}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a substring or ``fnmatch`` pattern."""
    names = list(REGISTRY)
    if pattern:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; an unknown name suggests the closest ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (see effnet.list_models() or `effnet list`)"
        ) from None


def resolve_spec(name: str, num_classes: int = 1000, **overrides: Any) -> ModelSpec:
    """The spec of registered model ``name`` with ``num_classes`` and spec-field ``overrides``
    (``dropout``, ``drop_path_rate``, ``bn_eps``, ``bn_momentum``, ``padding``, ``in_channels``,
    ``resolution``, ``activation`` ...): the one place where overrides are checked.
    :func:`effnet.create_model` builds the result (with weights, if asked).

    ``width`` and ``depth`` are refused: in a spec they *record* how it was scaled (its channels
    and repeats are absolute), so overriding them would only mislabel the model.
    """
    recorded = sorted(set(overrides) & {"width", "depth"})
    if recorded:
        raise ValueError(
            f"create_model({name!r}): {', '.join(recorded)} cannot be overridden (a spec records its "
            f"scaling, its channels and repeats are absolute); scale the spec instead: "
            f"effnet.build(effnet.scale(effnet.get_spec({name!r}), width=..., depth=...))"
        )
    return get_spec(name).replace(num_classes=num_classes, **overrides)

"""Channel and depth rounding rules of the EfficientNet family (pure functions)."""

from __future__ import annotations

import math


def round_filters(
    channels: int, width: float, divisor: int = 8, round_limit: float = 0.9, min_depth: int | None = None
) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor``.

    Why a multiple of 8: hardware (TPU/GPU tensor cores, vectorised CPU kernels) runs fastest on
    channel counts divisible by 8, so the official code rounds every scaled width to the nearest
    multiple. Why a floor: a narrow layer scaled by a small width would round to 0 channels, so
    the result is clamped to at least ``min_depth`` (default: ``divisor``), as the official
    ``round_filters`` does (tensorflow/tpu ``efficientnet_model.py``:
    ``new_filters = max(min_depth or divisor, int(filters + divisor / 2) // divisor * divisor)``).
    Why the 10% rule: rounding to the nearest multiple can shrink a narrow layer a lot (e.g.
    20 -> 16 is -20%); if the rounded value lost more than ``1 - round_limit`` of
    ``channels * width`` it is bumped up by one ``divisor``. ``round_limit=0`` disables the
    rule, as the EfficientNetV2 code (google/automl ``effnetv2_model.py``) does.
    """
    if channels <= 0:
        raise ValueError(f"round_filters: expected positive channels, got {channels}")
    if not width > 0:
        raise ValueError(f"round_filters: expected a positive width multiplier, got {width}")
    value = channels * width
    floor = divisor if min_depth is None else min_depth
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float, mode: str = "ceil") -> int:
    """Scale a stage's block count by ``depth``; ``mode`` "ceil" (default) or "round".

    "ceil" is the official code's rule (``int(math.ceil(d * r))``) and reproduces the published
    B1-B7: any depth multiplier > 1 adds at least one layer to every stage. On B0's short
    stages (1, 2, 2, 3, 3, 4, 1 blocks) it overshoots, though: depth 1.2 becomes 1.5x the
    blocks, so FLOPs no longer grow as d * w^2 * r^2. "round" (to nearest, ties up) keeps the
    total close to ``depth`` and is what pure compound scaling uses. Never below one block.
    """
    if mode not in ("ceil", "round"):
        raise ValueError(f"round_repeats: mode must be 'ceil' or 'round', got {mode!r}")
    if repeats <= 0:
        raise ValueError(f"round_repeats: expected positive repeats, got {repeats}")
    if depth <= 0:
        raise ValueError(f"round_repeats: expected a positive depth multiplier, got {depth}")
    if mode == "round":
        return max(1, int(math.floor(repeats * depth + 0.5)))
    # A tiny tolerance keeps float noise (e.g. 2 * 1.1 * 5 / 5) from adding a layer.
    return max(1, int(math.ceil(repeats * depth - 1e-9)))

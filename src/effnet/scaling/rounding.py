"""Channel and depth rounding rules of the EfficientNet family (pure functions)."""

from __future__ import annotations

import math


def round_filters(
    channels: int, width: float, divisor: int = 8, round_limit: float = 0.9, min_value: int | None = None
) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor``.

    Why a multiple of 8: hardware (TPU/GPU tensor cores, vectorised CPU kernels) runs fastest on
    channel counts divisible by 8, so the official code rounds every scaled width to the nearest
    multiple (never below ``divisor``). Why the 10% rule: rounding to the nearest multiple can
    shrink a narrow layer a lot (e.g. 20 -> 16 is -20%); if the rounded value lost more than
    ``1 - round_limit`` of ``channels * width`` it is bumped up by one ``divisor``.
    ``round_limit=0`` disables the rule, as the EfficientNetV2 code does.
    """
    if channels <= 0:
        raise ValueError(f"round_filters: expected positive channels, got {channels}")
    if width <= 0:
        raise ValueError(f"round_filters: expected a positive width multiplier, got {width}")
    value = channels * width
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding *up*.

    Ceil (not round) so that any depth multiplier > 1 adds at least one layer to every stage
    and no stage ever vanishes (official ``round_repeats``: ``int(math.ceil(d * r))``).
    """
    if repeats <= 0:
        raise ValueError(f"round_repeats: expected positive repeats, got {repeats}")
    if depth <= 0:
        raise ValueError(f"round_repeats: expected a positive depth multiplier, got {depth}")
    # A tiny tolerance keeps 3 * 1.1 * 10 / 10 style float noise from adding a layer.
    return max(1, int(math.ceil(repeats * depth - 1e-9)))

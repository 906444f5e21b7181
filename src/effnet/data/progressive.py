"""Progressive learning (EfficientNetV2 section 4.2): train in K stages, growing the image size
and the regularisation (dropout, RandAugment magnitude, mixup alpha) together.

The paper (Algorithm 1) interpolates linearly between the first and last stage; the official
code computes stage ``i`` of ``K`` as ``min + (max - min) * (i + 1) / K`` for the image size
(V2-S from 128: 171, 214, 257, 300) -- offered as ``size_rule="official"``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A value grown from ``start`` (first stage) to ``end`` (last stage)."""

    start: float
    end: float


@dataclass(frozen=True)
class ProgressiveSpec:
    """K stages and the ranges grown across them (``None``: leave the recipe's value alone)."""

    stages: int = 4
    image_size: Range = Range(128, 300)
    dropout: Range | None = Range(0.1, 0.3)
    randaugment: Range | None = Range(5, 15)
    mixup: Range | None = Range(0.0, 0.0)
    size_rule: str = "paper"  # "paper": linear from start to end; "official": (i + 1) / K
    size_divisor: int = 1  # round image sizes down to a multiple (e.g. 8 or 32 for speed)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"progressive stages: expected a positive integer, got {self.stages!r}")
        if self.size_rule not in ("paper", "official"):
            raise ValueError(f"progressive size_rule: expected 'paper' or 'official', got {self.size_rule!r}")


#: V2 paper Table 6 (and the official code's ``*_progressive`` settings): 4 stages.
V2_PRESETS: dict[str, ProgressiveSpec] = {
    "efficientnetv2_s": ProgressiveSpec(4, Range(128, 300), Range(0.1, 0.3), Range(5, 15), Range(0, 0)),
    "efficientnetv2_m": ProgressiveSpec(4, Range(128, 380), Range(0.1, 0.4), Range(5, 20), Range(0, 0.2)),
    "efficientnetv2_l": ProgressiveSpec(4, Range(128, 380), Range(0.1, 0.5), Range(5, 25), Range(0, 0.4)),
}


@dataclass(frozen=True)
class Stage:
    """What is in force during one stage."""

    index: int
    first_epoch: int
    image_size: int
    dropout: float | None
    randaugment: float | None
    mixup: float | None


def _lerp(r: Range | None, t: float) -> float | None:
    return None if r is None else r.start + (r.end - r.start) * t


def stage_values(spec: ProgressiveSpec, i: int) -> tuple[int, float | None, float | None, float | None]:
    """(image size, dropout, RandAugment magnitude, mixup alpha) of stage ``i`` (0-based)."""
    k = spec.stages
    t = 1.0 if k == 1 else i / (k - 1)
    if spec.size_rule == "official":
        size = spec.image_size.start + (spec.image_size.end - spec.image_size.start) * (i + 1) / k
    else:
        size = _lerp(spec.image_size, t)
    size_int = int(size)  # type: ignore[arg-type]
    if spec.size_divisor > 1:
        size_int = max(spec.size_divisor, size_int // spec.size_divisor * spec.size_divisor)
    return size_int, _lerp(spec.dropout, t), _lerp(spec.randaugment, t), _lerp(spec.mixup, t)


def plan(spec: ProgressiveSpec, epochs: int) -> list[Stage]:
    """Split ``epochs`` into ``spec.stages`` near-equal consecutive stages (earlier stages get
    the remainder, as the paper's ~87 epochs per stage of 350)."""
    k = min(spec.stages, max(epochs, 1))
    per, extra = divmod(epochs, k)
    stages, first = [], 0
    for i in range(k):
        size, dropout, ra, mix = stage_values(ProgressiveSpec(**{**spec.__dict__, "stages": k}), i)
        stages.append(Stage(i, first, size, dropout, ra, mix))
        first += per + (1 if i < extra else 0)
    return stages


def stage_at(stages: list[Stage], epoch: int) -> Stage:
    """The stage in force at ``epoch`` (0-based)."""
    current = stages[0]
    for s in stages:
        if epoch >= s.first_epoch:
            current = s
    return current

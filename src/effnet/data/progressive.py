"""Progressive learning (EfficientNetV2 section 4.2): train in K stages, growing the image size
and the regularisation (dropout, RandAugment magnitude, mixup alpha) together.

The paper (Algorithm 1) interpolates linearly between the first and last stage; the official
code computes stage ``i`` of ``K`` as ``min + (max - min) * (i + 1) / K`` for the image size
(V2-S from 128: 171, 214, 257, 300) -- offered as ``size_rule="official"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effnet.specs.base import ModelSpec


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
    """What is in force during one stage: the sizes it trains and is evaluated at, and its
    regularisation."""

    index: int
    first_epoch: int
    image_size: int  # training size
    eval_size: int  # evaluation size (and the resolution its checkpoints record)
    dropout: float | None  # None: the model's own dropout
    randaugment: float  # RandAugment magnitude (0: off)
    mixup: float  # mixup alpha (0: off)


def eval_resolution(spec: ModelSpec, train_size: int, eval_size: int | None = None) -> int:
    """The size a network trained at ``train_size`` is evaluated (and saved) at: ``eval_size``
    when given, else the spec's evaluation ``resolution`` scaled by ``train_size`` over the spec's
    own training size.

    EfficientNetV2 trains smaller than it tests: V2-S grows to 300 px (V2 Table 6) and is
    reported at 384 (official README); V2-B0 trains at 192 and tests at 224 (docs/paper.md sections
    7-8). The larger test size makes up for the apparent object size that random-resized crops
    enlarge during training (Touvron et al. 2019, "Fixing the train-test resolution
    discrepancy"). Keeping the ratio carries that split to any training size: V2-S trained at
    300 is scored at 384; a B0, whose spec trains and tests at one size, at 32 px is scored at 32.
    """
    if eval_size:
        return eval_size
    return max(1, round(spec.resolution * train_size / (spec.train_resolution or spec.resolution)))


def plan(spec: ProgressiveSpec | None, epochs: int, model: ModelSpec, *, image_size: int | None = None,
         eval_size: int | None = None, randaugment: float = 0.0, mixup: float = 0.0) -> list[Stage]:
    """Every progressive-learning rule in one place: the stages of a run of ``epochs`` epochs
    training ``model``, each with what is in force during it.

    Without ``spec``, one stage: ``image_size`` (default: the model's training resolution),
    the model's own dropout, the recipe's ``randaugment``/``mixup``. With it, ``spec.stages``
    near-equal consecutive stages (never more than the epochs; earlier stages get the remainder,
    as the paper's ~87 epochs per stage of 350), whose image size, dropout, RandAugment magnitude
    and mixup alpha grow linearly from the ranges' start to their end (a range left ``None``
    keeps the recipe's value); ``size_rule="official"`` sizes stage ``i`` of ``K`` as the
    official code does, ``start + (end - start) * (i + 1) / K``; ``size_divisor`` rounds sizes
    down to its multiples.

    The last stage is evaluated at :func:`eval_resolution` of its size (``eval_size`` when
    given), and every earlier stage at its own size times the same ratio (at least 32 px), so
    that each epoch's score and each checkpoint's recorded preprocessing match what the network
    was trained at.
    """
    rows: list[tuple[int, int, int, float | None, float, float]] = []
    if spec is None:
        rows.append((0, 0, image_size or model.train_resolution or model.resolution, None, randaugment, mixup))
    else:
        k = min(spec.stages, max(epochs, 1))
        per, extra = divmod(epochs, k)
        first = 0
        for i in range(k):
            t = 1.0 if k == 1 else i / (k - 1)
            lo, hi = spec.image_size.start, spec.image_size.end
            size = int(lo + (hi - lo) * ((i + 1) / k if spec.size_rule == "official" else t))
            if spec.size_divisor > 1:
                size = max(spec.size_divisor, size // spec.size_divisor * spec.size_divisor)
            dropout, ra, mix = (None if r is None else r.start + (r.end - r.start) * t
                                for r in (spec.dropout, spec.randaugment, spec.mixup))
            rows.append((i, first, size, dropout, randaugment if ra is None else ra, mixup if mix is None else mix))
            first += per + (1 if i < extra else 0)
    final = rows[-1][2]
    final_eval = eval_resolution(model, final, eval_size)
    return [Stage(i, first, size, max(32, round(size * final_eval / final)), dropout, ra, mix)
            for i, first, size, dropout, ra, mix in rows]


def stage_at(stages: list[Stage], epoch: int) -> Stage:
    """The stage in force at ``epoch`` (0-based)."""
    current = stages[0]
    for s in stages:
        if epoch >= s.first_epoch:
            current = s
    return current

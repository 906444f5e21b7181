"""Published results to compare against (EfficientNet Table 2; EfficientNetV2 official README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperResult:
    """One row of a published table: ImageNet accuracy, parameters and multiply-adds."""

    model: str
    resolution: int
    top1: float
    top5: float | None
    params_m: float
    flops_b: float
    source: str


PAPER_TABLE_2: tuple[PaperResult, ...] = (
    PaperResult("efficientnet_b0", 224, 77.1, 93.3, 5.3, 0.39, "EfficientNet Table 2"),
    PaperResult("efficientnet_b1", 240, 79.1, 94.4, 7.8, 0.70, "EfficientNet Table 2"),
    PaperResult("efficientnet_b2", 260, 80.1, 94.9, 9.2, 1.0, "EfficientNet Table 2"),
    PaperResult("efficientnet_b3", 300, 81.6, 95.7, 12.0, 1.8, "EfficientNet Table 2"),
    PaperResult("efficientnet_b4", 380, 82.9, 96.4, 19.0, 4.2, "EfficientNet Table 2"),
    PaperResult("efficientnet_b5", 456, 83.6, 96.7, 30.0, 9.9, "EfficientNet Table 2"),
    PaperResult("efficientnet_b6", 528, 84.0, 96.8, 43.0, 19.0, "EfficientNet Table 2"),
    PaperResult("efficientnet_b7", 600, 84.3, 97.0, 66.0, 37.0, "EfficientNet Table 2"),
    PaperResult("efficientnetv2_s", 384, 83.9, None, 21.5, 8.4, "EfficientNetV2 official README"),
    PaperResult("efficientnetv2_m", 480, 85.2, None, 54.1, 24.7, "EfficientNetV2 official README"),
    PaperResult("efficientnetv2_l", 480, 85.7, None, 119.5, 56.3, "EfficientNetV2 official README"),
)


#: EfficientNetV2-B0..B3 as reported by the official EfficientNetV2 README (google/automl
#: efficientnetv2; docs/paper.md section 7): ImageNet top-1 at the evaluation size, parameters
#: and multiply-adds. With the V2-S/M/L rows of :data:`PAPER_TABLE_2` they form the V2 curve of
#: the V2 paper's Figure 1 / Figure 5 layout (accuracy against FLOPs and parameters).
V2_README_SMALL: tuple[PaperResult, ...] = (
    PaperResult("efficientnetv2_b0", 224, 78.7, None, 7.1, 0.72, "EfficientNetV2 official README"),
    PaperResult("efficientnetv2_b1", 240, 79.8, None, 8.1, 1.2, "EfficientNetV2 official README"),
    PaperResult("efficientnetv2_b2", 260, 80.5, None, 10.1, 1.7, "EfficientNetV2 official README"),
    PaperResult("efficientnetv2_b3", 300, 82.1, None, 14.4, 3.0, "EfficientNetV2 official README"),
)


def paper_curves() -> dict[str, tuple[PaperResult, ...]]:
    """The published accuracy curves, in FLOPs order: ``"EfficientNet B0-B7"`` (EfficientNet
    Table 2) and ``"EfficientNetV2"`` (B0-B3, S, M, L from the official README)."""
    v1 = tuple(r for r in PAPER_TABLE_2 if r.model.startswith("efficientnet_b"))
    v2 = V2_README_SMALL + tuple(r for r in PAPER_TABLE_2 if r.model.startswith("efficientnetv2_"))
    return {"EfficientNet B0-B7": v1, "EfficientNetV2": tuple(sorted(v2, key=lambda r: r.flops_b))}

"""Measured compound-scaling studies: scale a base for several phi and count what changed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from effnet.scaling.compound import ALPHA, BETA, GAMMA, compound_coefficients, compound_scale
from effnet.specs.base import ModelSpec


@dataclass(frozen=True)
class ScaleRow:
    """One scaled model: coefficients, size and measured vs predicted FLOPs growth."""

    phi: float
    depth: float
    width: float
    resolution: int
    params: int
    flops: int
    flops_ratio: float
    flops_ratio_predicted: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compound_study(
    base: ModelSpec, phis: list[float], alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> list[ScaleRow]:
    """For each phi: d, w, r, parameters and multiply-adds of ``compound_scale(base, phi)``,
    with the FLOPs ratio to ``base`` next to the predicted (alpha * beta^2 * gamma^2)^phi."""
    import torch

    from effnet.model import build
    from effnet.profile import count_flops, count_params

    base_flops = count_flops(base)
    rows = []
    for phi in phis:
        c = compound_coefficients(phi, base.resolution, alpha, beta, gamma)
        spec = compound_scale(base, phi, alpha, beta, gamma)
        with torch.device("meta"):
            params = count_params(build(spec))
        flops = count_flops(spec)
        rows.append(ScaleRow(phi=phi, depth=c.depth, width=c.width, resolution=c.resolution,
                             params=params, flops=flops, flops_ratio=flops / base_flops,
                             flops_ratio_predicted=c.flops_ratio_predicted))
    return rows

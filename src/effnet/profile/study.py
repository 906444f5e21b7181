"""Measured compound-scaling studies: scale a base for several phi and count what changed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from effnet.scaling.compound import ALPHA, BETA, GAMMA, compound_coefficients, compound_scale
from effnet.scaling.limits import DEFAULT_LIMITS, SizeLimits, compound_phi_range, describe_size, size_problems
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
    base: ModelSpec, phis: list[float], alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
    limits: SizeLimits = DEFAULT_LIMITS,
) -> list[ScaleRow]:
    """For each phi: d, w, r, parameters and multiply-adds of ``compound_scale(base, phi)``,
    with the FLOPs ratio to ``base`` next to the predicted (alpha * beta^2 * gamma^2)^phi.

    Every phi is checked against ``limits`` from its spec alone before anything is built, so a
    size that makes no sense (phi = 60: ~900,000 blocks) is refused at once, with the size it
    would have had and the phi range that fits.
    """
    import torch

    from effnet.model import build
    from effnet.profile import count_flops, count_params

    if not phis:
        raise ValueError("compound_study: expected at least one phi, got none")
    planned = []
    for phi in phis:
        try:
            c = compound_coefficients(phi, base.resolution, alpha, beta, gamma)
            spec = compound_scale(base, phi, alpha, beta, gamma)
        except (ValueError, OverflowError) as e:
            raise ValueError(f"compound_study: phi={phi:g} cannot scale {base.name}: {e}. "
                             f"{_what_to_do(base, alpha, beta, gamma, limits)}") from None
        problems = size_problems(spec, limits)
        if problems:
            raise ValueError(
                f"compound_study: phi={phi:g} would scale {base.name} to {describe_size(spec)} "
                f"(depth x{c.depth:,.1f}, width x{c.width:,.1f}, predicted FLOPs ratio "
                f"{c.flops_ratio_predicted:.3g}x); refused without building it: {'; '.join(problems)}. "
                f"{_what_to_do(base, alpha, beta, gamma, limits)}"
            )
        planned.append((phi, c, spec))

    base_flops = count_flops(base)
    rows = []
    for phi, c, spec in planned:
        with torch.device("meta"):
            params = count_params(build(spec))
        flops = count_flops(spec)
        rows.append(ScaleRow(phi=phi, depth=c.depth, width=c.width, resolution=c.resolution,
                             params=params, flops=flops, flops_ratio=flops / base_flops,
                             flops_ratio_predicted=c.flops_ratio_predicted))
    return rows


def _what_to_do(base: ModelSpec, alpha: float, beta: float, gamma: float, limits: SizeLimits) -> str:
    low, high = compound_phi_range(base, alpha, beta, gamma, limits)
    return (f"Choose phi between {low:g} and {high:g} for {base.name} with these alpha, beta, gamma "
            f"(limits: effnet.scaling.SizeLimits, compound_study(limits=...)).")

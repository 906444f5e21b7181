"""The candidate grid of compound-scaling coefficients (EfficientNet section 3.3, step 1).

"Fixing phi = 1, assuming twice more resources available, we do a small grid search of
alpha, beta, gamma based on Equation 2 and 3" under alpha * beta^2 * gamma^2 ~= 2 and
alpha, beta, gamma >= 1. This module enumerates that grid and merges the points whose channel
and repeat rounding give the same network; it builds nothing (measuring the candidates is
:func:`effnet.profile.sweep.measure_grid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from effnet.scaling.compound import compound_scale
from effnet.specs.base import ModelSpec

#: A grid with more points than this is refused: measuring a candidate costs ~0.2 s (B0 on a CPU).
MAX_GRID_POINTS = 10_000


@dataclass(frozen=True)
class GridPoint:
    """One (alpha, beta, gamma) of the grid, to be applied at ``phi``."""

    alpha: float
    beta: float
    gamma: float
    phi: float = 1.0

    @property
    def product(self) -> float:
        """alpha * beta^2 * gamma^2, the FLOPs multiple per unit of phi."""
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def flops_ratio_predicted(self) -> float:
        """(alpha * beta^2 * gamma^2)^phi (EfficientNet section 3.3)."""
        return self.product**self.phi

    @property
    def coefficients(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.gamma)


def _exact(value: float, label: str) -> Fraction:
    """``value`` as the decimal the user typed (0.05 is 1/20, not the nearest double), so that
    points on the constraint's edge are neither lost nor gained by float noise."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"grid: {label} must be a positive number, got {value!r}")
    return Fraction(str(value))


def grid_points(
    phi: float = 1.0, step: float = 0.05, tolerance: float = 0.1, target: float = 2.0,
    max_points: int = MAX_GRID_POINTS,
) -> list[GridPoint]:
    """Every (alpha, beta, gamma) with each of 1, 1 + step, 1 + 2 step, ... and
    |alpha * beta^2 * gamma^2 - target| <= tolerance, in order of alpha, then beta, then gamma.

    ``phi`` (> 0) is where the points will be applied: the paper fixes phi = 1 ("twice more
    resources") and scales up; each point predicts the FLOPs ratio (alpha*beta^2*gamma^2)^phi.
    The constraint is checked in exact decimal arithmetic. Refused with a message: a step or
    tolerance that is not positive, phi <= 0, an empty grid (saying what to loosen), and more
    than ``max_points`` points.
    """
    if not (isinstance(phi, (int, float)) and math.isfinite(phi) and phi > 0):
        raise ValueError(f"grid: phi must be > 0 (the grid searches coefficients for scaling up; the paper fixes "
                         f"phi = 1), got {phi!r}")
    h, tol, goal = _exact(step, "step"), _exact(tolerance, "tolerance"), _exact(target, "target")
    lo, hi = goal - tol, goal + tol
    points: list[GridPoint] = []
    # Each factor is >= 1, so alpha <= hi, beta^2 <= hi and gamma^2 <= hi bound the loops.
    i = 0
    while (a := 1 + i * h) <= hi:
        j = 0
        while (ab := a * (b := 1 + j * h) ** 2) <= hi:
            # Start gamma just below sqrt(lo / (alpha beta^2)) rather than at 1: the loops then
            # cost about one step per (alpha, beta) pair plus the points, even on a fine grid.
            k = max(0, math.floor((math.sqrt(max(float(lo / ab), 1.0)) - 1) / float(h)) - 1)
            while (p := ab * (g := 1 + k * h) ** 2) <= hi:
                if p >= lo:
                    points.append(GridPoint(float(a), float(b), float(g), phi))
                    if len(points) > max_points:
                        raise ValueError(
                            f"grid: step {step:g} and tolerance {tolerance:g} give more than {max_points:,} points; "
                            f"use a larger step or a smaller tolerance")
                k += 1
            j += 1
        i += 1
    if not points:
        raise ValueError(
            f"grid: no (alpha, beta, gamma) >= 1 on a grid of step {step:g} has |alpha*beta^2*gamma^2 - {target:g}| "
            f"<= {tolerance:g}; loosen the constraint: a larger tolerance or a smaller step")
    return points


def architecture_key(spec: ModelSpec) -> tuple[Any, ...]:
    """What scaling can change in a network: its stages, stem, head and input size (the name
    and the nominal width/depth multipliers are bookkeeping, not architecture)."""
    return (spec.stages, spec.stem_channels, spec.head_channels, spec.resolution)


@dataclass(frozen=True)
class GridCandidate:
    """A distinct network of the grid: the first point (in grid order) that gives it, the
    scaled spec, and the later points whose rounding collapses onto the same network."""

    point: GridPoint
    spec: ModelSpec
    collapsed: tuple[GridPoint, ...] = ()


def grid_candidates(base: ModelSpec, points: list[GridPoint]) -> list[GridCandidate]:
    """``points`` applied to ``base`` by :func:`~effnet.scaling.compound_scale` (each at its own
    phi), merged by :func:`architecture_key`: channels round to multiples of 8 and repeats to
    whole blocks, so nearby coefficients often give the very same network."""
    first: dict[tuple[Any, ...], int] = {}
    out: list[GridCandidate] = []
    for pt in points:
        spec = compound_scale(base, pt.phi, pt.alpha, pt.beta, pt.gamma)
        spec = spec.replace(name=f"{base.name}_a{pt.alpha:g}_b{pt.beta:g}_g{pt.gamma:g}_phi{pt.phi:g}")
        key = architecture_key(spec)
        if key in first:
            c = out[first[key]]
            out[first[key]] = GridCandidate(c.point, c.spec, (*c.collapsed, pt))
        else:
            first[key] = len(out)
            out.append(GridCandidate(pt, spec))
    return out

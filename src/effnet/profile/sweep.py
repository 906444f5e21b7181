"""Measured scaling sweeps: scale a base by a strategy for several phi (:func:`scale_sweep`), or
over the grid of compound coefficients (:func:`measure_grid`), and count what changed
(parameters, multiply-adds on the meta device). Nothing is trained here; the lab's
``effnet scale study`` trains strategies at matched FLOPs (:mod:`effnet.lab.compare`)."""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from effnet.model import build
from effnet.profile.measure import count_flops, count_params
from effnet.registry import get_spec
from effnet.scaling.compound import ALPHA, BETA, GAMMA
from effnet.scaling.grid import GridPoint, grid_candidates, grid_points
from effnet.scaling.limits import DEFAULT_LIMITS, SizeLimits, describe_size, size_problems
from effnet.scaling.strategies import Strategy, get_strategy, phi_range
from effnet.specs.base import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleRow:
    """One scaled model: the strategy's multipliers, size and measured vs predicted FLOPs growth."""

    phi: float
    depth: float
    width: float
    resolution: int
    params: int
    flops: int
    flops_ratio: float
    flops_ratio_predicted: float
    strategy: str = "compound"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4096)
def _measure_architecture(spec: ModelSpec) -> tuple[int, int]:
    """(parameters, multiply-adds) of ``spec``, built once on the meta device.

    Cached by architecture (callers pass the spec with its name and nominal multipliers blanked,
    see :func:`_measure`): a grid listing or a repeated sweep counts each network once.
    """
    with torch.device("meta"):
        net = build(spec)
    return count_params(net), count_flops(net, spec.resolution)


def _measure(spec: ModelSpec) -> tuple[int, int]:
    return _measure_architecture(spec.replace(name="", width=1.0, depth=1.0, source=""))


def scale_sweep(
    base: ModelSpec, phis: list[float], strategy: str = "compound", *, limits: SizeLimits = DEFAULT_LIMITS,
    **coefficients: Any,
) -> list[ScaleRow]:
    """For each phi: the multipliers, parameters and multiply-adds of ``base`` scaled by
    ``strategy`` (see :data:`effnet.scaling.STRATEGIES`; ``coefficients`` are its keyword
    arguments, e.g. ``alpha``), with the FLOPs ratio to ``base`` next to the strategy's prediction.

    Every phi is checked against ``limits`` from its spec alone before anything is built, so a
    size that makes no sense (compound phi = 60: ~900,000 blocks) is refused at once, with the
    size it would have had and the phi range that fits.
    """
    if not phis:
        raise ValueError("scale_sweep: expected at least one phi, got none")
    rule = get_strategy(strategy)
    values = rule.resolve(coefficients)
    planned = []
    for phi in phis:
        try:
            m = rule.rule(phi, base.resolution, **values)
            spec = rule.fn(base, phi, **values)
        except (ValueError, OverflowError) as e:
            raise ValueError(f"scale_sweep: {rule.name} phi={phi:g} cannot scale {base.name}: {e}. "
                             f"{_what_to_do(base, rule, values, limits)}") from None
        problems = size_problems(spec, limits)
        if problems:
            raise ValueError(
                f"scale_sweep: {rule.name} phi={phi:g} would scale {base.name} to {describe_size(spec)} "
                f"(depth x{m.depth:,.1f}, width x{m.width:,.1f}, predicted FLOPs ratio "
                f"{m.flops_ratio_predicted:.3g}x); refused without building it: {'; '.join(problems)}. "
                f"{_what_to_do(base, rule, values, limits)}"
            )
        planned.append((phi, m, spec))

    _, base_flops = _measure(base)
    rows = []
    for phi, m, spec in planned:
        params, flops = _measure(spec)
        rows.append(ScaleRow(phi=phi, depth=m.depth, width=m.width, resolution=m.resolution,
                             params=params, flops=flops, flops_ratio=flops / base_flops,
                             flops_ratio_predicted=m.flops_ratio_predicted, strategy=rule.name))
    return rows


def compound_sweep(
    base: ModelSpec, phis: list[float], alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
    limits: SizeLimits = DEFAULT_LIMITS,
) -> list[ScaleRow]:
    """:func:`scale_sweep` with the ``compound`` strategy (EfficientNet eq. 3): d, w, r of
    ``compound_scale(base, phi)`` with the predicted (alpha * beta^2 * gamma^2)^phi."""
    return scale_sweep(base, phis, "compound", limits=limits, alpha=alpha, beta=beta, gamma=gamma)


def _what_to_do(base: ModelSpec, rule: Strategy, values: dict[str, Any], limits: SizeLimits) -> str:
    low, high = phi_range(base, rule, limits, **values)
    given = ", ".join(f"{k}={v:g}" for k, v in values.items())
    return (f"Choose phi between {low:g} and {high:g} for {base.name} with {rule.name} scaling"
            f"{f' ({given})' if given else ''} (limits: effnet.scaling.SizeLimits, scale_sweep(limits=...)).")


# --- the candidate grid (EfficientNet section 3.3, step 1) -----------------------------------------

@dataclass(frozen=True)
class GridRow:
    """A distinct network of the coefficient grid: its (alpha, beta, gamma), the predicted
    FLOPs ratio (alpha * beta^2 * gamma^2)^phi and the measured one, and the grid points whose
    rounding gave the very same network (``collapsed``)."""

    alpha: float
    beta: float
    gamma: float
    phi: float
    product: float
    flops_ratio_predicted: float
    flops_ratio: float
    flops: int
    params: int
    resolution: int
    blocks: int
    collapsed: tuple[tuple[float, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_grid(
    base: str | ModelSpec, points: list[GridPoint] | None = None, phi: float | None = None, *,
    step: float = 0.05, tolerance: float = 0.1, limits: SizeLimits = DEFAULT_LIMITS, progress: bool = False,
) -> list[GridRow]:
    """The grid of compound coefficients for ``base`` with measured FLOPs, one row per distinct
    network, in grid order.

    ``points`` default to :func:`effnet.scaling.grid_points` (``phi`` default 1, ``step``,
    ``tolerance``); given points are measured at their own phi (``phi``, if given, must agree).
    Points whose scaled specs are the same network are measured once and listed once
    (:func:`effnet.scaling.grid_candidates`); FLOPs are cached by architecture across calls.
    Every candidate is checked against ``limits`` before anything is built. ``progress`` shows
    a bar on stderr (when it is a terminal) for listings of more than a few networks.
    """
    spec = get_spec(base) if isinstance(base, str) else base
    if points is None:
        points = grid_points(1.0 if phi is None else phi, step, tolerance)
    elif not points:
        raise ValueError("measure_grid: expected at least one grid point, got none")
    elif phi is not None and any(p.phi != phi for p in points):
        raise ValueError(f"measure_grid: the points are for phi={points[0].phi:g}, not phi={phi:g}; "
                         f"make them with grid_points(phi={phi:g}) or leave phi out")
    candidates = grid_candidates(spec, points)
    for c in candidates:
        problems = size_problems(c.spec, limits)
        if problems:
            raise ValueError(f"measure_grid: ({c.point.alpha:g}, {c.point.beta:g}, {c.point.gamma:g}) at "
                             f"phi={c.point.phi:g} would scale {spec.name} to {describe_size(c.spec)}; refused "
                             f"without building it: {'; '.join(problems)}. Use a smaller phi.")
    start = time.perf_counter()
    _, base_flops = _measure(spec)
    rows = []
    bar = tqdm(candidates, desc=f"FLOPs of {spec.name} on the grid", unit="net", file=sys.stderr,
               disable=None if progress and len(candidates) > 8 else True, leave=False)
    for c in bar:
        params, flops = _measure(c.spec)
        rows.append(GridRow(
            alpha=c.point.alpha, beta=c.point.beta, gamma=c.point.gamma, phi=c.point.phi,
            product=c.point.product, flops_ratio_predicted=c.point.flops_ratio_predicted,
            flops_ratio=flops / base_flops, flops=flops, params=params, resolution=c.spec.resolution,
            blocks=c.spec.num_blocks, collapsed=tuple(p.coefficients for p in c.collapsed),
        ))
    log.debug("measure_grid: %d point(s), %d network(s) of %s measured in %.1f s",
              len(points), len(rows), spec.name, time.perf_counter() - start)
    return rows

"""Model scaling: rounding rules, compound scaling, the other strategies and the coefficient
grid, all as pure functions of a spec (nothing here builds a network)."""

from effnet.scaling.compound import (
    ALPHA,
    BETA,
    GAMMA,
    CompoundCoefficients,
    compound_coefficients,
    compound_scale,
    from_family,
    scale,
    v2_scale,
)
from effnet.scaling.grid import GridCandidate, GridPoint, architecture_key, grid_candidates, grid_points
from effnet.scaling.limits import DEFAULT_LIMITS, SizeLimits, describe_size, size_problems
from effnet.scaling.rounding import round_filters, round_repeats
from effnet.scaling.strategies import (
    STRATEGIES,
    Multipliers,
    Strategy,
    compound_phi_range,
    get_strategy,
    phi_range,
)

__all__ = [
    "ALPHA",
    "BETA",
    "DEFAULT_LIMITS",
    "GAMMA",
    "STRATEGIES",
    "CompoundCoefficients",
    "GridCandidate",
    "GridPoint",
    "Multipliers",
    "SizeLimits",
    "Strategy",
    "architecture_key",
    "compound_coefficients",
    "compound_phi_range",
    "compound_scale",
    "describe_size",
    "from_family",
    "get_strategy",
    "grid_candidates",
    "grid_points",
    "phi_range",
    "round_filters",
    "round_repeats",
    "scale",
    "size_problems",
    "v2_scale",
]

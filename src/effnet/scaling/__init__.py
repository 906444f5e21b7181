"""Compound scaling: rounding rules and scaling as pure functions of a spec."""

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
from effnet.scaling.limits import DEFAULT_LIMITS, SizeLimits, compound_phi_range, describe_size, size_problems
from effnet.scaling.rounding import round_filters, round_repeats

__all__ = [
    "ALPHA",
    "BETA",
    "DEFAULT_LIMITS",
    "GAMMA",
    "CompoundCoefficients",
    "SizeLimits",
    "compound_coefficients",
    "compound_phi_range",
    "compound_scale",
    "describe_size",
    "from_family",
    "round_filters",
    "round_repeats",
    "scale",
    "size_problems",
    "v2_scale",
]

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
from effnet.scaling.rounding import round_filters, round_repeats

__all__ = [
    "ALPHA",
    "BETA",
    "GAMMA",
    "CompoundCoefficients",
    "compound_coefficients",
    "compound_scale",
    "from_family",
    "round_filters",
    "round_repeats",
    "scale",
    "v2_scale",
]

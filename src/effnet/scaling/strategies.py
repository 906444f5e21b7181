"""Scaling strategies side by side: each maps (spec, phi, **coefficients) -> spec.

Every strategy is a *rule* (phi and the base resolution -> depth, width and resolution
multipliers, with its source in the docstring) and a spec function that applies the rule with
:func:`~effnet.scaling.scale`'s rounding. ``phi`` is each strategy's own coefficient: ``2**phi``
is the FLOPs multiple it aims at (FLOPs of a ConvNet grow as d * w^2 * r^2, EfficientNet
section 3.1), except for ``compound`` and ``v2`` where it is (alpha * beta^2 * gamma^2)^phi,
about 2^phi under the paper's constraint alpha * beta^2 * gamma^2 ~= 2.

Depth is rounded to the nearest number of blocks for every strategy (as
:func:`~effnet.scaling.compound_scale` does), so that measured FLOPs track the prediction; the
official code's ceil overshoots on B0's one-block stages (see :func:`~effnet.scaling.round_repeats`).

:data:`STRATEGIES` is the table from name to :class:`Strategy`; :func:`get_strategy` looks one up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from effnet.scaling.compound import ALPHA, BETA, GAMMA, compound_coefficients, compound_scale, scale, v2_scale
from effnet.scaling.limits import DEFAULT_LIMITS, SizeLimits, phi_bound, size_problems
from effnet.specs.base import ModelSpec

#: Dollar et al.'s fast scaling puts this share of the FLOPs growth in width (their Table 4: "we
#: find alpha = 0.8 results in an excellent tradeoff between speed and accuracy").
FAST_ALPHA = 0.8
#: Width is shrunk first, down to this multiple, before resolution and depth (see :func:`tiny_rule`).
TINY_WIDTH_FLOOR = 0.5


@dataclass(frozen=True)
class Multipliers:
    """What a strategy does to a base at one phi: depth and width multipliers, the new input
    size in pixels, and the FLOPs ratio d * w^2 * r^2 it predicts (r before rounding to pixels)."""

    depth: float
    width: float
    resolution: int
    flops_ratio_predicted: float


def _multipliers(base_resolution: int, depth: float, width: float, r: float) -> Multipliers:
    """Round the resolution multiplier ``r`` to whole pixels, as compound scaling does."""
    resolution = int(round(base_resolution * r))
    if resolution <= 0:
        raise ValueError(f"resolution multiplier {r:.4g} gives a non-positive input size {resolution} "
                         f"for a {base_resolution}-px base")
    return Multipliers(depth=depth, width=width, resolution=resolution, flops_ratio_predicted=depth * width**2 * r**2)


# --- the rules: phi -> (d, w, r) -------------------------------------------------------------------

def width_rule(phi: float, base_resolution: int) -> Multipliers:
    """Width only, w = 2^(phi/2), so FLOPs (~ w^2) grow by 2^phi.

    EfficientNet section 3.2 and Figure 3 (left): wider networks capture finer features, but
    accuracy saturates quickly (Wide ResNet, MobileNet's width multiplier).
    """
    return _multipliers(base_resolution, 1.0, 2 ** (phi / 2), 1.0)


def depth_rule(phi: float, base_resolution: int) -> Multipliers:
    """Depth only, d = 2^phi (FLOPs ~ d).

    EfficientNet section 3.2 and Figure 3 (middle): deeper networks capture richer features,
    but the gain diminishes (ResNet-101 is about as accurate as ResNet-1000).
    """
    return _multipliers(base_resolution, 2.0**phi, 1.0, 1.0)


def resolution_rule(phi: float, base_resolution: int) -> Multipliers:
    """Resolution only, r = 2^(phi/2) (FLOPs ~ r^2).

    EfficientNet section 3.2 and Figure 3 (right): larger inputs show finer patterns, with
    diminishing gains at very high resolution (GPipe's 480 px).
    """
    return _multipliers(base_resolution, 1.0, 1.0, 2 ** (phi / 2))


def compound_rule(
    phi: float, base_resolution: int, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> Multipliers:
    """d = alpha^phi, w = beta^phi, r = gamma^phi (EfficientNet section 3.3, eq. 3), with
    alpha * beta^2 * gamma^2 ~= 2; B0's grid search found 1.2, 1.1, 1.15.

    The same numbers as :func:`~effnet.scaling.compound_coefficients`.
    """
    c = compound_coefficients(phi, base_resolution, alpha, beta, gamma)
    return Multipliers(depth=c.depth, width=c.width, resolution=c.resolution,
                       flops_ratio_predicted=c.flops_ratio_predicted)


def v2_rule(
    phi: float, base_resolution: int, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
    max_resolution: int = 480,
) -> Multipliers:
    """Compound scaling with the input capped at ``max_resolution`` (EfficientNetV2 section 3.3:
    "we restrict the maximum inference image size to 480, as very large images often lead to
    expensive memory and training speed overhead").

    The depth multiplier alpha^phi applies to the later stages only (see
    :func:`~effnet.scaling.v2_scale`), so the prediction d * w^2 * r^2 is an upper bound.
    """
    c = compound_coefficients(phi, base_resolution, alpha, beta, gamma)
    r = min(gamma**phi, max_resolution / base_resolution)
    m = _multipliers(base_resolution, c.depth, c.width, r)
    # The resolution itself exactly as v2_scale sets it (compound's rounding, then the cap).
    return Multipliers(depth=m.depth, width=m.width, resolution=min(c.resolution, max_resolution),
                       flops_ratio_predicted=m.flops_ratio_predicted)


def fast_rule(phi: float, base_resolution: int, alpha: float = FAST_ALPHA) -> Multipliers:
    """Fast compound scaling (Dollar, Singh, Girshick, "Fast and Accurate Model Scaling", CVPR
    2021, arXiv 2103.06877, Table 4): for a FLOPs multiple s = 2^phi the shares e_d = (1 - alpha) / 2,
    e_w = alpha, e_r = (1 - alpha) / 2 give d = s^e_d, w = s^(e_w / 2), r = s^(e_r / 2), i.e.

        d = s^((1 - alpha) / 2),  w = s^(alpha / 2),  r = s^((1 - alpha) / 4),  d * w^2 * r^2 = s.

    alpha = 1 is width scaling, alpha = 1/3 uniform compound scaling (d, w^2, r^2 grow alike);
    the paper's default alpha = 0.8 (its "dWr") is pycls's ``d1_w8_g8_r1`` (weights 1 : 8 : 1 of
    d : w : r, pycls ``models/scaler.py``). Activations (~ d * w * r^2) then grow as s^0.6 instead
    of s for uniform compound scaling, and runtime on GPUs follows activations more than FLOPs.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fast scaling: alpha is the width share of the FLOPs growth, expected 0 <= alpha <= 1 "
                         f"(0.8 in the paper), got {alpha}")
    s = 2.0**phi
    return _multipliers(base_resolution, s ** ((1 - alpha) / 2), s ** (alpha / 2), s ** ((1 - alpha) / 4))


def tiny_rule(phi: float, base_resolution: int, width_floor: float = TINY_WIDTH_FLOOR) -> Multipliers:
    """Scaling *down* (phi <= 0) to a FLOPs multiple s = 2^phi, width first.

    In the spirit of TinyNet (Han et al., "Model Rubik's Cube: Twisting Resolution, Depth and
    Width for TinyNets", NeurIPS 2020): when shrinking, "resolution and depth are more important
    than width", so inverting compound scaling is a poor rule for tiny models. Their TinyNets
    shrink width to ~0.5 (C: 0.54, E: 0.51) before giving up much depth and resolution. Here:
    w = max(width_floor, s^(1/2)) takes the whole cut until it reaches ``width_floor``; what
    is left, s' = s / width_floor^2, is split evenly between depth and resolution
    (d = s'^(1/2), r = s'^(1/4)). This is a simple stand-in for the paper's fitted curves.
    """
    if phi > 0:
        raise ValueError(f"tiny scaling only shrinks (phi <= 0), got phi={phi:g}; "
                         f"to grow a model use 'compound', 'fast' or 'v2'")
    if not 0.0 < width_floor <= 1.0:
        raise ValueError(f"tiny scaling: width_floor expected in (0, 1], got {width_floor}")
    s = 2.0**phi
    w = max(width_floor, math.sqrt(s))
    rest = s / w**2  # 1 while the width alone absorbs the cut
    return _multipliers(base_resolution, math.sqrt(rest), w, rest**0.25)


# --- the strategies: spec -> spec ------------------------------------------------------------------

def _apply(spec: ModelSpec, m: Multipliers, name: str) -> ModelSpec:
    return scale(spec, width=m.width, depth=m.depth, resolution=m.resolution, name=name, depth_rounding="round")


def width_scale(spec: ModelSpec, phi: float) -> ModelSpec:
    """``spec`` widened by :func:`width_rule`."""
    return _apply(spec, width_rule(phi, spec.resolution), f"{spec.name}_width{phi:g}")


def depth_scale(spec: ModelSpec, phi: float) -> ModelSpec:
    """``spec`` deepened by :func:`depth_rule`."""
    return _apply(spec, depth_rule(phi, spec.resolution), f"{spec.name}_depth{phi:g}")


def resolution_scale(spec: ModelSpec, phi: float) -> ModelSpec:
    """``spec`` at the input size of :func:`resolution_rule`."""
    return _apply(spec, resolution_rule(phi, spec.resolution), f"{spec.name}_resolution{phi:g}")


def fast_scale(spec: ModelSpec, phi: float, alpha: float = FAST_ALPHA) -> ModelSpec:
    """``spec`` scaled by :func:`fast_rule`."""
    return _apply(spec, fast_rule(phi, spec.resolution, alpha), f"{spec.name}_fast{phi:g}")


def tiny_scale(spec: ModelSpec, phi: float, width_floor: float = TINY_WIDTH_FLOOR) -> ModelSpec:
    """``spec`` shrunk by :func:`tiny_rule`."""
    return _apply(spec, tiny_rule(phi, spec.resolution, width_floor), f"{spec.name}_tiny{phi:g}")


# --- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Strategy:
    """One scaling strategy: ``fn(spec, phi, **coefficients) -> spec`` and its ``rule(phi,
    base_resolution, **coefficients) -> Multipliers``; ``coefficients`` are the defaults of the
    keyword arguments both accept."""

    name: str
    fn: Callable[..., ModelSpec]
    rule: Callable[..., Multipliers]
    source: str
    formula: str
    coefficients: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficients", MappingProxyType(dict(self.coefficients)))

    def resolve(self, coefficients: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults with ``coefficients`` applied; an unknown name is refused."""
        unknown = sorted(set(coefficients) - set(self.coefficients))
        if unknown:
            valid = ", ".join(self.coefficients) or "none"
            raise ValueError(f"strategy {self.name!r} has no coefficient(s) {unknown}; its coefficients: {valid}")
        return {**self.coefficients, **coefficients}

    def apply(self, spec: ModelSpec, phi: float, **coefficients: Any) -> ModelSpec:
        """``spec`` scaled by this strategy at ``phi``."""
        return self.fn(spec, phi, **self.resolve(coefficients))

    def multipliers(self, phi: float, base_resolution: int, **coefficients: Any) -> Multipliers:
        """The (depth, width, resolution) this strategy applies at ``phi`` to a base of
        ``base_resolution`` pixels, with the FLOPs ratio it predicts."""
        return self.rule(phi, base_resolution, **self.resolve(coefficients))

    def describe(self, **coefficients: Any) -> str:
        """The formula and the coefficient values, for table headers."""
        values = self.resolve(coefficients)
        text = self.formula + "".join(f", {k}={v:g}" for k, v in values.items())
        if {"alpha", "beta", "gamma"} <= set(values):
            text += f" (alpha*beta^2*gamma^2 = {values['alpha'] * values['beta']**2 * values['gamma']**2:.3f})"
        return text


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("width", width_scale, width_rule, "EfficientNet section 3.2, Figure 3", "w = 2^(phi/2)"),
    Strategy("depth", depth_scale, depth_rule, "EfficientNet section 3.2, Figure 3", "d = 2^phi"),
    Strategy("resolution", resolution_scale, resolution_rule, "EfficientNet section 3.2, Figure 3",
             "r = 2^(phi/2)"),
    Strategy("compound", compound_scale, compound_rule, "EfficientNet section 3.3, eq. 3",
             "d = alpha^phi, w = beta^phi, r = gamma^phi", {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA}),
    Strategy("v2", v2_scale, v2_rule, "EfficientNetV2 section 3.3",
             "compound, r capped at max_resolution, extra layers in later stages only",
             {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "max_resolution": 480}),
    Strategy("fast", fast_scale, fast_rule, "Dollar, Singh, Girshick, CVPR 2021, Table 4",
             "s = 2^phi: d = s^((1-alpha)/2), w = s^(alpha/2), r = s^((1-alpha)/4)", {"alpha": FAST_ALPHA}),
    Strategy("tiny", tiny_scale, tiny_rule, "Han et al., NeurIPS 2020 (TinyNet), in spirit",
             "s = 2^phi <= 1: w = max(floor, s^(1/2)), then d = s'^(1/2), r = s'^(1/4)",
             {"width_floor": TINY_WIDTH_FLOOR}),
)}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; an unknown name is refused, naming the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown scaling strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}") from None


def phi_range(
    base: ModelSpec, strategy: str | Strategy, limits: SizeLimits = DEFAULT_LIMITS, **coefficients: Any
) -> tuple[float, float]:
    """The phi interval whose scaling of ``base`` by ``strategy`` keeps within ``limits`` (to
    0.01, rounded inwards), for telling a user what to ask for instead.

    Upwards, each trial scales the spec (numbers only, nothing is built) and checks its size; a
    phi the strategy refuses (tiny above 0) is out. Downwards only the rule's multipliers are
    read: blocks and channels shrink, so only the resolution (or a multiplier that underflows to
    0) can leave the limits, and :func:`~effnet.scaling.scale` logs no clamped layers per trial.
    """
    rule = strategy if isinstance(strategy, Strategy) else get_strategy(strategy)
    values = rule.resolve(coefficients)
    if size_problems(base, limits):
        raise ValueError(f"{base.name} itself is out of the size limits: {'; '.join(size_problems(base, limits))}")
    # phi = 0 is the base itself under every rule: a coefficient the rule refuses (alpha = 0, an
    # unknown rounding mode) is an error to report here, not a bound of 0 found by the search below.
    rule.rule(0.0, base.resolution, **values)
    rule.fn(base, 0.0, **values)

    def upper_ok(phi: float) -> bool:
        try:
            return not size_problems(rule.fn(base, phi, **values), limits)
        except (ValueError, OverflowError):
            return False

    def lower_ok(phi: float) -> bool:
        try:
            m = rule.rule(phi, base.resolution, **values)
        except (ValueError, OverflowError):
            return False
        return m.depth > 0 and m.width > 0 and limits.min_resolution <= m.resolution

    return phi_bound(lower_ok, -1.0), phi_bound(upper_ok, 1.0)


def compound_phi_range(
    base: ModelSpec, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
    limits: SizeLimits = DEFAULT_LIMITS, depth_rounding: str = "round",
) -> tuple[float, float]:
    """:func:`phi_range` for :func:`~effnet.scaling.compound_scale` with these coefficients (and
    ``depth_rounding``, which the registered strategy leaves at its default)."""
    rule = STRATEGIES["compound"]
    if depth_rounding != "round":
        rule = replace(rule, fn=functools.partial(compound_scale, depth_rounding=depth_rounding))
    return phi_range(base, rule, limits, alpha=alpha, beta=beta, gamma=gamma)

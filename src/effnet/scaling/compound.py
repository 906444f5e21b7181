"""Compound model scaling (EfficientNet section 3.3) as pure functions of a spec."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from effnet.scaling.rounding import round_filters, round_repeats
from effnet.specs.base import FamilyRow, ModelSpec, StageSpec

log = logging.getLogger(__name__)

#: Grid-searched at phi = 1 on B0 (EfficientNet section 3.3, step 1).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def scale(
    spec: ModelSpec,
    width: float = 1.0,
    depth: float = 1.0,
    resolution: int | None = None,
    *,
    name: str | None = None,
    dropout: float | None = None,
    divisor: int = 8,
    min_depth: int | None = None,
    round_limit: float | None = None,
    depth_rounding: str = "ceil",
) -> ModelSpec:
    """Scale ``spec``'s width (channels), depth (repeats) and input resolution.

    Channels of the stem, every stage and the head are rounded with :func:`round_filters`
    (``round_limit`` defaults to the spec family's rule: 0.9 for V1, 0 for V2), repeats with
    :func:`round_repeats` (``depth_rounding`` "ceil" as the official code, or "round").
    ``resolution`` is the new absolute input size (default: unchanged).

    Small widths are allowed: a layer whose scaled width falls below ``min_depth`` (default:
    ``divisor``) keeps ``min_depth`` channels, as the official ``round_filters`` does (its
    ``min_depth`` flag); width 0.25, TinyNets and negative-phi compound scaling rely on it.
    Which layers were raised is logged (``logging``, INFO), since the result is then wider
    than ``width`` asked for. Only a width or depth that is not positive is refused.

    ``head_channels == 0`` (a spec without a head conv, as the ResNet and MobileNetV1 baselines
    are written) stays 0: there is no layer to widen, so it is neither scaled nor clamped.
    """
    if not (width > 0 and depth > 0):
        raise ValueError(f"scale: width and depth must be positive, got width={width}, depth={depth}")
    if resolution is not None and (not isinstance(resolution, int) or resolution <= 0):
        raise ValueError(f"scale: resolution must be a positive integer, got {resolution!r}")
    limit = spec.round_limit if round_limit is None else round_limit
    floor = divisor if min_depth is None else min_depth

    def rf(c: int) -> int:
        return round_filters(c, width, divisor=divisor, round_limit=limit, min_depth=floor)

    # Names as in the built model (``model.stem``, ``model.stages[i]``, ``model.head``); a head of
    # 0 channels is no layer at all, so it is left out rather than reported as raised to the floor.
    layers = {"stem": spec.stem_channels, **{f"stages[{i}]": s.channels for i, s in enumerate(spec.stages)}}
    if spec.head_channels:
        layers["head"] = spec.head_channels
    clamped = [f"{layer} ({c} x {width:g} = {c * width:.4g} -> {rf(c)})"
               for layer, c in layers.items() if c * width < floor]
    if clamped:
        log.info("scale %s by width %g: %d layer(s) below the minimum of %d channels kept at the "
                 "minimum (official round_filters min_depth): %s",
                 spec.name, width, len(clamped), floor, ", ".join(clamped))

    stages = tuple(
        dataclasses.replace(s, repeats=round_repeats(s.repeats, depth, depth_rounding), channels=rf(s.channels))
        for s in spec.stages
    )
    return spec.replace(
        name=name or f"{spec.name}_w{width:g}_d{depth:g}_r{resolution or spec.resolution}",
        stages=stages,
        stem_channels=rf(spec.stem_channels),
        head_channels=rf(spec.head_channels) if spec.head_channels else 0,
        resolution=resolution or spec.resolution,
        dropout=spec.dropout if dropout is None else dropout,
        width=spec.width * width,
        depth=spec.depth * depth,
    )


@dataclass(frozen=True)
class CompoundCoefficients:
    """The multipliers compound scaling applies for one ``phi``."""

    phi: float
    depth: float
    width: float
    resolution: int
    flops_ratio_predicted: float


def compound_coefficients(
    phi: float, base_resolution: int, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> CompoundCoefficients:
    """d = alpha^phi, w = beta^phi, r = gamma^phi (EfficientNet eq. 3).

    FLOPs of a ConvNet grow as d * w^2 * r^2, hence the predicted ratio
    (alpha * beta^2 * gamma^2)^phi.
    """
    for label, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if value <= 0:
            raise ValueError(f"compound scaling: {label} must be positive, got {value}")
    resolution = int(round(base_resolution * gamma**phi))
    if resolution <= 0:
        raise ValueError(f"compound scaling: phi={phi} gives a non-positive resolution {resolution}")
    return CompoundCoefficients(
        phi=phi, depth=alpha**phi, width=beta**phi, resolution=resolution,
        flops_ratio_predicted=(alpha * beta**2 * gamma**2) ** phi,
    )


def compound_scale(
    spec: ModelSpec, phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
    depth_rounding: str = "round",
) -> ModelSpec:
    """Pure compound scaling of ``spec`` by coefficient ``phi`` (any real; negative shrinks).

    Unlike the published B1-B7 (hand-rounded coefficients, see ``effnet.specs.V1_FAMILY``),
    this applies alpha^phi, beta^phi, gamma^phi exactly: phi = 1 gives depth 1.2, width 1.1 and
    224 * 1.15 = 258 px. Repeats are rounded to nearest by default so that FLOPs track the
    predicted (alpha * beta^2 * gamma^2)^phi (within ~7% for B0, phi = 1..4); pass
    ``depth_rounding="ceil"`` for the official code's rule (which overshoots, see
    :func:`~effnet.scaling.round_repeats`).
    """
    c = compound_coefficients(phi, spec.resolution, alpha, beta, gamma)
    return scale(spec, width=c.width, depth=c.depth, resolution=c.resolution,
                 name=f"{spec.name}_phi{phi:g}", depth_rounding=depth_rounding)


def from_family(name: str, row: FamilyRow) -> ModelSpec:
    """The published family member ``row`` (a base scaled by the row's width and depth, with
    the row's own resolution, dropout and training size) as a spec named ``name``.

    The row's family rules are applied to the scaled spec (all no-ops for V1 and V2):
    ``depth_rounding``; ``scale_stem=False`` keeps the base's stem width; ``head`` "fixed" keeps
    the base's head, "at_least_base" takes max(base, scaled); ``fixed_repeats`` keeps those
    stages' base repeats; ``nominal_input`` gives a stage's first block the hidden width the
    official code computes from a nominal input width (that block becomes a stage row of its
    own when the stage has more blocks, since a row has one expansion). Sources: official
    ``efficientnet_lite_builder.py`` (stem, head and first/last repeats unscaled: those layers
    are costly on mobile accelerators), ``efficientnet_edgetpu_builder.py`` (``i24``), timm
    ``_gen_tinynet`` (fixed 32-channel stem, head at least 1280, repeats rounded to nearest).
    """
    base = row.base
    spec = scale(base, width=row.width, depth=row.depth, resolution=row.resolution,
                 name=name, dropout=row.dropout, depth_rounding=row.depth_rounding)
    n = len(base.stages)
    fixed = {i % n for i in row.fixed_repeats}
    nominal = {i % n: c for i, c in row.nominal_input}
    stem = spec.stem_channels if row.scale_stem else base.stem_channels
    stages: list[StageSpec] = []
    in_ch = stem
    for i, s in enumerate(spec.stages):
        if i in fixed:
            s = dataclasses.replace(s, repeats=base.stages[i].repeats)
        if i in nominal:
            hidden = round_filters(nominal[i], row.width, round_limit=base.round_limit) * s.expand
            first = dataclasses.replace(s, repeats=1, expand=hidden / in_ch)
            stages.append(first)
            if s.repeats > 1:  # the other blocks take the stage's own output: its own expansion
                stages.append(dataclasses.replace(s, repeats=s.repeats - 1, stride=1))
        else:
            stages.append(s)
        in_ch = s.channels
    head = spec.head_channels
    if row.head == "fixed":
        head = base.head_channels
    elif row.head == "at_least_base":
        head = max(base.head_channels, head)
    return spec.replace(stages=tuple(stages), stem_channels=stem, head_channels=head,
                        train_resolution=row.train_resolution)


def v2_scale(
    spec: ModelSpec,
    phi: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    max_resolution: int = 480,
    extra_layers_from_stage: int = 4,
) -> ModelSpec:
    """The EfficientNetV2 variant of compound scaling (V2 paper section 3.3).

    Two changes to V1's rule: the resolution is capped at ``max_resolution`` (larger images
    cost memory and time for little accuracy), and depth is added only to the later stages
    (index >= ``extra_layers_from_stage``, 0-based), where it costs less runtime.
    """
    c = compound_coefficients(phi, spec.resolution, alpha, beta, gamma)
    scaled = scale(spec, width=c.width, depth=1.0, resolution=min(c.resolution, max_resolution),
                   name=f"{spec.name}_v2phi{phi:g}")
    stages = tuple(
        s if i < extra_layers_from_stage else dataclasses.replace(s, repeats=round_repeats(s.repeats, c.depth, "round"))
        for i, s in enumerate(scaled.stages)
    )
    return scaled.replace(stages=stages, depth=spec.depth * c.depth)

import logging

import pytest

from effnet.profile import count_flops
from effnet.registry import get_spec
from effnet.scaling import (
    SizeLimits,
    compound_coefficients,
    compound_phi_range,
    compound_scale,
    round_filters,
    round_repeats,
    scale,
    size_problems,
    v2_scale,
)
from effnet.specs import EFFICIENTNET_B0, EFFICIENTNETV2_BASE


@pytest.mark.parametrize(
    "c, w, limit, expected",
    [
        (32, 1.0, 0.9, 32),
        (16, 1.1, 0.9, 16),    # 17.6 -> 16 (within 10%)
        (40, 1.1, 0.9, 48),    # 44 -> 48 (nearest multiple rounds up)
        (112, 1.1, 0.9, 120),  # 123.2 -> 120
        (19, 1.0, 0.9, 24),    # 19 -> 16 would lose 16%: the 10% rule bumps it to 24
        (19, 1.0, 0.0, 16),    # V2 code: no 10% rule
        (1280, 1.4, 0.9, 1792),
        (3, 1.0, 0.9, 8),      # never below the divisor
        (16, 0.1, 0.9, 8),     # 1.6 rounds to 0: clamped to min_depth = divisor
    ],
)
def test_round_filters(c, w, limit, expected):
    assert round_filters(c, w, round_limit=limit) == expected


def test_round_filters_min_depth_is_the_official_flag():
    # official: max(min_depth or divisor, int(filters + divisor / 2) // divisor * divisor)
    assert round_filters(16, 0.25, min_depth=16) == 16   # 4 -> 8 -> max(16, 8)
    assert round_filters(64, 0.25, min_depth=16) == 16   # 16 stays 16


def test_round_repeats_is_ceil_by_default_and_round_as_option():
    assert [round_repeats(n, 1.1) for n in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert round_repeats(5, 1.0) == 5
    assert round_repeats(3, 1.2, "round") == 4 and round_repeats(2, 1.2, "round") == 2
    assert round_repeats(1, 0.1, "round") == 1
    with pytest.raises(ValueError, match="mode"):
        round_repeats(1, 1.0, "floor")


def test_published_b1_is_hand_rounded_not_pure_compound():
    b1 = get_spec("efficientnet_b1")
    assert (b1.depth, b1.width, b1.resolution) == (1.1, 1.0, 240)
    pure = compound_scale(EFFICIENTNET_B0, 1)
    assert (pure.depth, pure.width, pure.resolution) == (pytest.approx(1.2), pytest.approx(1.1), 258)


def test_phi_one_coefficients():
    c = compound_coefficients(1, 224)
    assert c.depth == pytest.approx(1.2) and c.width == pytest.approx(1.1) and c.resolution == 258
    assert c.flops_ratio_predicted == pytest.approx(1.2 * 1.1**2 * 1.15**2)


@pytest.mark.parametrize("phi", [1, 2, 3, 4])
def test_compound_scaling_flops_follow_the_constraint(phi):
    base = count_flops(EFFICIENTNET_B0)
    scaled = count_flops(compound_scale(EFFICIENTNET_B0, phi))
    predicted = compound_coefficients(phi, 224).flops_ratio_predicted
    assert scaled / base == pytest.approx(predicted, rel=0.15)


def test_negative_and_fractional_phi_shrink():
    small = compound_scale(EFFICIENTNET_B0, -1.5)
    assert small.resolution < 224 and small.width < 1 and small.depth < 1
    assert count_flops(small) < count_flops(EFFICIENTNET_B0)
    assert compound_scale(EFFICIENTNET_B0, 0.5).resolution == round(224 * 1.15**0.5)


def test_scale_is_pure():
    before = EFFICIENTNET_B0.to_json()
    scale(EFFICIENTNET_B0, width=2.0, depth=3.0, resolution=600)
    assert EFFICIENTNET_B0.to_json() == before


def test_scale_refuses_bad_input():
    for width in (0, -0.25, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            scale(EFFICIENTNET_B0, width=width)
    with pytest.raises(ValueError, match="resolution"):
        scale(EFFICIENTNET_B0, resolution=0)
    with pytest.raises(ValueError, match="resolution"):
        scale(EFFICIENTNET_B0, resolution=-5)
    with pytest.raises(ValueError, match="positive"):
        scale(EFFICIENTNET_B0, depth=0)
    with pytest.raises(ValueError, match="alpha"):
        compound_scale(EFFICIENTNET_B0, 1, alpha=0)


def test_v2_rule_caps_resolution_and_deepens_late_stages_only():
    s = v2_scale(EFFICIENTNETV2_BASE, phi=8)
    assert s.resolution == 480
    base = EFFICIENTNETV2_BASE.stages
    assert [st.repeats for st in s.stages[:4]] == [st.repeats for st in base[:4]]
    assert all(a.repeats > b.repeats for a, b in zip(s.stages[4:], base[4:]))


# --- small widths: clamped as the official round_filters does, and logged --------------------------

def _clamp_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "effnet.scaling.compound"]


def test_width_quarter_clamps_narrow_layers_like_the_official_code(caplog):
    # A regression: width 0.25 used to be refused. Official rule (tensorflow/tpu efficientnet_model.py
    # round_filters, divisor 8, min_depth = divisor, then the 10% rule), by hand for B0:
    #   stem 32 * 0.25 = 8 -> 8;  16 -> 4 -> int(8) // 8 * 8 = 8 (below 8: clamped)
    #   24 -> 6 -> 8 (clamped);   40 -> 10 -> 8, but 8 < 0.9 * 10 so + 8 = 16
    #   80 -> 20 -> 24;  112 -> 28 -> 32;  192 -> 48 -> 48;  320 -> 80 -> 80;  head 1280 -> 320
    with caplog.at_level(logging.INFO, logger="effnet.scaling.compound"):
        small = scale(EFFICIENTNET_B0, width=0.25)
    assert small.stem_channels == 8 and small.head_channels == 320
    assert [s.channels for s in small.stages] == [8, 8, 16, 24, 32, 48, 80]
    (message,) = _clamp_records(caplog)
    assert "stages[0] (16 x 0.25 = 4 -> 8)" in message and "stages[1] (24 x 0.25 = 6 -> 8)" in message
    assert "stem" not in message and "stages[2]" not in message  # 8 and 10 channels are not below 8


def test_negative_phi_compound_scaling_clamps_and_logs(caplog):
    # phi = -8: width 1.1^-8 = 0.46651, depth 1.2^-8 = 0.23257, resolution round(224 * 1.15^-8 = 73.2).
    # Channels by hand (x 0.46651, nearest multiple of 8, floor 8, 10% rule):
    #   stem 32 -> 14.93 -> 16;  16 -> 7.46 -> 8 (below 8: clamped);  24 -> 11.20 -> 8 < 10.08, so 16
    #   40 -> 18.66 -> 16 < 16.79, so 24;  80 -> 37.32 -> 40;  112 -> 52.25 -> 56;  192 -> 89.57 -> 88
    #   320 -> 149.28 -> 152;  head 1280 -> 597.13 -> 600
    # Repeats rounded to nearest, at least 1: 1, 2, 2, 3, 3, 4, 1 x 0.23257 are all below 1.5 -> 1.
    with caplog.at_level(logging.INFO, logger="effnet.scaling.compound"):
        small = compound_scale(EFFICIENTNET_B0, -8)
    assert small.resolution == 73
    assert (small.stem_channels, small.head_channels) == (16, 600)
    assert [s.channels for s in small.stages] == [8, 16, 24, 40, 56, 88, 152]
    assert [s.repeats for s in small.stages] == [1] * 7
    (message,) = _clamp_records(caplog)
    assert "stages[0] (16 x 0.466507 = 7.464 -> 8)" in message and "stages[1]" not in message


def test_widths_at_or_above_the_minimum_log_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="effnet.scaling.compound"):
        scale(EFFICIENTNET_B0, width=0.5)  # narrowest: 16 * 0.5 = 8, not below 8
    assert _clamp_records(caplog) == []


# --- sizes that make sense (`effnet scale --phi 60` once ran for more than 5 minutes) -----------

def test_size_limits_read_the_spec_without_building():
    huge = compound_scale(EFFICIENTNET_B0, 60)  # a spec is numbers: making it is instant
    problems = size_problems(huge)
    assert len(problems) == 3 and "blocks" in problems[0] and "channels" in problems[1] and "px" in problems[2]
    assert size_problems(get_spec("efficientnet_l2")) == size_problems(get_spec("efficientnetv2_xl")) == []
    assert "minimum 32" in size_problems(EFFICIENTNET_B0.replace(resolution=16))[0]
    assert size_problems(EFFICIENTNET_B0, SizeLimits(max_blocks=15))  # B0 has 16 blocks


def test_compound_phi_range_for_b0():
    # By hand: the input stays >= 32 px while 224 * 1.15^phi >= 31.5 (rounding), i.e.
    # phi >= ln(31.5 / 224) / ln(1.15) = -14.036; B0's 16 blocks stay <= 1000 while
    # 16 * 1.2^phi <~ 1000, i.e. phi <~ ln(62.5) / ln(1.2) = 22.68 (the other limits allow more:
    # 8192 px up to phi 25.7, 65536 channels up to phi 41).
    low, high = compound_phi_range(EFFICIENTNET_B0)
    assert low == pytest.approx(-14.03, abs=0.011) and high == pytest.approx(22.68, abs=0.03)
    assert compound_coefficients(low, 224).resolution >= 32 > compound_coefficients(low - 0.01, 224).resolution
    assert not size_problems(compound_scale(EFFICIENTNET_B0, high))
    assert "blocks" in size_problems(compound_scale(EFFICIENTNET_B0, high + 0.02))[0]


# --- a spec without a head conv (head_channels 0: the ResNet / MobileNetV1 baselines) -------------

def test_width_scaling_keeps_a_missing_head_missing(caplog):
    try:
        headless = EFFICIENTNET_B0.replace(name="headless", head_channels=0)
    except ValueError:
        pytest.skip("ModelSpec does not accept head_channels=0 yet (the baselines change adds it)")
    # 0 channels is no layer: neither scaled (0 x 2 = 0) nor raised to the 8-channel floor, and
    # not reported as clamped; the other layers scale as usual (stem 32 x 0.25 = 8).
    with caplog.at_level(logging.INFO, logger="effnet.scaling.compound"):
        for width in (0.25, 1.0, 2.0):
            assert scale(headless, width=width).head_channels == 0
    assert scale(headless, width=0.25).stem_channels == 8
    assert all("head (" not in m for m in _clamp_records(caplog))  # a layer is logged as "name (c x w ..."
    assert compound_scale(headless, 2).head_channels == 0

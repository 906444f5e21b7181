import pytest

from effnet.profile import count_flops
from effnet.registry import get_spec
from effnet.scaling import (
    compound_coefficients,
    compound_scale,
    round_filters,
    round_repeats,
    scale,
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
    ],
)
def test_round_filters(c, w, limit, expected):
    assert round_filters(c, w, round_limit=limit) == expected


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
    with pytest.raises(ValueError, match="too small"):
        scale(EFFICIENTNET_B0, width=0.3)
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
